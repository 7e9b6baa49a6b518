"""The group's MLflow server refuses what it should, in one line, and nothing is half-written:
no credentials or wrong ones (401) and a read-only user opening a run (403), through
`components.tracking` and through `myelomet train` as a researcher runs it; and experiments
made against it keep their artifacts behind the server's proxy, not in a local folder."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from components import tracking
from components.config import TrackingConfig
from components.tracking_server import TrackingServerError
from myelomet.group_server import GroupServer
from tests.group.group_project import error_line, myelomet, server_env, write_group_project
from tests.group_services import unique_name

pytestmark = [pytest.mark.group, pytest.mark.slow]


def _store(experiment: str, server: GroupServer) -> tracking.Store:
    return tracking.Store(server.uri, None, experiment)


def _runs(server: GroupServer, experiment: str) -> list:
    client = MlflowClient(server.uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.fixture
def as_admin(group_mlflow_server: GroupServer, monkeypatch: pytest.MonkeyPatch) -> GroupServer:
    for key, value in group_mlflow_server.env().items():
        monkeypatch.setenv(key, value)
    return group_mlflow_server


def test_an_experiment_keeps_its_artifacts_behind_the_servers_proxy(as_admin, tmp_path):
    experiment = unique_name("proxied")
    store = tracking.resolve_store(TrackingConfig(experiment=experiment), tmp_path / "checkout")

    experiment_id = tracking.connect(store)

    assert store.artifact_location is None
    location = MlflowClient(as_admin.uri).get_experiment(experiment_id).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    assert not (tmp_path / "checkout").exists()


@pytest.mark.parametrize("password", [None, "not-the-password"])
def test_wrong_credentials_say_so_in_one_line_and_open_nothing(as_admin, monkeypatch, password):
    experiment = unique_name("refused")
    store = _store(experiment, as_admin)
    if password is None:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    with pytest.raises(TrackingServerError) as refused:
        tracking.start_study(store, "study")

    message = str(refused.value)
    assert "\n" not in message and "(401)" in message, message
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message
    if password is not None:
        assert "user 'admin'" in message
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", as_admin.admin_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", as_admin.admin_password)
    assert MlflowClient(as_admin.uri).get_experiment_by_name(experiment) is None


def test_a_read_only_user_opening_a_study_gets_403_and_no_run(as_admin, monkeypatch):
    experiment = unique_name("read-only")
    store = _store(experiment, as_admin)
    tracking.connect(store)
    reader, password = unique_name("reader"), unique_name("password")
    as_admin.create_user(reader, password, permission="READ")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", reader)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    with pytest.raises(TrackingServerError) as denied:
        tracking.start_study(store, "study")

    message = str(denied.value)
    assert "\n" not in message and "(403)" in message and repr(reader) in message, message
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", as_admin.admin_user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", as_admin.admin_password)
    assert _runs(as_admin, experiment) == []


def test_myelomet_train_with_a_wrong_password_fails_in_one_line_writing_nothing(as_admin, tmp_path):
    experiment = unique_name("train-refused")
    root = write_group_project(tmp_path / "p", experiment, unique_name("model"))
    env = server_env(as_admin.env(password="not-the-password"))

    done = myelomet(["train"], root, env)

    assert done.returncode != 0
    line = error_line(done, "train")
    assert line.startswith("myelomet train: error: MLflow server"), done.stderr[-3000:]
    assert "\n" not in line and "refused the credentials of user 'admin' (401)" in line
    assert not (root / "models").exists()
    assert MlflowClient(as_admin.uri).get_experiment_by_name(experiment) is None


def test_a_member_of_the_group_opens_a_study_in_the_shared_experiment(as_admin, monkeypatch):
    experiment = unique_name("shared")
    store = _store(experiment, as_admin)
    tracking.connect(store)  # created by the admin
    member, password = unique_name("member"), unique_name("password")
    as_admin.create_user(member, password)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", member)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    run_id = tracking.start_study(store, "study")
    tracking.end_study(store, run_id)

    [run] = _runs(as_admin, experiment)
    assert (run.info.run_id, run.info.status) == (run_id, "FINISHED")


def test_myelomet_predict_with_a_wrong_password_fails_in_one_line(as_admin, tmp_path):
    root = write_group_project(tmp_path / "p", unique_name("predict"), "myelomet")
    env = server_env(as_admin.env(user="nobody-here"))

    done = myelomet(["predict", "--model", "models:/myelomet@champion", "x.dcm"], root, env)

    assert done.returncode == 2 and done.stdout == ""
    line = error_line(done, "predict")
    assert "\n" not in line, done.stderr[-3000:]
    assert "refused the credentials of user 'nobody-here' (401)" in line, done.stderr[-3000:]
