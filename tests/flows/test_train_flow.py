"""The `train` flow for real: the configured backbones (two here; each of the seven trains
into MLflow in tests/components/training/test_worker.py), each in its own process, one
MLflow parent run with a child per backbone; a failing backbone leaves the others done and
is reported; the same fan-out on a local Ray cluster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact
from prefect.task_runners import ThreadPoolTaskRunner

from components import tracking
from components.artifacts import STUDY_FILE
from components.config import load_config
from flows.train import ARTIFACT_KEY, train
from tests.components.training.test_worker import _write_tiny_project

BACKBONES = ("VGG16", "MobileNet")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-flow")
    _write_tiny_project(root, patients_per_class=5, slices=2)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["training"].update(retries=1, max_parallel=2, backbones=list(BACKBONES))
    params["evaluation"] = {"reports_out": "reports"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@pytest.fixture(scope="module", autouse=True)
def _no_ambient_tracking_uri():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


def _children(project: Path, parent: str) -> dict[str, str]:
    cfg = load_config(project / "params.yaml")
    store = tracking.resolve_store(cfg.tracking, project)
    client = MlflowClient(store.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(store.experiment).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    return {r.data.tags["backbone"]: r.info.status for r in runs if "backbone" in r.data.tags}


def test_every_configured_backbone_trains_in_its_own_process_under_one_parent(project):
    flow = train.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    outcome = flow(str(project / "params.yaml"))
    assert outcome["failures"] == {}
    assert sorted(outcome["results"]) == sorted(BACKBONES)
    assert {r["status"] for r in outcome["results"].values()} == {"trained"}
    parent = json.loads((project / "models" / STUDY_FILE).read_text())["parent_run_id"]
    assert parent == outcome["parent_run_id"]
    assert _children(project, parent) == dict.fromkeys(BACKBONES, "FINISHED")
    for name in BACKBONES:
        assert (project / "models" / name / "model.keras").is_file()
    summary = json.loads((project / "reports" / "train.json").read_text())
    assert set(summary) == set(BACKBONES)
    assert "| VGG16 | trained |" in Artifact.get(ARTIFACT_KEY).data
    for name in BACKBONES:  # each task's progress artifact, updated by its process
        progress = Artifact.get(f"train-{name.lower()}")
        assert progress.type == "progress" and float(progress.data) == 100.0
        assert progress.description == f"{name}: trained"


def test_a_failing_backbone_is_reported_and_the_others_finish(project):
    broken = project / "models" / "VGG16"
    shutil.rmtree(broken)
    broken.write_text("not a folder: training cannot write here")
    flow = train.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    outcome = flow(str(project / "params.yaml"), ["MobileNet", "VGG16"])
    assert sorted(outcome["results"]) == ["MobileNet"]
    assert {r["status"] for r in outcome["results"].values()} == {"skipped"}
    assert list(outcome["failures"]) == ["VGG16"]
    assert "VGG16" in outcome["failures"]["VGG16"]
    cfg = load_config(project / "params.yaml")
    client = MlflowClient(tracking.resolve_store(cfg.tracking, project).tracking_uri)
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.data.tags["failed_backbones"] == "VGG16"
    datasets = {d.dataset.name: d.dataset.digest for d in parent.inputs.dataset_inputs}
    assert set(datasets) == {"manifest", "split"}  # the runs table's Dataset column
    assert len(set(datasets.values())) == 1  # the data version
    assert parent.data.tags["reused_backbones"] == "MobileNet"
    trained_by = parent.data.tags["reused.MobileNet.run_id"]
    assert client.get_run(trained_by).data.tags["backbone"] == "MobileNet"
    assert parent.info.status == "FAILED"
    assert "**failed**" in Artifact.get(ARTIFACT_KEY).data
    broken.unlink()


def test_the_same_fan_out_runs_on_a_local_ray_cluster(project):
    from prefect_ray import RayTaskRunner

    runner = RayTaskRunner(
        init_kwargs={"num_cpus": 2, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    )
    outcome = train.with_options(task_runner=runner)(str(project / "params.yaml"), ["MobileNet"])
    assert outcome["failures"] == {}
    assert outcome["results"]["MobileNet"]["backbone"] == "MobileNet"
    assert _children(project, outcome["parent_run_id"]) == {}
