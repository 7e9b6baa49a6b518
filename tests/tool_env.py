"""The environment of every subprocess a test starts: this interpreter's scripts first on
PATH, so `dvc`, `myelomet`, `prefect` and `uvicorn` are the project's own, whether or not
the virtual environment is activated and whatever else the machine has on its PATH."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

SCRIPTS = Path(sys.executable).parent


def project_env(
    extra: Mapping[str, str] | None = None, drop_prefixes: Iterable[str] = ()
) -> dict[str, str]:
    """This process's environment without variables starting with `drop_prefixes` (e.g.
    the caller's PREFECT_ or MLFLOW_ settings), the interpreter's scripts first on PATH,
    and `extra` on top."""
    drop = tuple(drop_prefixes)
    env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    env["PATH"] = f"{SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}"
    return env | dict(extra or {})
