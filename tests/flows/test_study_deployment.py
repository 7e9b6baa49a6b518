"""The study as Prefect deployments on a real Prefect server.

A `prefect server start` on 127.0.0.1 with its own PREFECT_HOME, a tiny git+DVC project
holding this repository's dvc.yaml and prefect.yaml, `prefect deploy --all` from it, and a
process worker that runs one flow run and exits. The first test reads both deployments and
the nightly schedule back through the client, triggers a study and sees it complete with its
artifacts and a registered champion. The project runs patient-grouped 3-fold
cross-validation, so that study also proves the folds end to end through `dvc repro`: every
patient tested once, one model per fold, Table 2 pooled out of fold, and the fold ensemble
registered, carded and served on a DICOM file. Another puts a new, invalid data version in place
(`dvc add`), starts the next scheduled run now, and sees it fail at validation with the
failed expectation in its message and failure note, the registry untouched; it puts the
workspace back after, so the tests run in any order. The triggered study is a module fixture
(`studied`) that each test starts from.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Scheduled

from components.pipeline import notify, stages
from flows.study import ARTIFACT_KEYS
from tests.tool_env import SCRIPTS, project_env

REPO = Path(__file__).resolve().parents[2]
POOL = "myelomet-local"
STUDY = "study/study-nightly"
ON_DEMAND = "train-on-demand/train-on-demand"
MODEL = "myelomet"
FOLDS = 3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _wait_healthy(api_url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"prefect server not healthy after 180 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server on a free port of 127.0.0.1; yields the environment that reaches it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = project_env(drop_prefixes=("PREFECT_", "MLFLOW_"))
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MYELOMET_DEID_KEY": "test-key-0123456789abcdef",
    }
    log = home / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(SCRIPTS / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(api_url, process, log)
        yield env | {"PREFECT_API_URL": api_url}
    finally:
        process.terminate()
        process.wait(timeout=60)


def _tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synthetic"].update(patients_per_class=6, slices_min=2, slices_max=2, size=96)
    params["split"]["folds"] = FOLDS
    params["training"].update(
        backbones=["MobileNet"], image_size=32, batch_size=8, epochs=1, weights="none", retries=0
    )
    params["training"]["overrides"] = {"MobileNet": {"epochs": 1}}
    params["leakage"]["backbone"] = "MobileNet"
    params["evaluation"].update(n_bootstrap=10, gradcam_per_class=0, ensemble_top_k=0)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, server: dict[str, str]) -> Path:
    """A git+DVC project with this repository's code, dvc.yaml and prefect.yaml, a tiny
    cohort and one fast backbone; its deployments on the server."""
    root = tmp_path_factory.mktemp("study-project")
    for package in ("components", "flows", "myelomet"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("dvc.yaml", "prefect.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    env = server | {"PWD": str(root)}
    for cmd in (["git", "init", "-q"], [str(SCRIPTS / "dvc"), "init", "-q"], ["git", "add", "-A"]):
        _ok(cmd, root, env)
    _ok(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root, env)
    _ok([str(SCRIPTS / "prefect"), "work-pool", "create", POOL, "--type", "process"], root, env)
    _ok([str(SCRIPTS / "prefect"), "--no-prompt", "deploy", "--all"], root, env)
    return root


def _run_worker_once(server: dict[str, str], cwd: Path) -> str:
    """One worker poll from a folder outside the project: it runs what is due, then exits."""
    cmd = [str(SCRIPTS / "prefect"), "worker", "start", "--pool", POOL, "--run-once"]
    return _ok(cmd, cwd, server, timeout=900)


def _flow_run_outcome(flow_run_id: UUID) -> tuple[StateType, str, dict[str, str]]:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return run.state.type, run.state.message or "", {a.key: a.data for a in artifacts if a.key}


def _registry(root: Path) -> stages.RegistryState:
    return stages.registry_state(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", MODEL)


@pytest.fixture(scope="module")
def studied(
    server: dict[str, str], project: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StateType, str, dict[str, str]]:
    """The study deployment triggered once and run by a worker: its state, message and
    artifacts. It registers version 1 of the model."""
    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
        flow_run = run_deployment(STUDY, timeout=0)
        _run_worker_once(server, tmp_path_factory.mktemp("worker"))
        return _flow_run_outcome(flow_run.id)


def test_deployments_read_back_and_a_triggered_study_completes_with_artifacts(
    server, project, studied
):
    with (
        temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        nightly = client.read_deployment_by_name(STUDY)
        on_demand = client.read_deployment_by_name(ON_DEMAND)
    (schedule,) = nightly.schedules
    assert schedule.active
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "UTC"
    assert nightly.work_pool_name == on_demand.work_pool_name == POOL
    assert nightly.entrypoint == "flows/study.py:study"
    assert on_demand.schedules == []
    assert {"backbones", "epochs", "preset", "folds"} <= set(
        on_demand.parameter_openapi_schema["properties"]
    )
    assert on_demand.parameters["preset"] == "demo"

    state, message, artifacts = studied
    assert state == StateType.COMPLETED, message
    assert "Data validation passed" in artifacts[ARTIFACT_KEYS["validation"]]
    table2 = artifacts[ARTIFACT_KEYS["table2"]]
    assert "# Table 2" in table2 and "| **MobileNet** |" in table2
    assert (
        "Registered version 1 (MobileNet) as **champion**" in artifacts[ARTIFACT_KEYS["registry"]]
    )
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages.stage_order(project))
    _assert_cross_validated(project)


def _assert_cross_validated(root: Path) -> None:
    """Every patient tested once by a fold that trained without them, Table 2 pooled out of
    fold with its spread, and the fold ensemble registered, carded and served."""
    split = pd.read_csv(root / "data/splits/split.csv", dtype={"image_id": str})
    tested = split[split["split"] == "test"].groupby("patient")["fold"].nunique()
    assert (tested == 1).all() and len(tested) == 12
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    fold_runs = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id], "tags.fold != ''"
    )
    assert sorted(r.data.tags["fold"] for r in fold_runs) == [str(f) for f in range(FOLDS)]
    for run in fold_runs:  # each trained on its own fold's training patients only
        folder = root / "models" / f"fold-{run.data.tags['fold']}"
        own = pd.read_csv(folder / "split.csv")
        assert list(own.columns) == ["image_id", "patient", "label", "split"]
        assert int(run.data.params["n_train"]) == (own["split"] == "train").sum()
        predictions = pd.read_csv(folder / "MobileNet" / "predictions.csv")
        for part in ("val", "test"):
            scored = set(predictions.loc[predictions["split"] == part, "patient"])
            assert scored == set(own.loc[own["split"] == part, "patient"])

    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["cross_validation"]["folds"] == FOLDS
    pooled = metrics["candidates"]["MobileNet"]
    assert pooled["test"]["n_patients"] == pooled["val"]["n_patients"] == 12
    assert f"Cross-validation ({FOLDS} folds)" in (root / "reports/study.html").read_text()

    version = client.get_model_version(MODEL, "1")  # the study's; later tests register more
    members = version.tags["backbones"].split(",")
    assert members == [f"fold-{f}/MobileNet" for f in range(FOLDS)]
    assert f"patient-level {FOLDS}-fold cross-validation" in version.description
    assert "fold ensemble" in version.description
    run = client.get_run(version.run_id)  # the pooled candidate's own run, not a fold's
    assert run.data.tags["myelomet.kind"] == "candidate" and "fold" not in run.data.tags
    assert "test_patient_auc" in run.data.metrics
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(model.unwrap_python_model().predictor.models) == FOLDS
    dicom = next((root / "data/raw/synthetic").rglob("*.dcm"))
    out = model.predict(pd.DataFrame({"path": [str(dicom)]}))
    assert out["error"].isna().all() and 0.0 <= float(out["p_mm"].iloc[0]) <= 1.0


def test_on_demand_training_is_a_dvc_experiment_that_leaves_the_workspace_as_it_was(
    server, project, studied, tmp_path
):
    workspace = stages.snapshot_workspace(project)
    with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
        flow_run = run_deployment(
            ON_DEMAND,
            parameters={"backbones": ["MobileNet"], "epochs": 2, "folds": 0},
            timeout=0,
        )
        _run_worker_once(server, tmp_path)
        state, message, artifacts = _flow_run_outcome(flow_run.id)

    assert state == StateType.COMPLETED, message
    assert "Registered version 2 (MobileNet)" in artifacts[ARTIFACT_KEYS["registry"]]
    assert stages.snapshot_workspace(project) == workspace
    experiments = _ok([str(SCRIPTS / "dvc"), "exp", "list", "--name-only"], project, server)
    assert any(name.startswith("demo-") for name in experiments.split()), experiments


def _blank_one_patient(raw: Path) -> None:
    """Air everywhere in every slice of one patient: no bone, a constant image."""
    patient = sorted(p for p in (raw / "MM").iterdir() if p.is_dir())[0]
    for path in sorted(patient.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        ds.PixelData = np.full_like(pixels, int(pixels.min())).tobytes()
        ds.save_as(path)


def _start_next_scheduled_run(deployment_name: str) -> UUID:
    """The next run the schedule created for the deployment, moved to now."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        for _ in range(60):
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    )
                ),
                sort="EXPECTED_START_TIME_ASC",
            )
            if runs:
                break
            time.sleep(1)
        assert runs, "the server scheduled no run of the nightly deployment"
        client.set_flow_run_state(
            runs[0].id, Scheduled(scheduled_time=datetime.now(UTC)), force=True
        )
        return runs[0].id


