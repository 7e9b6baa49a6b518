"""One ingest run: each file under the root labelled, pseudonymised and staged, or rejected.

`IngestRun.add` reads a file one frame at a time, writes each slice into the staging folder
as it is decoded and keeps its manifest rows, or records why the file was not used; it
notes each patient's labels and folders, so that a patient under two classes is rejected
and one PatientID in two folders is reported. One bad file never stops the run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data.deid import pseudonym
from components.data.dicom import CtFile, CtSlice, open_ct
from components.data.dicom_source import require_regular_file
from components.data.pulled import GivenNames, given_names
from components.data.raw_tree import LabelsCsv, layout_problem
from components.data.rejects import DicomRejected, Reject, RejectReason

PATIENT_PREFIX = "pt"
IMAGE_PREFIX = "im"
SERIES_PREFIX = "se"
PATH_PREFIX = "f"
IMAGE_ID_LENGTH = 16  # 64 bits: no collision in any realistic number of slices


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


class IngestRun:
    """State of one ingest run: accepted files, rejects, and what is needed to check them."""

    def __init__(
        self,
        root: Path,
        classes: tuple[str, ...],
        key: bytes,
        labels: LabelsCsv | None,
        staging: Path,
        max_frame_pixels: int,
        max_image_bytes: int,
    ) -> None:
        self.root = root
        self.classes = classes
        self.key = key
        self.labels = labels
        self.staging = staging
        self.max_frame_pixels = max_frame_pixels
        self.max_image_bytes = max_image_bytes
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

    def image_id(self, identity: str, frame: int, given: GivenNames | None = None) -> str:
        """The pseudonym of a frame of a file; `identity` is its SOP Instance UID, else its path.
        A file `myelomet pull` wrote has its own (`given`), made from the original UID."""
        if given is not None and frame < len(given.images):
            return given.images[frame]
        return self.pseudo(f"{identity}#{frame}", IMAGE_PREFIX, IMAGE_ID_LENGTH)

    def reject(self, rel: str, source: str, path: Path, reason: RejectReason, detail: str) -> None:
        self.rejects.append((rel, Reject(source, reason, detail, path)))

    def add(self, path: Path) -> None:
        rel_path = path.relative_to(self.root)
        rel, parts = rel_path.as_posix(), rel_path.parts
        source = self.source(parts)

        try:
            require_regular_file(path)
        except DicomRejected as exc:
            self.reject(rel, source, path, exc.reason, exc.detail)
            return
        if self.labels is None:
            problem = layout_problem(parts, self.classes)
            if problem is not None:
                self.reject(rel, source, path, *problem)
                return

        try:
            ct = _open(path, self.max_frame_pixels, self.max_image_bytes)
            given = given_names(ct.header, self.key)
            owner = self._owner(ct, parts, given)
            identity = ct.sop_instance_uid or rel
            duplicate_of = self.first_source.get(self.image_id(identity, 0, given))
            rows = (
                [] if duplicate_of is not None else self._write_slices(ct, identity, owner, given)
            )
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

    def _owner(self, ct: CtFile, parts: tuple[str, ...], given: GivenNames | None) -> _Owner:
        """Whose file it is and its label: from the folder layout, or from the labels CSV.
        A pulled file's patient pseudonym is given.

        Raises:
            DicomRejected: the labels CSV gives the file no label of a class.
        """
        if self.labels is None:
            label, folder = parts[0], parts[1]
            return _Owner(
                patient=given.patient
                if given is not None
                else self.pseudo(ct.patient_id or folder, PATIENT_PREFIX),
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
                f"line {self.labels.line(ct.patient_id)} of the labels CSV gives its patient a "
                f"label that is not one of {', '.join(self.classes)} (the cell is not shown: "
                "a shifted column may hold an identifier); fix the CSV or the classes in "
                "params.yaml",
            )
        return _Owner(patient=self.pseudo(ct.patient_id, PATIENT_PREFIX), label=label)

    def _register(self, owner: _Owner) -> None:
        """Note the patient's label and folder, for the label conflicts and the warnings."""
        self.patient_labels[owner.patient].add(owner.label)
        if owner.folder is not None:
            self.patient_folders[owner.patient].add(owner.folder)
            self.folder_patients[owner.folder].add(owner.patient)

    def _write_slices(
        self, ct: CtFile, identity: str, owner: _Owner, given: GivenNames | None
    ) -> list[dict[str, Any]]:
        """Write each frame of `ct` to staging as it is decoded; return the manifest rows.

        Raises:
            DicomRejected: a frame can't be used; the slices of the file already written are
                removed.
        """
        series = (
            given.series
            if given is not None
            else self.pseudo(ct.series_instance_uid, SERIES_PREFIX)
            if ct.series_instance_uid
            else ""
        )
        rows: list[dict[str, Any]] = []
        try:
            for frame, piece in enumerate(_slices(ct, self.key)):
                image_id = self.image_id(identity, frame, given)
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


def _open(path: Path, max_frame_pixels: int, max_image_bytes: int) -> CtFile:
    """`open_ct`, raising only DicomRejected: one bad file must never stop the run."""
    try:
        return open_ct(path, max_frame_pixels, max_image_bytes)
    except DicomRejected:
        raise
    except Exception as exc:
        raise _unexpected(exc) from None


def _slices(ct: CtFile, key: bytes) -> Iterator[CtSlice]:
    """`ct.slices(key)`, raising only DicomRejected: one bad file must never stop the run."""
    frames = ct.slices(key)
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
