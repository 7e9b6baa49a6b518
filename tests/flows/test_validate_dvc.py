"""`dvc repro` in a temporary git+DVC repository stops at `validate` on bad data (the
downstream stage never runs) and goes on once the data is fixed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.components.checks.test_suites import write_dataset
from tests.tool_env import project_env

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

DVC_YAML = {
    "stages": {
        "validate": {
            "cmd": "myelomet validate",
            "params": ["classes", "ingest.out", "split", "validation"],
            "deps": [
                "${ingest.out}/manifest.csv",
                "${ingest.out}/slices",
                "${split.out}",
                "components/checks/suites.py",
                "flows/validate.py",
            ],
            "outs": ["${validation.docs_out}"],
            "metrics": [{"${validation.summary_out}": {"cache": False}}],
        },
        "train": {
            "cmd": "python -c \"open('trained.txt', 'w').write('trained')\"",
            "deps": ["${validation.summary_out}", "${split.out}"],
            "outs": ["trained.txt"],
        },
    }
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _ok(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = _run(cmd, cwd, env)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git+DVC repository with the validate stage, a stage after it, and good data."""
    root = tmp_path / "project"
    root.mkdir()
    for package in ("components", "flows", "myelomet"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    params = yaml.safe_load((root / "params.yaml").read_text())
    dataset = write_dataset(root / "data")
    assert dataset.manifest == root / params["ingest"]["out"] / "manifest.csv"
    assert dataset.split == root / params["split"]["out"]

    env = project_env(drop_prefixes=("PREFECT_",))
    env |= {
        # no API URL: the flow runs against Prefect's ephemeral server, kept in this folder
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        _ok(cmd, root, env)
    _ok(["git", "add", "-A"], root, env)
    _ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root, env)
    return root, env


def test_repro_stops_at_validate_on_bad_data_and_goes_on_when_fixed(project):
    root, env = project
    manifest_path = root / "data/processed/manifest.csv"
    good = pd.read_csv(manifest_path)
    bad = good.copy()
    bad.loc[3, "modality"] = "MR"
    bad.to_csv(manifest_path, index=False)

    done = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "manifest.modality_ct" in output
    assert f"image_id={good.loc[3, 'image_id']}" in output
    assert not (root / "trained.txt").exists()
    assert json.loads((root / "reports/validation.json").read_text())["success"] == 0

    good.to_csv(manifest_path, index=False)
    done = _ok([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "data validation passed" in done.stdout
    assert (root / "trained.txt").read_text() == "trained"
    assert (root / "reports/validation/index.html").is_file()
    metrics = json.loads(
        _ok([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env).stdout
    )
    (workspace,) = metrics.values()
    (summary,) = workspace["data"].values()
    assert summary["data"]["success"] == 1
