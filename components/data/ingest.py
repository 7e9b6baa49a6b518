"""Walk a raw DICOM folder and write the de-identified processed dataset.

Output, under `out`:
- `slices/<image_id>.npy`: one int16 HU array per accepted slice (frame).
- `manifest.csv`: one row per slice, `MANIFEST_COLUMNS`, sorted by patient then image.
- `rejects.csv`: `source, reason, detail` for every file not used, `source` being the path
  under the root with every name below the class folder replaced by its keyed pseudonym.

No patient name, PatientID, date of birth, institution, accession number, UID, folder or
file name is written; the real paths of rejected files are only returned, for the console.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from components.artifacts import MANIFEST_FILE, REJECTS_FILE, SLICES_DIR
from components.data.deid import pseudonym
from components.data.dicom import (
    FRAME_COLUMNS,
    MAX_FRAME_PIXELS,
    REDACTED,
    CtFile,
    CtSlice,
    DicomRejected,
    RejectReason,
    open_ct,
)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient",
    "label",
    "series",
    "file",
    *FRAME_COLUMNS,
)
REJECT_COLUMNS: tuple[str, ...] = ("source", "reason", "detail")

PATIENT_PREFIX = "pt"
IMAGE_PREFIX = "im"
SERIES_PREFIX = "se"
PATH_PREFIX = "f"
IMAGE_ID_LENGTH = 16  # 64 bits: no collision in any realistic number of slices


class NoUsableDataError(ValueError):
    """Ingest found no CT slice it could use."""


@dataclass(frozen=True)
class Reject:
    """A file not used. `path` is the real path: show it on the console, never write it."""

    source: str
    reason: RejectReason
    detail: str
    path: Path = field(repr=False)


@dataclass(frozen=True)
class IngestSummary:
    """What ingest wrote and what it left out.

    Attributes:
        out: the output folder.
        manifest_path: `out/manifest.csv`.
        rejects_path: `out/rejects.csv`.
        n_files: files found under the root.
        n_slices: slices written (rows of the manifest).
        n_patients: distinct patients in the manifest.
        slices_per_label: slices per class, every class listed.
        patients_per_label: patients per class, every class listed.
        rejects: every file not used, in path order; `path` is the real path.
        warnings: things worth a look that didn't stop any file (no PHI in them).
        redacted: retained tag values replaced by `redacted` (dicom.safe_text).
    """

    out: Path
    manifest_path: Path
    rejects_path: Path
    n_files: int
    n_slices: int
    n_patients: int
    slices_per_label: dict[str, int]
    patients_per_label: dict[str, int]
    rejects: tuple[Reject, ...]
    warnings: tuple[str, ...]
    redacted: int = 0

    @property
    def rejected_paths(self) -> list[tuple[Path, str]]:
        """(real path, why) of each rejected file, for the console; never written to disk.

        `why` is `<reason>: <detail> (rejects.csv source <source>)`, so the operator can
        match the console line with the row of rejects.csv.
        """
        return [
            (r.path, f"{r.reason}: {r.detail} (rejects.csv source {r.source})")
            for r in self.rejects
        ]

    @property
    def n_rejects(self) -> int:
        """Number of rejected files."""
        return len(self.rejects)

    @property
    def reject_counts(self) -> dict[str, int]:
        """Number of rejected files per reason code."""
        return dict(sorted(Counter(str(r.reason) for r in self.rejects).items()))


@dataclass(frozen=True)
class _Owner:
    """Whose file it is: the patient pseudonym, the label, and in the folder layout the
    patient folder (`<label>/<folder pseudonym>`)."""

    patient: str
    label: str
    folder: str | None = None


@dataclass
class _Accepted:
    rel: str
    path: Path
    source: str
    patient: str
    label: str
    rows: list[dict[str, Any]]


def ingest(
    dicom_root: Path,
    out: Path,
    classes: Sequence[str],
    key: bytes,
    labels_csv: Path | None = None,
    progress: bool = True,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
) -> IngestSummary:
    """Read every file under `dicom_root` and write the HU slices, manifest and rejects.

    Without `labels_csv` the layout is `<root>/<CLASS>/<patient>/**/*` and the class folder
    gives the label. With it, files may sit anywhere under the root and the label comes from
    the CSV (`patient_id,label`) row of the file's DICOM PatientID. The patient pseudonym is
    the keyed hash of the PatientID, or of the patient folder name when PatientID is empty.
    A rerun with the same files and key writes the same bytes; stale slices are removed.
    Files are read one frame at a time, each frame written as it is decoded, so memory holds
    about one frame whatever the size of a multi-frame file.

    Args:
        dicom_root: folder holding the DICOM files.
        out: output folder (created).
        classes: the class names, e.g. ("MM", "OMBT").
        key: the pseudonymisation key (`components.data.deid.load_key`).
        labels_csv: optional CSV of `patient_id,label`.
        progress: show a progress bar over files.
        max_frame_pixels: a file whose frames have more Rows x Columns is rejected unread
            (`frame_too_large`); params ingest.max_frame_pixels.

    Returns:
        The summary, including every rejected file's real path for the console.

    Raises:
        FileNotFoundError: `dicom_root` or `labels_csv` does not exist.
        ValueError: empty classes or key, or a malformed labels CSV.
        NoUsableDataError: no usable CT slice was found (rejects.csv is still written).
    """
    root = Path(dicom_root)
    out = Path(out)
    classes = tuple(classes)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: DICOM root is not a folder; check --dicom-root")
    if not classes:
        raise ValueError("ingest needs at least one class name")
    if not key:
        raise ValueError("ingest needs a non-empty de-identification key; see load_key()")
    labels = read_labels_csv(Path(labels_csv)) if labels_csv is not None else None

    _check_apart(root, out)
    files = list_files(root, exclude=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    new = out.parent / f".{out.name}.partial-{os.getpid()}"
    (new / "slices").mkdir(parents=True)
    (new / MARKER).write_text(MARKER_TEXT)
    try:
        run = _Run(
            root=root,
            classes=classes,
            key=key,
            labels=labels,
            staging=new / "slices",
            max_frame_pixels=max_frame_pixels,
        )
        for path in tqdm(files, desc="ingest", unit="file", disable=not progress):
            run.add(path)
        run.reject_conflicting_labels()
        return _finish(run, out, new, n_files=len(files), labels_csv=labels_csv)
    finally:
        if new.exists():
            _remove_own_output(new)


# Written into every output folder of ingest: what a later run may replace.
MARKER = ".myelomet-ingest"
MARKER_TEXT = "written by `myelomet ingest`; a later ingest into this folder replaces it\n"
# What an output folder of ingest holds (older versions wrote no marker).
_OWN_ENTRIES = frozenset(
    {MANIFEST_FILE, REJECTS_FILE, SLICES_DIR, f".{SLICES_DIR}.partial", MARKER}
)


class OutputFolderError(ValueError):
    """The output folder cannot be written without risking data that ingest did not make."""


def _check_apart(root: Path, out: Path) -> None:
    real_root, real_out = root.resolve(), out.resolve()
    if real_out == real_root or real_out.is_relative_to(real_root):
        raise OutputFolderError(
            f"{out}: the output folder lies inside the DICOM root {root}; ingest would read "
            "its own outputs and replace folders there; choose an output folder outside it"
        )
    if real_root.is_relative_to(real_out):
        raise OutputFolderError(
            f"{out}: the output folder holds the DICOM root {root}; replacing it would delete "
            "the DICOM files; choose an output folder outside the DICOM root"
        )


def _is_own_output(folder: Path) -> bool:
    """True when every entry of `folder` is one ingest writes (or it has none)."""
    return {p.name for p in folder.iterdir()} <= _OWN_ENTRIES


def _remove_own_output(folder: Path) -> None:
    """Delete what ingest wrote in `folder` (its CSVs, marker and `.npy` slices) and the
    folder when nothing else is left; anything else in it stays where it is."""
    for name in ("slices", ".slices.partial"):
        sub = folder / name
        if sub.is_dir() and not sub.is_symlink():
            for item in sub.iterdir():
                if item.suffix == ".npy" and item.is_file() and not item.is_symlink():
                    item.unlink()
            with contextlib.suppress(OSError):
                sub.rmdir()
    for name in (MANIFEST_FILE, REJECTS_FILE, MARKER):
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _remove_stale_partials(out: Path) -> None:
    """Partial outputs of killed runs into `out` (they hold the marker; a run still alive,
    writing at the same time, keeps its own)."""
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file():
            _remove_own_output(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_in(new: Path, out: Path) -> None:
    """Put the finished output `new` in place of `out`: the old one is moved aside, then
    its own files are deleted. A folder ingest did not write is never replaced."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputFolderError(f"{out}: not a folder; choose an output folder")
    if not out.exists():
        new.rename(out)
        return
    if not _is_own_output(out):
        raise OutputFolderError(
            f"{out}: the folder holds files that `myelomet ingest` did not write (e.g. "
            f"{sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES)[:3]}); "
            "nothing was changed; choose an empty or new output folder"
        )
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    new.rename(out)
    _remove_own_output(old)


