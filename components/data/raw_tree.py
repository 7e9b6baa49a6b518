"""The raw DICOM tree: its files, and where each one's label comes from.

The folder layout is `<root>/<CLASS>/<patient>/**/*`: `layout_problem` says why a file sits
where no label can be read from its path. Without that layout, labels come from a CSV of
`patient_id,label` keyed by DICOM PatientID, read by `read_labels_csv`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from components.data.rejects import RejectReason


def list_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every entry under `root` that is not a folder to walk, any depth, sorted by relative
    path; `exclude` is skipped.

    Symlinked folders are followed, each real folder walked once: a link to a folder already
    walked (a loop, or a second link to it) and a folder that can't be listed are listed
    themselves, like pipes, devices and links that lead nowhere, so that each gets a reject
    row rather than vanishing. Nothing here opens a file.

    Args:
        root: folder to walk.
        exclude: a folder to leave out, e.g. the output folder when it sits under the root.

    Returns:
        The paths.
    """
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    walked = {_identity(root)}
    pending = [Path(root)]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            if folder != Path(root):
                found.append(folder)
            continue
        for entry in entries:
            path = Path(entry.path)
            if not _is_folder(entry):
                found.append(path)
                continue
            if skip is not None and path.resolve() == skip:
                continue
            try:
                identity = _identity(path)
            except OSError:  # gone since it was listed
                found.append(path)
                continue
            if identity in walked:
                found.append(path)
                continue
            walked.add(identity)
            pending.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """A folder, or a link to one."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino


class LabelsCsv(Mapping[str, str]):
    """The labels CSV: the label of each PatientID, and the line that gives it.

    Its cells are never shown in a message (a shifted column puts an MRN or a name where
    the label should be): messages name the line and what is wrong with it.
    """

    def __init__(self, path: Path, labels: dict[str, str], lines: dict[str, int]) -> None:
        self.path = path
        self._labels = labels
        self._lines = lines

    def __getitem__(self, patient_id: str) -> str:
        return self._labels[patient_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def line(self, patient_id: str) -> int:
        """The line of the CSV that gives this PatientID its label."""
        return self._lines[patient_id]


def read_labels_csv(path: Path) -> LabelsCsv:
    """Read a `patient_id,label` CSV: the label of each PatientID.

    IDs are kept as text (leading zeros and values like `NA` survive); surrounding spaces
    are stripped; blank lines are skipped. No cell is quoted in an error: it may be an
    identifier.

    Args:
        path: the CSV file.

    Returns:
        The label of each PatientID, with the line that gives it.

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
            # the first line may be a patient's row: its cells are not shown
            raise ValueError(
                f"{path}: labels CSV needs the header `patient_id,label` on line 1, which "
                f"has {len(fields)} column(s) and lacks "
                f"{' and '.join(c for c in ('patient_id', 'label') if c not in fields)}; "
                "add the header line"
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
                raise ValueError(
                    f"{path}: lines {first_line[patient_id]} and {line} give the same "
                    "patient_id two different labels; keep one"
                )
            labels[patient_id] = label
            first_line.setdefault(patient_id, line)
    return LabelsCsv(path, labels, first_line)


def layout_problem(
    parts: tuple[str, ...], classes: tuple[str, ...]
) -> tuple[RejectReason, str] | None:
    """Why the folder layout gives the file at `parts` (its path under the root, split) no
    label, as (reason, detail); None when it sits in `<CLASS>/<patient>/`."""
    listed = ", ".join(classes)
    if len(parts) == 1:
        return (
            RejectReason.NO_LABEL,
            f"the file sits in the DICOM root, outside the class folders ({listed}); "
            "move it to <root>/<CLASS>/<patient>/",
        )
    if parts[0] not in classes:
        near = [c for c in classes if c.lower() == parts[0].lower()]
        if near:
            return (
                RejectReason.UNKNOWN_LABEL,
                f"its top-level folder differs from class {near[0]} only in letter case; "
                f"rename the folder to {near[0]}",
            )
        return (
            RejectReason.UNKNOWN_LABEL,
            f"its top-level folder is not a class folder ({listed}); move the patient "
            "folder under one of them, or add the class to params.yaml",
        )
    if len(parts) == 2:
        return (
            RejectReason.NO_LABEL,
            f"the file sits directly in class folder {parts[0]}, not in a patient folder; "
            f"move it to <root>/{parts[0]}/<patient>/",
        )
    return None
