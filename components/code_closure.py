"""The project's own source files a command runs, and a digest of them.

`import_closure` follows, from the given modules, every import of a first-party module
(`components`, `flows`, `myelomet`), those inside functions included and those under
`if TYPE_CHECKING:` left out (they never run); the package `__init__` files each import runs;
and every first-party module a file starts in a new process with `python -m`, found in a
list or tuple literal such as `[sys.executable, "-m", "components.training.worker", ...]`
(the module named by a string, or by a module-level string constant of the file or of the
first-party module it imports the name from). So it is the code a command may execute, its
child processes' included.

Both uses of it are here: `stage_code` is the code a `dvc.yaml` stage's command runs, and
`python -m components.code_closure --write dvc.yaml` rewrites each stage's `.py` deps to it
(`--check` only reports; tests/test_stage_deps.py checks the same); `source_digest` hashes a
backbone's training process into its inputs, so that a change to the training code retrains.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import yaml

FIRST_PARTY = ("components", "flows", "myelomet")
ROOT = Path(__file__).resolve().parents[1]
CLI = Path("myelomet/cli.py")


def module_file(module: str, root: Path) -> Path | None:
    """The file of a first-party module or package (relative to root), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root)
    return None


def _package(path: Path) -> list[str]:
    """The package a source file's relative imports start from, as name parts."""
    parts = list(path.with_suffix("").parts)
    return parts if path.name == "__init__.py" else parts[:-1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node under the given ones but the bodies of `if TYPE_CHECKING:`."""
    todo = list(nodes)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "text"` assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign) and node.value:
            targets = [node.target]
        text = _text(node.value, {}) if targets else None
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and text is not None:
            found[targets[0].id] = text
    return found


def _text(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return constants.get(node.id) if isinstance(node, ast.Name) else None


def _from_module(node: ast.ImportFrom, path: Path) -> str:
    """The absolute name of the module a `from ... import` in a file imports from."""
    base = _package(path)[: len(_package(path)) - node.level + 1] if node.level else []
    return ".".join([*base, *([node.module] if node.module else [])])


def _referenced(nodes: Iterable[ast.AST], path: Path, constants: dict[str, str]) -> set[str]:
    """First-party modules that the nodes of a file import or start with `python -m`."""
    names: set[str] = set()
    for node in _runtime_nodes(nodes):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _from_module(node, path)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.List | ast.Tuple):
            texts = [_text(element, constants) for element in node.elts]
            names.update(m for flag, m in zip(texts, texts[1:], strict=False) if flag == "-m" and m)
    return {n for n in names if n.split(".")[0] in FIRST_PARTY}


def _parse(path: Path, root: Path) -> ast.Module:
    return ast.parse((root / path).read_text(), filename=str(path))


def _constants(tree: ast.Module, path: Path, root: Path) -> dict[str, str]:
    """The string constants a file may name a module by: its own module-level ones and those
    it imports at module level from a first-party module (`from components.x import NAME`)."""
    found: dict[str, str] = {}
    for node in tree.body:
        module = _from_module(node, path) if isinstance(node, ast.ImportFrom) else ""
        source = module_file(module, root) if module.split(".")[0] in FIRST_PARTY else None
        if source is not None and source != path:
            theirs = _string_constants(_parse(source, root))
            found.update(
                {a.asname or a.name: theirs[a.name] for a in node.names if a.name in theirs}
            )
    return found | _string_constants(tree)


def _referenced_by_file(path: Path, root: Path) -> set[str]:
    tree = _parse(path, root)
    return _referenced(tree.body, path, _constants(tree, path, root))


def _with_packages(module: str) -> list[str]:
    """A module and the packages importing it imports first: `a.b.c` -> a, a.b, a.b.c."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(modules: Iterable[str], root: Path | None = None) -> list[Path]:
    """Every first-party source file the modules run, directly or not, themselves and their
    packages' `__init__` files included; sorted paths relative to root (this project's by
    default)."""
    root = root or ROOT
    seen: set[Path] = set()
    todo = [package for module in modules for package in _with_packages(module)]
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue  # `from package import name` where name is not a module
        seen.add(path)
        todo.extend(p for module in _referenced_by_file(path, root) for p in _with_packages(module))
    return sorted(seen)


def source_digest(modules: Iterable[str], root: Path | None = None) -> str:
    """sha256 of the import closure's file names and contents."""
    root = root or ROOT
    digest = hashlib.sha256()
    for path in import_closure(modules, root):
        digest.update(path.as_posix().encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return digest.hexdigest()


def command_modules(command: str, root: Path | None = None) -> set[str]:
    """The first-party modules `myelomet <command>` runs first: the CLI's module-level
    imports, and those of the command's handler `_<command>` and of the CLI functions it
    calls (the other handlers' imports are not this command's).

    Raises:
        ValueError: the CLI has no handler for the command.
    """
    root = root or ROOT
    tree = _parse(CLI, root)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    handler = f"_{command.replace('-', '_')}"
    if handler not in functions:
        raise ValueError(
            f"`myelomet {command}`: {CLI} has no handler {handler}; fix the stage's cmd"
        )
    called, todo = set(), [handler]
    while todo:
        name = todo.pop()
        if name not in called:
            called.add(name)
            todo.extend(
                n.id
                for n in ast.walk(functions[name])
                if isinstance(n, ast.Name) and n.id in functions
            )
    top = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)]
    nodes = [*top, *(functions[name] for name in called)]
    return _referenced(nodes, CLI, _constants(tree, CLI, root)) | {"myelomet"}


