import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from components import tracking
from components.config import TrackingConfig
from components.machine import machine_description
from components.training.runtime import framework_requirements
from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[2]
TEXT = {"capture_output": True, "text": True, "check": True, "timeout": 60}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.resolve_store(TrackingConfig(experiment="test"), tmp_path)


def test_relative_sqlite_store_is_made_absolute_under_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tracking.resolve_store(TrackingConfig(), tmp_path)
    assert store.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert store.artifact_location == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert store.experiment == "myelomet"


def test_environment_uri_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    store = tracking.resolve_store(TrackingConfig(), tmp_path)
    assert store.tracking_uri == "http://mlflow.internal:5000"
    assert store.artifact_location is None  # the server decides


def test_a_second_project_in_the_same_process_logs_into_its_own_store(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; were it left set, the next
    # project's resolve_store would take it for the user's choice and log into the first store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tracking.resolve_store(TrackingConfig(experiment="test"), tmp_path / "a")
    tracking.connect(first)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    second = tracking.resolve_store(TrackingConfig(experiment="test"), tmp_path / "b")
    assert second.tracking_uri == f"sqlite:///{tmp_path}/b/mlruns/mlflow.db"


def test_the_users_own_tracking_uri_is_kept_by_connect(tmp_path, monkeypatch):
    users = f"sqlite:///{tmp_path}/shared/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", users)
    tracking.connect(tracking.resolve_store(TrackingConfig(experiment="test"), tmp_path))
    assert os.environ["MLFLOW_TRACKING_URI"] == users


def test_flatten_nested_params():
    assert tracking.flatten({"a": 1, "b": {"c": [1, 2], "d": {"e": None}}}) == {
        "a": "1",
        "b.c": "[1, 2]",
        "b.d.e": "None",
    }


def test_git_commit_outside_a_repository_is_none(tmp_path):
    assert tracking.git_commit(tmp_path) is None


def test_git_commit_is_dirty_for_code_but_not_for_dvc_lock(tmp_path):
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "train.py").write_text("EPOCHS = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # what dvc repro does
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "train.py").write_text("EPOCHS = 2\n")
    assert tracking.git_commit(tmp_path) == f"{head}-dirty"