def list_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every file under `root`, any depth, sorted by relative path; `exclude` is skipped.

    Args:
        root: folder to walk (symlinked folders are not followed).
        exclude: a folder to leave out, e.g. the output folder when it sits under the root.

    Returns:
        The file paths.
    """
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None:
            dirnames[:] = [d for d in dirnames if (here / d).resolve() != skip]
        # a link that leads nowhere (dangling, or to itself) is listed: it gets rejected
        found.extend(
            here / name
            for name in filenames
            if (here / name).is_file() or (here / name).is_symlink()
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_labels_csv(path: Path) -> dict[str, str]:
    """Read a `patient_id,label` CSV into {PatientID: label}.

    IDs are kept as text (leading zeros and values like `NA` survive); surrounding spaces
    are stripped; blank lines are skipped.

    Args:
        path: the CSV file.

    Returns:
        The label of each PatientID.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a column is missing, or a PatientID has two different labels.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: labels CSV not found; check --labels-csv / data.labels_csv"
        )
    labels: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "patient_id" not in fields or "label" not in fields:
            raise ValueError(
                f"{path}: labels CSV needs the header `patient_id,label`, found {fields}"
            )
        reader.fieldnames = fields
        for row in reader:
            patient_id = (row.get("patient_id") or "").strip()
            label = (row.get("label") or "").strip()
            if not patient_id and not label:
                continue
            line = reader.line_num
            if not patient_id:
                raise ValueError(f"{path}: line {line} has a label but no patient_id")
            if patient_id in labels and labels[patient_id] != label:
                # Line numbers, not the ID: the ID may be an MRN.
                raise ValueError(
                    f"{path}: lines {first_line[patient_id]} and {line} give the same "
                    f"patient_id two labels ({labels[patient_id]!r}, {label!r}); keep one"
                )
            labels[patient_id] = label
            first_line.setdefault(patient_id, line)
    return labels


