"""Every dvc.yaml stage depends on exactly the project code its command runs, child processes
included, and `python -m components.code_closure --write dvc.yaml` regenerates those deps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.code_closure import import_closure, main, stage_code, with_stage_code
from components.training.launcher import training_command
from components.training.plan import TRAINING_MODULE

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
REGENERATE = "python -m components.code_closure --write dvc.yaml"


def missing_and_extra(stage: dict) -> tuple[set[str], set[str]]:
    """Code the stage's command runs but its deps lack, and code deps it does not run."""
    code = {p.as_posix() for p in stage_code(stage["cmd"], ROOT)}
    listed = {d for d in stage.get("deps", []) if d.endswith(".py")}
    return code - listed, listed - code


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_runs(name):
    missing, extra = missing_and_extra(STAGES[name])
    assert not missing, f"dvc.yaml stage {name} runs {sorted(missing)}: run `{REGENERATE}`"
    assert not extra, f"dvc.yaml stage {name} does not run {sorted(extra)}: run `{REGENERATE}`"


def test_the_check_fails_when_a_module_is_left_out():
    stage = STAGES["train"]
    dropped = "components/training/worker.py"  # run by the training process, imported by none
    assert dropped in stage["deps"]
    missing, _ = missing_and_extra({**stage, "deps": [d for d in stage["deps"] if d != dropped]})
    assert missing == {dropped}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _closure(root: Path, module: str) -> list[str]:
    return [p.as_posix() for p in import_closure([module], root)]


def test_the_closure_follows_imports_inside_functions(tmp_path):
    _write(
        tmp_path,
        {
            "components/a.py": "def f():\n    from components import b\n",
            "components/b.py": "import json\nfrom components.c import name\n",
            "components/c.py": "name = 1\n",
            "components/unused.py": "",
        },
    )
    assert _closure(tmp_path, "components.a") == [
        "components/a.py",
        "components/b.py",
        "components/c.py",
    ]


def test_the_closure_follows_the_modules_a_file_starts_with_python_dash_m(tmp_path):
    _write(
        tmp_path,
        {
            "components/__init__.py": "",
            "components/launch.py": (
                "import subprocess, sys\n"
                "from components.names import THIRD as ENTRY_3\n"
                'ENTRY = "components.jobs.second"\n'
                "def run():\n"
                '    subprocess.run([sys.executable, "-m", "components.jobs.first", "--x"])\n'
                '    subprocess.run((sys.executable, "-m", ENTRY))\n'
                '    subprocess.run([sys.executable, "-m", ENTRY_3])\n'
                '    subprocess.run([sys.executable, "-m", "dvc", "repro"])\n'
            ),
            "components/names.py": 'THIRD = "components.jobs.third"\n',
            "components/jobs/__init__.py": "",
            "components/jobs/third.py": "",
            "components/jobs/first.py": "from . import shared\n",
            "components/jobs/second.py": "",
            "components/jobs/shared.py": "",
        },
    )
    assert _closure(tmp_path, "components.launch") == [
        "components/__init__.py",
        "components/jobs/__init__.py",
        "components/jobs/first.py",
        "components/jobs/second.py",
        "components/jobs/shared.py",
        "components/jobs/third.py",
        "components/launch.py",
        "components/names.py",
    ]


def test_the_closure_leaves_out_imports_only_type_checkers_run(tmp_path):
    _write(
        tmp_path,
        {
            "components/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from components.annotations import Kind\n"
                "else:\n    from components.runtime import Kind\n"
            ),
            "components/annotations.py": "",
            "components/runtime.py": "",
        },
    )
    assert _closure(tmp_path, "components.a") == ["components/a.py", "components/runtime.py"]


def test_the_stages_that_train_depend_on_the_code_a_backbone_skip_hash_covers():
    started = training_command("VGG16", Path("params.yaml"), Path("out"), None)
    assert started[1:3] == ["-m", TRAINING_MODULE], "the skip hash covers the process started"
    worker = {p.as_posix() for p in import_closure([TRAINING_MODULE], ROOT)}
    assert "components/training/worker.py" in worker
    for stage in ("train", "leakage"):
        assert worker <= set(STAGES[stage]["deps"]), f"{stage} starts the training worker"
    assert "components/registry/model_card.py" not in STAGES["train"]["deps"]


DVC_YAML = """\
# a comment kept as it is
stages:
  train:
    cmd: myelomet train --fast
    deps:
      - data  # the data
      - components/old.py
    outs:
      - models

  other:
    cmd: myelomet other
    deps:
      - components/worker.py
"""


REGENERATED = """\
# a comment kept as it is
stages:
  train:
    cmd: myelomet train --fast
    deps:
      - data  # the data
      - components/config.py
      - components/launch.py
      - components/paths.py
      - components/worker.py
      - myelomet/__init__.py
      - myelomet/cli.py
    outs:
      - models

  other:
    cmd: myelomet other
    deps:
      - components/config.py
      - components/unrelated.py
      - myelomet/__init__.py
      - myelomet/cli.py
"""


def test_the_generator_rewrites_only_the_code_deps_and_check_says_so(tmp_path, capsys):
    _write(
        tmp_path,
        {
            "dvc.yaml": DVC_YAML,
            "myelomet/__init__.py": "",
            "myelomet/cli.py": (
                "from components.config import load\n"
                "def _params():\n    from components import paths\n"
                "def _train(args):\n    _params()\n    from components.launch import go\n"
                "def _other(args):\n    from components.unrelated import x\n"
            ),
            "components/config.py": "",
            "components/paths.py": "",
            "components/launch.py": 'go = ["python", "-m", "components.worker"]\n',
            "components/worker.py": "",
            "components/unrelated.py": "",
        },
    )
    dvc_yaml = str(tmp_path / "dvc.yaml")
    assert main(["--check", dvc_yaml]) == 1
    assert "--write dvc.yaml" in capsys.readouterr().err
    assert (tmp_path / "dvc.yaml").read_text() == DVC_YAML
    assert main(["--write", dvc_yaml]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == REGENERATED
    assert main(["--check", dvc_yaml]) == 0


def test_the_generator_names_a_stage_without_deps_and_a_command_not_the_cli(tmp_path):
    _write(tmp_path, {"myelomet/cli.py": "def _train(args):\n    pass\n"})
    no_deps = "stages:\n  train:\n    cmd: myelomet train\n    outs:\n      - m\n"
    with pytest.raises(ValueError, match=r"\['train'\] have no block `deps:` list"):
        with_stage_code(no_deps, tmp_path)
    with pytest.raises(ValueError, match="runs `myelomet <command>`"):
        stage_code("python train.py", tmp_path)
    with pytest.raises(ValueError, match="no handler _evaluate"):
        stage_code("myelomet evaluate", tmp_path)
