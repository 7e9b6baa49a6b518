"""The project's own source files a module runs, and a digest of them.

`import_closure` follows every import of a first-party module (`components`, `flows`,
`myelomet`), those inside functions included, so it is the code a command may execute.
DVC stages list it as their deps (a test checks `dvc.yaml` against it) and training hashes it
into each backbone's inputs, so that a change to the training code retrains.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

FIRST_PARTY = ("components", "flows", "myelomet")
ROOT = Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path) -> Path | None:
    """The file of a first-party module or package (relative to root), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root)
    return None


def _imported(path: Path, root: Path) -> set[str]:
    """First-party modules that a file imports anywhere in its body."""
    tree = ast.parse((root / path).read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in FIRST_PARTY}


def import_closure(modules: Iterable[str], root: Path | None = None) -> list[Path]:
    """Every first-party source file the modules import, directly or not, themselves
    included; sorted paths relative to root (this project's by default). Package `__init__`
    files are left out (empty)."""
    root = root or ROOT
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue  # `from package import name` where name is not a module
        seen.add(path)
        todo.extend(_imported(path, root))
    return sorted(p for p in seen if p.name != "__init__.py")


def source_digest(modules: Iterable[str], root: Path | None = None) -> str:
    """sha256 of the import closure's file names and contents."""
    root = root or ROOT
    digest = hashlib.sha256()
    for path in import_closure(modules, root):
        digest.update(path.as_posix().encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return digest.hexdigest()
