"""The raw DICOM tree: its files, and where each one's label comes from.

The folder layout is `<root>/<CLASS>/<patient>/**/*`: `layout_problem` says why a file sits
where no label can be read from its path. Without that layout, labels come from a CSV of
`patient_id,label` keyed by DICOM PatientID, read by `read_labels_csv`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from components.data.rejects import RejectReason


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