def stage_code(cmd: str, root: Path | None = None) -> list[Path]:
    """The project's source files a dvc.yaml stage's command runs: the CLI and the closure of
    `command_modules`; sorted paths relative to root.

    Raises:
        ValueError: the command is not `myelomet <command> ...`.
    """
    words = cmd.split()
    if len(words) < 2 or words[0] != "myelomet":
        raise ValueError(f"{cmd!r}: a dvc.yaml stage runs `myelomet <command>`; fix its cmd")
    return sorted({*import_closure(command_modules(words[1], root), root), CLI})


_KEY = re.compile(r"^(?P<indent> +)(?P<key>[^\s#-][^:]*):\s*(#.*)?$")  # `name:`, a block follows
_ITEM = re.compile(r"^(?P<indent> +)- (?P<value>[^#]*?)\s*(#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_code(item: re.Match | None) -> bool:
    return item is not None and item["value"].strip("'\"").endswith(".py")


def with_stage_code(text: str, root: Path) -> str:
    """dvc.yaml's text with each stage's `.py` deps replaced by its `stage_code`, sorted after
    the stage's other deps; every other line, comments included, is kept as it is.

    Raises:
        ValueError: a stage has no block `deps:` list, or its command is not the CLI's.
    """
    stages = yaml.safe_load(text)["stages"]
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage_indent, stage, written = -1, "", set()
    i = 0
    while i < len(lines):
        out.append(lines[i])
        key = _KEY.match(lines[i])
        i += 1
        if key and key["key"] in stages and stage_indent in (-1, len(key["indent"])):
            stage_indent, stage = len(key["indent"]), key["key"]
        elif key and key["key"] == "deps" and stage and len(key["indent"]) > stage_indent:
            end = i
            while end < len(lines) and lines[end].strip() and _indent(lines[end]) > _indent(key[0]):
                end += 1
            items = [(line, _ITEM.match(line)) for line in lines[i:end]]
            indent = next((m["indent"] for _, m in items if m), key["indent"] + "  ")
            out += [line for line, m in items if not _is_code(m)]
            out += [f"{indent}- {p.as_posix()}\n" for p in stage_code(stages[stage]["cmd"], root)]
            written.add(stage)
            i = end
    missing = sorted(set(stages) - written)
    if missing:
        raise ValueError(f"dvc.yaml stages {missing} have no block `deps:` list: add one to each")
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m components.code_closure --write dvc.yaml` (or `--check dvc.yaml`)."""
    parser = argparse.ArgumentParser(
        prog="python -m components.code_closure",
        description="Set (or check) each dvc.yaml stage's .py deps to the code its command runs.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="DVC_YAML", type=Path, help="rewrite the file's deps")
    mode.add_argument("--check", metavar="DVC_YAML", type=Path, help="exit 1 if they differ")
    args = parser.parse_args(argv)
    path: Path = (args.write or args.check).resolve()
    text = path.read_text()
    new = with_stage_code(text, path.parent)
    if new == text:
        print(f"{path.name}: every stage's code deps are up to date")
        return 0
    if args.check:
        print(
            f"{path.name}: stage code deps are stale; run "
            f"`python -m components.code_closure --write {path.name}`",
            file=sys.stderr,
        )
        return 1
    path.write_text(new)
    print(f"{path.name}: stage code deps rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
