"""The `train` flow for real: the configured backbones (two here; each of the seven trains
into MLflow in tests/components/training/test_worker.py), each in its own process, one
MLflow parent run with a child per backbone; a failing backbone leaves the others done and
is reported; the same fan-out on a local Ray cluster.

The shared trained project (tests/flows/conftest.py) is read as trained; the tests that
train again work on a copy of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact
from prefect.task_runners import ThreadPoolTaskRunner

from components import tracking
from components.artifacts import STUDY_FILE
from components.config import load_config
from flows.train import ARTIFACT_KEY, train
from tests.flows.trained_project import TRAINED_BACKBONES, TrainedProject
from tests.project_factory import copy_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _no_ambient_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def copy(trained_project: TrainedProject, tmp_path: Path) -> Path:
    """A copy of the trained project, for a test that trains again."""
    return copy_project(trained_project.root, tmp_path / "project")


def _client(project: Path) -> MlflowClient:
    cfg = load_config(project / "params.yaml")
    return MlflowClient(tracking.resolve_store(cfg.tracking, project).tracking_uri)


def _children(project: Path, parent: str) -> dict[str, str]:
    cfg = load_config(project / "params.yaml")
    store = tracking.resolve_store(cfg.tracking, project)
    client = MlflowClient(store.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(store.experiment).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    return {r.data.tags["backbone"]: r.info.status for r in runs if "backbone" in r.data.tags}


def test_every_configured_backbone_trains_in_its_own_process_under_one_parent(trained_project):
    project, outcome = trained_project.root, trained_project.outcome
    assert sorted(outcome["results"]) == sorted(TRAINED_BACKBONES)
    assert {r["status"] for r in outcome["results"].values()} == {"trained"}
    parent = json.loads((project / "models" / STUDY_FILE).read_text())["parent_run_id"]
    assert parent == outcome["parent_run_id"]
    assert _children(project, parent) == dict.fromkeys(TRAINED_BACKBONES, "FINISHED")
    for name in TRAINED_BACKBONES:
        assert (project / "models" / name / "model.keras").is_file()
    summary = json.loads((project / "reports" / "train.json").read_text())
    assert set(summary) == set(TRAINED_BACKBONES)
    assert "| MobileNet | trained |" in trained_project.summary_markdown
    for name in TRAINED_BACKBONES:  # each task's progress artifact, updated by its process
        progress = trained_project.progress[name]
        assert progress.type == "progress" and float(progress.data) == 100.0
        assert progress.description == f"{name}: trained"


def test_a_failing_backbone_is_reported_and_the_others_finish(copy):
    broken = copy / "models" / "MobileNetV2"
    shutil.rmtree(broken)
    broken.write_text("not a folder: training cannot write here")
    flow = train.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    outcome = flow(str(copy / "params.yaml"), ["MobileNet", "MobileNetV2"])
    assert sorted(outcome["results"]) == ["MobileNet"]
    assert {r["status"] for r in outcome["results"].values()} == {"skipped"}
    assert list(outcome["failures"]) == ["MobileNetV2"]
    assert "MobileNetV2" in outcome["failures"]["MobileNetV2"]
    client = _client(copy)
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.data.tags["failed_backbones"] == "MobileNetV2"
    datasets = {d.dataset.name: d.dataset.digest for d in parent.inputs.dataset_inputs}
    assert set(datasets) == {"manifest", "split"}  # the runs table's Dataset column
    assert len(set(datasets.values())) == 1  # the data version
    assert parent.data.tags["reused_backbones"] == "MobileNet"
    trained_by = parent.data.tags["reused.MobileNet.run_id"]
    assert client.get_run(trained_by).data.tags["backbone"] == "MobileNet"
    assert parent.info.status == "FAILED"
    assert "**failed**" in Artifact.get(ARTIFACT_KEY).data


def test_the_same_fan_out_runs_on_a_local_ray_cluster(copy):
    from prefect_ray import RayTaskRunner

    shutil.rmtree(copy / "models" / "MobileNet")  # so that Ray's task has to train it
    runner = RayTaskRunner(
        init_kwargs={"num_cpus": 2, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    )
    outcome = train.with_options(task_runner=runner)(str(copy / "params.yaml"), ["MobileNet"])
    assert outcome["failures"] == {}
    result = outcome["results"]["MobileNet"]
    assert (result["backbone"], result["status"]) == ("MobileNet", "trained")
    assert _children(copy, outcome["parent_run_id"]) == {"MobileNet": "FINISHED"}
    assert (copy / "models" / "MobileNet" / "model.keras").is_file()
