"""Every dvc.yaml stage depends on exactly the project code its command runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from components.code_closure import FIRST_PARTY, import_closure

ROOT = Path(__file__).resolve().parents[1]
CLI = Path("myelomet/cli.py")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _first_party(nodes) -> set[str]:
    return {
        n.module
        for n in nodes
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in FIRST_PARTY
    }


def command_code(command: str) -> set[str]:
    """The files `myelomet <command>` may run: the CLI, what it imports at the top, and the
    closure of what the command's handler `_<command>` imports (the other handlers'
    imports are not this command's)."""
    tree = ast.parse((ROOT / CLI).read_text())
    handlers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    handler = handlers[f"_{command.replace('-', '_')}"]
    modules = _first_party(tree.body) | _first_party(ast.walk(handler))
    return {p.as_posix() for p in import_closure(modules, ROOT)} | {CLI.as_posix()}


def missing_and_extra(stage: dict) -> tuple[set[str], set[str]]:
    """Code the stage's command runs but its deps lack, and code deps it does not run."""
    command = stage["cmd"].split()
    assert command[0] == "myelomet", f"{stage['cmd']}: a stage runs the myelomet CLI"
    code = command_code(command[1])
    listed = {d for d in stage.get("deps", []) if d.endswith(".py")}
    return code - listed, listed - code


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_runs(name):
    missing, extra = missing_and_extra(STAGES[name])
    assert not missing, f"dvc.yaml stage {name} runs {sorted(missing)}: add them to its deps"
    assert not extra, f"dvc.yaml stage {name} does not run {sorted(extra)}: drop them"


def test_the_check_fails_when_a_module_is_left_out():
    stage = STAGES["train"]
    dropped = "components/training/loop.py"
    assert dropped in stage["deps"]
    missing, _ = missing_and_extra({**stage, "deps": [d for d in stage["deps"] if d != dropped]})
    assert missing == {dropped}


def test_the_closure_follows_imports_inside_functions(tmp_path):
    package = tmp_path / "components"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from components import b\n")
    (package / "b.py").write_text("import json\nfrom components.c import name\n")
    (package / "c.py").write_text("name = 1\n")
    (package / "unused.py").write_text("")
    paths = [p.as_posix() for p in import_closure(["components.a"], tmp_path)]
    assert paths == ["components/a.py", "components/b.py", "components/c.py"]