def test_invalid_new_data_fails_the_scheduled_run_at_validation_and_registry_unchanged(
    server, project, studied, tmp_path
):
    workspace = stages.snapshot_workspace(project)
    raw = project / "data" / "raw" / "site"
    try:
        shutil.copytree(project / "data" / "raw" / "synthetic", raw)
        _blank_one_patient(raw)
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["data"]["dicom_root"] = "data/raw/site"
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _ok([str(SCRIPTS / "dvc"), "add", "data/raw/site"], project, server)
        before = _registry(project)

        with temporary_settings({PREFECT_API_URL: server["PREFECT_API_URL"]}):
            flow_run_id = _start_next_scheduled_run(STUDY)
            _run_worker_once(server, tmp_path)
            state, message, artifacts = _flow_run_outcome(flow_run_id)

        assert state == StateType.FAILED, message
        assert "stage 'validate' failed" in message
        assert "data validation failed" in message
        note = (project / notify.FAILURE_FILE).read_text()
        assert note.strip() == artifacts[ARTIFACT_KEYS["failure"]].strip()
        assert "stage `validate` failed" in note
        assert "reports/validation/index.html" in note
        assert _registry(project) == before
        assert before.holder("champion") is not None  # the study's champion stays
    finally:  # the data and configuration the other tests run on
        assert stages.restore_workspace(project, workspace, lambda line: None)
        shutil.rmtree(raw, ignore_errors=True)
        (project / "data" / "raw" / "site.dvc").unlink(missing_ok=True)
