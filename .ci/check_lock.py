"""Exit 1 unless the installed packages are exactly those of the lock, at its versions.

Usage: `uv pip freeze --exclude-editable --python .venv/bin/python | python check_lock.py LOCK`
(`make check-lock`). The lock's environment markers are evaluated for this interpreter, so a
line for another platform or Python is not expected here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of each `name==version` line that applies to this interpreter."""
    out = {}
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier
        out[canonicalize_name(req.name)] = spec.version
    return out


def main(lock: Path) -> int:
    locked = pins(lock.read_text().splitlines())
    installed = pins(sys.stdin.read().splitlines())
    wrong = {
        name: (locked.get(name, "not locked"), installed.get(name, "not installed"))
        for name in sorted(set(locked) | set(installed))
        if locked.get(name) != installed.get(name)
    }
    for name, (want, have) in wrong.items():
        print(f"{name}: lock {want}, installed {have}")
    if wrong:
        print(f"{len(wrong)} packages differ from {lock}: run `make install` (or `make lock`)")
        return 1
    print(f"{len(installed)} packages, exactly as {lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
