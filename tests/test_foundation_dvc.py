"""The foundation pipeline through real `dvc repro` in a temporary git repository:
synthesize -> ingest -> split, no PHI in the outputs, a no-op second repro, and a
`dvc push` / `dvc pull` round trip through a local remote."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import SyntheticConfig
from components.data.synthetic.cohort import synthesize_cohort
from tests.tool_env import SCRIPTS, project_env

REPO = Path(__file__).resolve().parents[1]
DVC = str(SCRIPTS / "dvc")
STAGES = ["synthesize", "ingest", "split"]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A temporary git+DVC project holding the foundation stages and a tiny demo config."""
    root = tmp_path_factory.mktemp("project")
    for package in ("components", "myelomet"):  # the stages' code deps
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: stages[s] for s in STAGES}}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(patients_per_class=4, slices_min=2, slices_max=3, size=96)
    params["split"].update(train=0.5, val=0.25, test=0.25)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = project_env({"MYELOMET_DEID_KEY": "test-key-0123456789abcdef"})
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"]):
        _run(cmd, root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root, env)
    _run([DVC, "repro"], root, env)
    return root, env


def test_repro_writes_a_patient_level_split_without_phi(project):
    root, _ = project
    split = pd.read_csv(root / "data/splits/split.csv")
    assert split.groupby("patient")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
    params = yaml.safe_load((root / "params.yaml").read_text())
    cohort = synthesize_cohort(
        SyntheticConfig(**params["synthetic"]), ("MM", "OMBT"), root / "phi-check", progress=False
    )
    phi = {s for s in cohort.phi_strings() if len(s) >= 6}
    assert phi, "the synthetic cohort must carry PHI to check against"
    for folder in ("data/processed", "data/splits"):
        for path in (root / folder).rglob("*"):
            if path.is_file():
                text = path.read_bytes().decode("latin-1")
                leaked = [s for s in phi if s in text]
                assert not leaked, f"{path} contains PHI {leaked}"


def test_second_repro_reruns_nothing(project):
    root, env = project
    status = _run([DVC, "status", "--json"], root, env)
    assert json.loads(status.stdout) == {}
    again = _run([DVC, "repro"], root, env)
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout


def test_push_pull_round_trip_restores_the_data(project, tmp_path):
    root, env = project
    before = _tree_digest(root / "data")
    _run([DVC, "remote", "add", "-d", "local", str(tmp_path / "remote")], root, env)
    _run([DVC, "push"], root, env)
    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache")
    _run([DVC, "pull"], root, env)
    assert _tree_digest(root / "data") == before