class _Run:
    """State of one ingest run: accepted files, rejects, and what is needed to check them."""

    def __init__(
        self,
        root: Path,
        classes: tuple[str, ...],
        key: bytes,
        labels: Mapping[str, str] | None,
        staging: Path,
        max_frame_pixels: int,
    ) -> None:
        self.root = root
        self.classes = classes
        self.key = key
        self.labels = labels
        self.staging = staging
        self.max_frame_pixels = max_frame_pixels
        self.accepted: list[_Accepted] = []
        self.rejects: list[tuple[str, Reject]] = []
        self.first_source: dict[str, str] = {}  # image_id -> source of the file that has it
        self.patient_labels: dict[str, set[str]] = defaultdict(set)
        self.patient_folders: dict[str, set[str]] = defaultdict(set)
        self.folder_patients: dict[str, set[str]] = defaultdict(set)

    def pseudo(self, value: str, prefix: str, length: int = 12) -> str:
        return pseudonym(self.key, value, prefix, length)

    def source(self, rel_parts: tuple[str, ...]) -> str:
        """The relative path with every name below the class folder pseudonymised."""
        keep_first = self.labels is None and len(rel_parts) > 1 and rel_parts[0] in self.classes
        parts = [
            part if (i == 0 and keep_first) else self.pseudo(part, PATH_PREFIX)
            for i, part in enumerate(rel_parts)
        ]
        return "/".join(parts)

    def image_id(self, identity: str, frame: int) -> str:
        """The pseudonym of a frame of a file; `identity` is its SOP Instance UID, else its path."""
        return self.pseudo(f"{identity}#{frame}", IMAGE_PREFIX, IMAGE_ID_LENGTH)

    def reject(self, rel: str, source: str, path: Path, reason: RejectReason, detail: str) -> None:
        self.rejects.append((rel, Reject(source, reason, detail, path)))

    def add(self, path: Path) -> None:
        rel_path = path.relative_to(self.root)
        rel, parts = rel_path.as_posix(), rel_path.parts
        source = self.source(parts)

        if self.labels is None:
            problem = self._layout_problem(parts)
            if problem is not None:
                self.reject(rel, source, path, *problem)
                return

        try:
            ct = _open(path, self.max_frame_pixels)
            owner = self._owner(ct, parts)
            identity = ct.sop_instance_uid or rel
            duplicate_of = self.first_source.get(self.image_id(identity, 0))
            rows = [] if duplicate_of is not None else self._write_slices(ct, identity, owner)
        except DicomRejected as exc:
            self.reject(rel, source, path, exc.reason, exc.detail)
            return

        self._register(owner)
        if duplicate_of is not None:
            self.reject(
                rel,
                source,
                path,
                RejectReason.DUPLICATE,
                f"same SOP Instance UID as {duplicate_of}, which was ingested; remove the copy",
            )
            return
        for row in rows:
            self.first_source[row["image_id"]] = source
        self.accepted.append(_Accepted(rel, path, source, owner.patient, owner.label, rows))

    def _owner(self, ct: CtFile, parts: tuple[str, ...]) -> _Owner:
        """Whose file it is and its label: from the folder layout, or from the labels CSV.

        Raises:
            DicomRejected: the labels CSV gives the file no label of a class.
        """
        if self.labels is None:
            label, folder = parts[0], parts[1]
            return _Owner(
                patient=self.pseudo(ct.patient_id or folder, PATIENT_PREFIX),
                label=label,
                folder=f"{label}/{self.pseudo(folder, PATH_PREFIX)}",
            )
        if not ct.patient_id:
            raise DicomRejected(
                RejectReason.NO_LABEL,
                "the file has no PatientID, and the labels CSV is keyed by PatientID; use "
                "the folder layout <root>/<CLASS>/<patient>/ for such files",
            )
        if ct.patient_id not in self.labels:
            raise DicomRejected(
                RejectReason.NO_LABEL,
                "its PatientID is not in the labels CSV; add a `patient_id,label` row for "
                "this patient or remove the file",
            )
        label = self.labels[ct.patient_id]
        if label not in self.classes:
            raise DicomRejected(
                RejectReason.UNKNOWN_LABEL,
                f"the labels CSV gives its patient the label {label!r}, not one of "
                f"{', '.join(self.classes)}; fix the CSV or the classes in params.yaml",
            )
        return _Owner(patient=self.pseudo(ct.patient_id, PATIENT_PREFIX), label=label)

    def _register(self, owner: _Owner) -> None:
        """Note the patient's label and folder, for the label conflicts and the warnings."""
        self.patient_labels[owner.patient].add(owner.label)
        if owner.folder is not None:
            self.patient_folders[owner.patient].add(owner.folder)
            self.folder_patients[owner.folder].add(owner.patient)

    def _write_slices(self, ct: CtFile, identity: str, owner: _Owner) -> list[dict[str, Any]]:
        """Write each frame of `ct` to staging as it is decoded; return the manifest rows.

        Raises:
            DicomRejected: a frame can't be used; the slices of the file already written are
                removed.
        """
        series = (
            self.pseudo(ct.series_instance_uid, SERIES_PREFIX) if ct.series_instance_uid else ""
        )
        rows: list[dict[str, Any]] = []
        try:
            for frame, piece in enumerate(_slices(ct)):
                image_id = self.image_id(identity, frame)
                np.save(self.staging / f"{image_id}.npy", piece.hu)
                rows.append(
                    {
                        "image_id": image_id,
                        "patient": owner.patient,
                        "label": owner.label,
                        "series": series,
                        "file": f"slices/{image_id}.npy",
                        **piece.attributes,
                    }
                )
        except DicomRejected:
            self._unstage(rows)
            raise
        return rows

    def _unstage(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Remove the staged slices of these manifest rows."""
        for row in rows:
            (self.staging / f"{row['image_id']}.npy").unlink(missing_ok=True)

    def _layout_problem(self, parts: tuple[str, ...]) -> tuple[RejectReason, str] | None:
        classes = ", ".join(self.classes)
        if len(parts) == 1:
            return (
                RejectReason.NO_LABEL,
                f"the file sits in the DICOM root, outside the class folders ({classes}); "
                "move it to <root>/<CLASS>/<patient>/",
            )
        if parts[0] not in self.classes:
            near = [c for c in self.classes if c.lower() == parts[0].lower()]
            if near:
                return (
                    RejectReason.UNKNOWN_LABEL,
                    f"its top-level folder differs from class {near[0]} only in letter case; "
                    f"rename the folder to {near[0]}",
                )
            return (
                RejectReason.UNKNOWN_LABEL,
                f"its top-level folder is not a class folder ({classes}); move the patient "
                "folder under one of them, or add the class to params.yaml",
            )
        if len(parts) == 2:
            return (
                RejectReason.NO_LABEL,
                f"the file sits directly in class folder {parts[0]}, not in a patient folder; "
                f"move it to <root>/{parts[0]}/<patient>/",
            )
        return None

    def reject_conflicting_labels(self) -> None:
        """Reject every file of a patient found under more than one class."""
        conflicted = {p: labels for p, labels in self.patient_labels.items() if len(labels) > 1}
        if not conflicted:
            return
        kept = []
        for item in self.accepted:
            labels = conflicted.get(item.patient)
            if labels is None:
                kept.append(item)
                continue
            self._unstage(item.rows)
            self.reject(
                item.rel,
                item.source,
                item.path,
                RejectReason.CONFLICTING_LABEL,
                f"patient {item.patient} has files under {' and '.join(sorted(labels))}; one "
                "patient needs one label, move its files into one class folder",
            )
        self.accepted = kept

    def warnings(self) -> list[str]:
        notes = []
        conflicted = {p for p, labels in self.patient_labels.items() if len(labels) > 1}
        for patient, folders in sorted(self.patient_folders.items()):
            if len(folders) > 1 and patient not in conflicted:
                notes.append(
                    f"patient {patient} (one DICOM PatientID) is in {len(folders)} patient "
                    f"folders ({_few(folders)}); fine for one person's studies, wrong if an "
                    "anonymiser gave different patients the same PatientID"
                )
        for folder, patients in sorted(self.folder_patients.items()):
            if len(patients) > 1:
                notes.append(
                    f"patient folder {folder} holds {len(patients)} different PatientIDs "
                    f"({_few(patients)}); each is treated as its own patient"
                )
        return notes


def _unexpected(exc: Exception) -> DicomRejected:
    """A failure no reject reason foresees, as the rejection of the file being read."""
    return DicomRejected(
        RejectReason.UNREADABLE,
        f"unexpected {type(exc).__name__} while reading it; check the file opens in a DICOM "
        "viewer, and report it if it does",
    )


def _open(path: Path, max_frame_pixels: int) -> CtFile:
    """`open_ct`, raising only DicomRejected: one bad file must never stop the run."""
    try:
        return open_ct(path, max_frame_pixels)
    except DicomRejected:
        raise
    except Exception as exc:
        raise _unexpected(exc) from None


def _slices(ct: CtFile) -> Iterator[CtSlice]:
    """`ct.slices()`, raising only DicomRejected: one bad file must never stop the run."""
    frames = ct.slices()
    while True:
        try:
            piece = next(frames)
        except StopIteration:
            return
        except DicomRejected:
            raise
        except Exception as exc:
            raise _unexpected(exc) from None
        yield piece


def _few(values: Iterable[str], limit: int = 5) -> str:
    items = sorted(values)
    shown = ", ".join(items[:limit])
    return shown + (f", and {len(items) - limit} more" if len(items) > limit else "")


def _finish(
    run: _Run, out: Path, new: Path, n_files: int, labels_csv: Path | None
) -> IngestSummary:
    """Write the CSVs into the new output `new`, then swap it in place of `out`."""
    manifest_path = out / MANIFEST_FILE
    rejects_path = out / REJECTS_FILE

    rejects = [r for _, r in sorted(run.rejects, key=lambda pair: (pair[0], str(pair[1].reason)))]
    _write_csv(
        new / rejects_path.name,
        REJECT_COLUMNS,
        ({"source": r.source, "reason": str(r.reason), "detail": r.detail} for r in rejects),
    )

    rows = [row for item in run.accepted for row in item.rows]
    if not rows:
        # Leave no manifest or slices of an earlier run that would contradict rejects.csv.
        (new / "slices").rmdir()
        _swap_in(new, out)
        counts = Counter(str(r.reason) for r in rejects)
        found = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"
        if labels_csv is None:
            looked_for = (
                f"greyscale CT DICOM files in {run.root}/<CLASS>/<patient>/ with CLASS one of "
                f"{', '.join(run.classes)}"
            )
        else:
            looked_for = (
                f"greyscale CT DICOM files under {run.root} whose PatientID is in {labels_csv}"
            )
        raise NoUsableDataError(
            f"no usable CT slices: looked for {looked_for}; found {n_files} files, rejected "
            f"{len(rejects)} ({found}); see {rejects_path} for the reason of each file"
        )

    rows.sort(key=lambda row: (row["patient"], row["image_id"]))
    _write_csv(new / manifest_path.name, MANIFEST_COLUMNS, rows)
    _swap_in(new, out)

    slices_per_label = dict.fromkeys(run.classes, 0)
    patients: dict[str, set[str]] = {c: set() for c in run.classes}
    for row in rows:
        slices_per_label[row["label"]] += 1
        patients[row["label"]].add(row["patient"])
    notes = run.warnings()
    notes.extend(
        f"class {label} has no slices; a classifier needs both classes"
        for label, n in slices_per_label.items()
        if n == 0
    )
    return IngestSummary(
        out=out,
        manifest_path=manifest_path,
        rejects_path=rejects_path,
        n_files=n_files,
        n_slices=len(rows),
        n_patients=len({row["patient"] for row in rows}),
        slices_per_label=slices_per_label,
        patients_per_label={label: len(p) for label, p in patients.items()},
        rejects=tuple(rejects),
        warnings=tuple(notes),
        redacted=sum(value == REDACTED for row in rows for value in row.values()),
    )


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a CSV atomically (a half-written manifest must never look complete)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    os.replace(partial, path)
