"""Walk a raw DICOM folder and write the de-identified processed dataset.

Output, under `out`:
- `slices/<image_id>.npy`: one int16 HU array per accepted slice (frame).
- `manifest.csv`: one row per slice, `MANIFEST_COLUMNS`, sorted by patient then image.
- `rejects.csv`: `source, reason, detail` for every file not used, `source` being the path
  under the root with every name below the class folder replaced by its keyed pseudonym.

No patient name, PatientID, date of birth, institution, accession number, UID, folder or
file name is written; the real paths of rejected files are only returned, for the console.
The raw layout and the labels CSV are read by `raw_tree`, each file is taken in or rejected
by `ingest_run.IngestRun`, and `output_folder` puts the finished output in place.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from components.artifacts import MANIFEST_FILE, REJECTS_FILE
from components.data.dicom import MAX_FRAME_PIXELS, MAX_IMAGE_BYTES
from components.data.dicom_attributes import FRAME_COLUMNS
from components.data.dicom_warnings import quiet_dicom_library
from components.data.ingest_run import IngestRun
from components.data.output_folder import (
    MARKER,
    MARKER_TEXT,
    check_apart,
    check_replaceable,
    remove_own_output,
    remove_stale_partials,
    swap_in,
    write_csv,
)
from components.data.raw_tree import list_files, read_labels_csv
from components.data.rejects import Reject

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient",
    "label",
    "series",
    "file",
    *FRAME_COLUMNS,
)
REJECT_COLUMNS: tuple[str, ...] = ("source", "reason", "detail")


class NoUsableDataError(ValueError):
    """Ingest found no CT slice it could use."""


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


def ingest(
    dicom_root: Path,
    out: Path,
    classes: Sequence[str],
    key: bytes,
    labels_csv: Path | None = None,
    progress: bool = True,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
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
        max_image_bytes: a file whose frames decode to more bytes in all is rejected unread
            (`image_too_large`); params ingest.max_image_bytes.

    Returns:
        The summary, including every rejected file's real path for the console.

    Raises:
        FileNotFoundError: `dicom_root` or `labels_csv` does not exist.
        ValueError: empty classes or key, or a malformed labels CSV.
        OutputFolderError: `out` holds files without the marker of an earlier ingest.
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

    check_apart(root, out)
    quiet_dicom_library()
    check_replaceable(out)
    files = list_files(root, exclude=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    new = out.parent / f".{out.name}.partial-{os.getpid()}"
    (new / "slices").mkdir(parents=True)
    (new / MARKER).write_text(MARKER_TEXT)
    try:
        run = IngestRun(
            root=root,
            classes=classes,
            key=key,
            labels=labels,
            staging=new / "slices",
            max_frame_pixels=max_frame_pixels,
            max_image_bytes=max_image_bytes,
        )
        for path in tqdm(files, desc="ingest", unit="file", disable=not progress):
            run.add(path)
        run.reject_conflicting_labels()
        return _finish(run, out, new, n_files=len(files), labels_csv=labels_csv)
    finally:
        if new.exists():
            remove_own_output(new)


def _finish(
    run: IngestRun, out: Path, new: Path, n_files: int, labels_csv: Path | None
) -> IngestSummary:
    """Write the CSVs into the new output `new`, then swap it in place of `out`."""
    manifest_path = out / MANIFEST_FILE
    rejects_path = out / REJECTS_FILE

    rejects = [r for _, r in sorted(run.rejects, key=lambda pair: (pair[0], str(pair[1].reason)))]
    write_csv(
        new / rejects_path.name,
        REJECT_COLUMNS,
        ({"source": r.source, "reason": str(r.reason), "detail": r.detail} for r in rejects),
    )

    rows = [row for item in run.accepted for row in item.rows]
    if not rows:
        # Leave no manifest or slices of an earlier run that would contradict rejects.csv.
        (new / "slices").rmdir()
        swap_in(new, out)
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
    write_csv(new / manifest_path.name, MANIFEST_COLUMNS, rows)
    swap_in(new, out)

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
    )
