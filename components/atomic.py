"""Atomic file writes: a file is either its old content or its whole new one, never half
written, even when the process is killed or two processes write it at once.

The new content goes to a temporary file beside the target (same folder, so the same file
system), is flushed to disk, then renamed over the target with `os.replace`, which is
atomic on POSIX and Windows. A leaf: it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); folders cannot be opened on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, partial_suffix: str | None = None) -> Iterator[Path]:
    """A temporary path to write instead of `path`; it replaces `path` when the block ends.

    The temporary name is unique per process and call and keeps `path`'s suffix (`np.save`
    adds `.npy` otherwise); with `partial_suffix` it is instead a hidden
    `.<name>.<unique><partial_suffix>`, for folders whose readers skip or sweep such files.
    When the block raises, the temporary file is deleted and `path` is left as it was. The
    parent folder is created if missing.

    Example:
        with atomic_path(out / "x.npy") as tmp:
            np.save(tmp, array)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if partial_suffix is None:
        tmp = path.with_name(f"{path.stem}.{unique}.tmp{path.suffix}")
    else:
        tmp = path.with_name(f".{path.name}.{unique}{partial_suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) to path atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
