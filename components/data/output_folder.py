"""The output folder of ingest: kept apart from the DICOM root, written whole or not at all.

A run writes into a partial folder beside `out` that holds `MARKER`; `swap_in` then puts it
in place of `out`, whose old contents are deleted only when ingest wrote them: the folder
holds `MARKER` and nothing but what ingest writes. CSVs are written atomically, and the
partial folders of killed runs are cleaned up by the next one.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from components.artifacts import MANIFEST_FILE, REJECTS_FILE, SLICES_DIR
from components.atomic import atomic_path

# Written into every output folder of ingest: what a later run may replace.
MARKER = ".myelomet-ingest"
MARKER_TEXT = "written by `myelomet ingest`; a later ingest into this folder replaces it\n"
# What an output folder of ingest holds.
_OWN_ENTRIES = frozenset(
    {MANIFEST_FILE, REJECTS_FILE, SLICES_DIR, f".{SLICES_DIR}.partial", MARKER}
)


class OutputFolderError(ValueError):
    """The output folder cannot be written without risking data that ingest did not make."""


def check_apart(root: Path, out: Path) -> None:
    """Raise OutputFolderError when `out` lies inside the DICOM root `root` or holds it."""
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


def check_replaceable(out: Path) -> None:
    """Raise OutputFolderError unless `out` is absent, an empty folder, or the output of an
    earlier ingest: its marker, and only the files ingest writes. Nothing is changed."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputFolderError(f"{out}: not a folder; choose an output folder")
    if not out.exists():
        return
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    if MARKER not in names:
        raise OutputFolderError(
            f"{out}: the folder is not empty and has no {MARKER} marker of an earlier "
            "`myelomet ingest`; nothing was changed; choose an empty or new output folder, "
            "or empty this one yourself"
        )
    if not names <= _OWN_ENTRIES:
        raise OutputFolderError(
            f"{out}: the folder holds files that `myelomet ingest` did not write (e.g. "
            f"{sorted(names - _OWN_ENTRIES)[:3]}); nothing was changed; choose an empty or "
            "new output folder"
        )


def remove_own_output(folder: Path) -> None:
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


def remove_stale_partials(out: Path) -> None:
    """Partial outputs of killed runs into `out` (they hold the marker; a run still alive,
    writing at the same time, keeps its own)."""
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        if folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file():
            remove_own_output(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def swap_in(new: Path, out: Path) -> None:
    """Put the finished output `new` in place of `out`: the old one is moved aside, then
    its own files are deleted. A folder ingest did not write is never replaced (see
    `check_replaceable`)."""
    check_replaceable(out)
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    new.rename(out)
    remove_own_output(old)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a CSV atomically (a half-written manifest must never look complete)."""
    with atomic_path(path) as partial, partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
