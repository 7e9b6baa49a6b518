"""The pulled raw tree on disk: `<out>/<CLASS>/<patient>/<series>/<image>.dcm`, every name a
pseudonym, each file written whole or not at all, and the state of every series.

A file is written under a temporary name in its folder and renamed when complete, so a
killed pull leaves no half file; the temporary files of an earlier run are removed when the
next starts. The state table (`.<name>.pull-state.csv` beside `out`, keyed by pseudonyms)
records what each series expects and has received; a series is complete only when the
count of its files equals what the PACS reported.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from components.atomic import atomic_path

PARTIAL_SUFFIX = ".partial"
STATE_COLUMNS = ("patient", "label", "series", "expected", "received")


@dataclass(frozen=True)
class SeriesState:
    """What one series expects and has on disk."""

    patient: str
    label: str
    series: str
    expected: int
    received: int

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.received == self.expected


class PulledTree:
    """The output folder of a pull and its state table."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.state_path = self.out.parent / f".{self.out.name}.pull-state.csv"
        self.report_path = self.out.parent / f"{self.out.name}.pull_report.csv"

    def prepare(self) -> None:
        """Create the folder and remove the temporary files a killed run left."""
        self.out.mkdir(parents=True, exist_ok=True)
        for partial in self.out.rglob(f"*{PARTIAL_SUFFIX}"):
            partial.unlink(missing_ok=True)

    def series_folder(self, label: str, patient: str, series: str) -> Path:
        return self.out / label / patient / series

    def count(self, label: str, patient: str, series: str) -> int:
        """Complete files of the series on disk."""
        folder = self.series_folder(label, patient, series)
        return sum(1 for _ in folder.glob("im-*.dcm")) if folder.is_dir() else 0

    def has(self, label: str, patient: str, series: str, name: str) -> bool:
        return (self.series_folder(label, patient, series) / name).is_file()

    def write(self, label: str, patient: str, series: str, name: str, ds: Dataset) -> Path:
        """Write `ds` whole under its final name (temporary file, fsync, rename)."""
        final = self.series_folder(label, patient, series) / name
        with atomic_path(final, PARTIAL_SUFFIX) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return final

    def read_state(self) -> dict[str, SeriesState]:
        """The state table of earlier runs, by series pseudonym; empty when there is none."""
        if not self.state_path.is_file():
            return {}
        with self.state_path.open(newline="") as f:
            return {
                row["series"]: SeriesState(
                    row["patient"],
                    row["label"],
                    row["series"],
                    int(row["expected"]),
                    int(row["received"]),
                )
                for row in csv.DictReader(f)
            }

    def write_state(self, states: dict[str, SeriesState]) -> None:
        """Replace the state table atomically."""
        write_rows(
            self.state_path,
            STATE_COLUMNS,
            [
                {c: getattr(s, c) for c in STATE_COLUMNS}
                for s in sorted(states.values(), key=lambda s: (s.patient, s.series))
            ],
        )


def write_rows(path: Path, columns: tuple[str, ...], rows: list[dict[str, object]]) -> None:
    """Write a CSV under a temporary name, then rename it over `path`."""
    with atomic_path(path, PARTIAL_SUFFIX) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