def test_study_with_a_backbone_child_run(store, tmp_path):
    parent = tracking.start_study(store, "study-1", params={"training": {"epochs": 2}})
    with tracking.backbone_run(store, "VGG16", parent_run_id=parent, system_metrics=False) as run:
        run.log_params({"training": {"batch_size": 16}})
        run.set_tags({"weights": "random"})
        callback = run.epoch_callback()
        for epoch in range(2):
            callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_auc": float("nan")})
    client = MlflowClient(store.tracking_uri)
    child = client.get_run(run.run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags[tracking.BACKBONE_TAG] == "VGG16"
    assert child.data.tags[tracking.PARENT_TAG] == parent
    assert child.data.params["training.batch_size"] == "16"
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [1, 2]
    assert "val_auc" not in child.data.metrics  # NaN is not logged
    assert client.get_run(parent).info.status == "RUNNING"
    assert client.get_run(parent).data.params["training.epochs"] == "2"
    machine = machine_description()
    for run_id in (parent, run.run_id):  # the numbers depend on the machine: both name it
        tags = client.get_run(run_id).data.tags
        assert tags["machine.cpu"] == machine["cpu"]
        assert tags["machine.numpy"] == machine["libraries"]["numpy"] == np.__version__
        assert tags["machine.tensorflow"] == machine["libraries"]["tensorflow"]
        assert tags["machine.cpu_flags"] == (" ".join(machine["cpu_flags"]) or "none")
    experiment = client.get_experiment(child.info.experiment_id)
    assert experiment.artifact_location == store.artifact_location
    tracking.tag_run(store, parent, {"failed_backbones": ""})
    report = tmp_path / "study.html"
    report.write_text("<html></html>")
    tracking.log_study_outputs(store, parent, [report], {"test_auc": 0.9, "bad": float("nan")})
    tracking.end_study(store, parent)
    finished = client.get_run(parent)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["failed_backbones"] == ""
    assert finished.data.metrics == {"test_auc": 0.9}
    assert [a.path for a in client.list_artifacts(parent, "study")] == ["study/study.html"]


KILLED_STUDY = """
import os, signal, sys
from components import tracking
from components.config import TrackingConfig
from components.training.runtime import framework_requirements
store = tracking.resolve_store(TrackingConfig(experiment="test"), sys.argv[1])
parent = tracking.start_study(store, "killed")
run = tracking.backbone_run(store, "VGG16", parent_run_id=parent, system_metrics=False)
run.__enter__()
print(parent, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_study_whose_process_was_killed_is_closed_by_the_next_one(store, tmp_path):
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_STUDY, str(tmp_path)],
        capture_output=True,
        text=True,
        env=project_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    dead = killed.stdout.split()[-1]
    client = MlflowClient(store.tracking_uri)
    assert client.get_run(dead).info.status == "RUNNING"

    live = tracking.start_study(store, "live")
    elsewhere = tracking.start_study(store, "elsewhere", owner="other-host:1:1")
    tracking.start_study(store, "next")

    assert client.get_run(dead).info.status == "KILLED"
    child = client.search_runs(
        [client.get_run(dead).info.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{dead}'"
    )
    assert [c.info.status for c in child] == ["KILLED"]
    assert client.get_run(live).info.status == client.get_run(elsewhere).info.status == "RUNNING"


def test_a_process_identity_survives_pid_reuse():
    me = tracking.process_identity()
    host, pid, start = me.rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert not tracking._is_gone(me)
    assert tracking._is_gone(f"{host}:{pid}:{float(start) - 60:.2f}")  # same pid, other process
    assert not tracking._is_gone(f"{host}:{pid}:")  # no start recorded: the pid is alive
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **TEXT)
    assert tracking._is_gone(f"{host}:{ended.stdout.strip()}:")
    assert not tracking._is_gone(f"other-{host}:{pid}:{start}")  # another machine: unknown


def test_a_run_can_be_reopened_and_fails_on_error(store):
    with tracking.backbone_run(store, "MobileNet", system_metrics=False) as run:
        run.status = "KILLED"
        run.log_metrics({"loss": 0.9}, step=1)
    client = MlflowClient(store.tracking_uri)
    assert client.get_run(run.run_id).info.status == "KILLED"
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.backbone_run(store, "MobileNet", run_id=run.run_id, system_metrics=False) as again,
    ):
        again.log_metrics({"loss": 0.8}, step=2)
        raise RuntimeError("boom")
    assert again.run_id == run.run_id
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [0.9, 0.8]


def test_keras_model_is_logged_with_a_signature_and_loads(store):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with tracking.backbone_run(store, "Tiny", system_metrics=False) as run:
        uri = run.log_model(model, x, model.predict(x, verbose=0), framework_requirements())
    info = mlflow.models.get_model_info(uri)
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 4)
    loaded = mlflow.keras.load_model(uri)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_deleted_experiment_is_a_clear_error(store):
    experiment_id = tracking.connect(store)
    MlflowClient(store.tracking_uri).delete_experiment(experiment_id)
    with pytest.raises(ValueError, match="is deleted"):
        tracking.connect(store)


def test_artifacts_are_logged(store, tmp_path):
    path = Path(tmp_path / "metrics.json")
    path.write_text("{}")
    with tracking.backbone_run(store, "Fig", system_metrics=False) as run:
        run.log_artifact(path)
    names = {a.path for a in MlflowClient(store.tracking_uri).list_artifacts(run.run_id)}
    assert names == {"metrics.json"}


def test_a_missing_or_other_store_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tracking.resolve_store(TrackingConfig(experiment="t"), tmp_path / "project")
    run_id = tracking.start_study(store, "study")
    tracking.end_study(store, run_id, "FINISHED")
    tracking.require_run(store, run_id)  # the store training used: fine

    with pytest.raises(tracking.StoreMismatch, match="MLFLOW_TRACKING_URI"):
        tracking.require_run(store, "0" * 32)  # another study's run
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it
    moved = tracking.resolve_store(TrackingConfig(experiment="t"), tmp_path / "elsewhere")
    with pytest.raises(tracking.StoreMismatch, match="nothing was registered"):
        tracking.require_run(moved, run_id)
    assert not (tmp_path / "elsewhere").exists()  # no new, empty store was created
