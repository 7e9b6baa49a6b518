"""Patient-grouped 3-fold cross-validation end to end through a real `dvc repro` of this
repository's dvc.yaml in a temporary git+DVC project: a tiny synthetic cohort, two fast
backbones trained once per fold, the out-of-fold evaluation, and the fold ensemble
registered, served on a DICOM file and described by its model card."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.tool_env import SCRIPTS, project_env

REPO = Path(__file__).resolve().parents[2]
FOLDS = 3
BACKBONES = ["MobileNet", "MobileNetV2"]
MODEL = "myelomet"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _ok(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(patients_per_class=6, slices_min=2, slices_max=2, size=96)
    params["split"]["folds"] = FOLDS
    params["training"].update(
        backbones=BACKBONES, image_size=32, batch_size=8, epochs=1, weights="none", retries=0
    )
    params["training"]["overrides"] = {}
    params["leakage"]["enabled"] = False
    params["evaluation"].update(n_bootstrap=20, gradcam_per_class=1, ensemble_top_k=2)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cv-project")
    for package in ("components", "flows", "myelomet"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    env = project_env(drop_prefixes=("PREFECT_", "MLFLOW_"))
    env |= {
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MYELOMET_DEID_KEY": "test-key-0123456789abcdef",
    }
    for cmd in (["git", "init", "-q"], [str(SCRIPTS / "dvc"), "init", "-q"], ["git", "add", "-A"]):
        _ok(cmd, root, env)
    _ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root, env)
    _ok([str(SCRIPTS / "dvc"), "repro"], root, env)
    return root, env


def test_every_patient_is_tested_once_by_a_fold_that_trained_without_them(project):
    root, _ = project
    split = pd.read_csv(root / "data/splits/split.csv", dtype={"image_id": str})
    assert sorted(split["fold"].unique()) == list(range(FOLDS))
    tested = split[split["split"] == "test"].groupby("patient")["fold"].nunique()
    assert (tested == 1).all() and len(tested) == 12
    for fold in range(FOLDS):
        folder = root / "models" / f"fold-{fold}"
        own = pd.read_csv(folder / "split.csv", dtype={"image_id": str})
        assert list(own.columns) == ["image_id", "patient", "label", "split"]
        assert len(own) == (split["fold"] == fold).sum()
        for backbone in BACKBONES:
            predictions = pd.read_csv(folder / backbone / "predictions.csv")
            for part in ("val", "test"):
                scored = set(predictions.loc[predictions["split"] == part, "patient"])
                assert scored == set(own.loc[own["split"] == part, "patient"])


def test_table2_pools_the_folds_with_their_spread(project):
    root, _ = project
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["cross_validation"]["folds"] == FOLDS
    assert set(metrics["cross_validation"]["test_auc"]) == {*BACKBONES, "ensemble"}
    for candidate in metrics["candidates"].values():
        assert candidate["test"]["n_patients"] == candidate["val"]["n_patients"] == 12
        auc = candidate["test"]["patient"]["auc"]
        assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    page = (root / "reports/study.html").read_text()
    assert f"Cross-validation ({FOLDS} folds)" in page
    assert "Grad-CAM" in page and (root / "reports/figures/gradcam.png").is_file()


def test_the_fold_ensemble_is_registered_served_and_carded(project):
    root, _ = project
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    metrics = json.loads((root / "reports/metrics.json").read_text())
    selected = metrics["selection"]["selected"]
    members = version.tags["backbones"].split(",")
    assert {m.split("/")[0] for m in members} == {f"fold-{f}" for f in range(FOLDS)}
    assert version.tags["candidate"] == selected
    assert f"patient-level {FOLDS}-fold cross-validation" in version.description
    assert "fold ensemble" in version.description

    fold_runs = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id], "tags.fold != ''"
    )
    assert sorted((r.data.tags["backbone"], r.data.tags["fold"]) for r in fold_runs) == sorted(
        (b, str(f)) for b in BACKBONES for f in range(FOLDS)
    )
    for run in fold_runs:  # each trained on its own fold's training patients only
        own = pd.read_csv(root / "models" / f"fold-{run.data.tags['fold']}" / "split.csv")
        assert int(run.data.params["n_train"]) == (own["split"] == "train").sum()

    dicom = next((root / "data/raw/synthetic").rglob("*.dcm"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(model.unwrap_python_model().predictor.models) == len(members)
    out = model.predict(pd.DataFrame({"path": [str(dicom)]}))
    assert out["error"].isna().all()
    assert 0.0 <= float(out["p_mm"].iloc[0]) <= 1.0


def test_a_second_repro_has_nothing_to_do(project):
    root, env = project
    assert json.loads(_ok([str(SCRIPTS / "dvc"), "status", "--json"], root, env)) == {}
