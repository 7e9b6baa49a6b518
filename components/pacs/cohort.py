"""The cohort CSV of `myelomet pull`: which studies to fetch and the label of each.

Its first column names the key, `accession_number` or `patient_id`, and its `label` column
the class. The file identifies patients: it is read where the user keeps it, never copied,
and no cell of it is ever shown in a message (a row is named by its line number).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

KEYS = ("accession_number", "patient_id")


@dataclass(frozen=True)
class CohortRow:
    """One row: the line it is on, what its value is (`accession_number` or `patient_id`),
    the value (an identifier: never print it) and the label."""

    line: int
    key: str
    value: str = field(repr=False)
    label: str


def read_cohort(path: Path, classes: tuple[str, ...]) -> list[CohortRow]:
    """Read the cohort CSV.

    Args:
        path: the CSV file, header `accession_number,label` or `patient_id,label`.
        classes: the class names a label must be one of.

    Returns:
        The rows in file order; blank lines are skipped, a value listed twice is kept once.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the header lacks a key column or `label`, a row lacks its value, or a
            label is not a class (the line is named, not the cell).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cohort CSV not found; check --cohort")
    rows: list[CohortRow] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        keys = [k for k in KEYS if k in fields]
        if len(keys) != 1 or "label" not in fields:
            raise ValueError(
                f"{path}: the cohort CSV needs the header `accession_number,label` or "
                f"`patient_id,label` on line 1 (it has {len(fields)} column(s)); fix the header"
            )
        key = keys[0]
        reader.fieldnames = fields
        for record in reader:
            value = (record.get(key) or "").strip()
            label = (record.get("label") or "").strip()
            if not value and not label:
                continue
            line = reader.line_num
            if not value:
                raise ValueError(f"{path}: line {line} has a label but no {key}")
            if label not in classes:
                raise ValueError(
                    f"{path}: line {line} has a label that is not one of {', '.join(classes)} "
                    "(the cell is not shown: a shifted column may hold an identifier); fix it"
                )
            if value in seen:
                continue
            seen[value] = line
            rows.append(CohortRow(line, key, value, label))
    return rows
