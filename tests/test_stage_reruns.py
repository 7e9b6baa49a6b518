"""`dvc status` after an edit to any file of the training code lists `train` (and `leakage`
where it runs that file); after an edit to the model card, not `train`.

A temporary git + DVC repository holds the project's code, dvc.yaml and params.yaml; every
stage is committed to dvc.lock with placeholder outputs (`dvc commit` records the hashes of the
deps as they are, which is what a finished pipeline leaves), so `dvc status` compares the code
deps of each stage with the ones it was committed with, as after a real run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.code_closure import FIRST_PARTY
from tests.tool_env import SCRIPTS, project_env

REPO = Path(__file__).resolve().parents[1]
DVC = str(SCRIPTS / "dvc")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = project_env({"DVC_NO_ANALYTICS": "1"})
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _resolve(path: str, params: dict) -> str:
    """A dvc.yaml path with its `${section.key}` parameters filled in."""

    def value(match: re.Match) -> str:
        found = params
        for key in match[1].split("."):
            found = found[key]
        return str(found)

    return re.sub(r"\$\{([\w.]+)\}", value, path)


def _paths(entries: list) -> list[str]:
    """The paths of a stage's deps, outs, metrics or plots list (an entry may be a mapping)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def _placeholders(root: Path) -> None:
    """Create every data dep and output of dvc.yaml: a folder where another path lies under
    it, else a file."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    paths = {
        _resolve(p, params)
        for stage in stages.values()
        for key in ("deps", "outs", "metrics", "plots")
        for p in _paths(stage.get(key, []))
    }
    for path in sorted(paths):
        target = root / path
        if target.exists():
            continue
        if any(other.startswith(f"{path}/") for other in paths):
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"placeholder for {path}\n")


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC repository with the project's pipeline, every stage in dvc.lock."""
    root = tmp_path_factory.mktemp("pipeline")
    for package in FIRST_PARTY:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    _run(["git", "init", "-q"], root)
    _run([DVC, "init", "-q"], root)
    _placeholders(root)
    _run([DVC, "commit", "-f", "-q"], root)
    assert _changed(root) == set(), "a freshly committed pipeline is up to date"
    return root


def _changed(root: Path) -> set[str]:
    """The stages `dvc status --json` lists as changed."""
    return {name.split(":")[-1] for name in json.loads(_run([DVC, "status", "--json"], root))}


def _changed_after_comment(root: Path, source: str) -> set[str]:
    path = root / source
    text = path.read_text()
    path.write_text(text + "\n# an edit\n")
    try:
        return _changed(root)
    finally:
        path.write_text(text)


def _runs(root: Path, stage: str, source: str) -> bool:
    return source in yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["deps"]


@pytest.mark.parametrize(
    "source", sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("components/training/*.py"))
)
def test_an_edit_to_the_training_code_reruns_train(committed, source):
    changed = _changed_after_comment(committed, source)
    assert "train" in changed, f"an edit to {source} leaves `train` up to date"
    if source == "components/training/worker.py":
        assert "leakage" in changed, "the leakage stage trains with the worker"
    assert ("leakage" in changed) == _runs(committed, "leakage", source)


def test_an_edit_to_the_model_card_does_not_rerun_train(committed):
    changed = _changed_after_comment(committed, "components/registry/model_card.py")
    assert "evaluate" in changed
    assert "train" not in changed
