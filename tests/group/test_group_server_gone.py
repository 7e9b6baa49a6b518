"""The group's MLflow server goes away in the middle of a study: `myelomet train` fails with
one line saying the server did not answer, and once the server is back, the next
`myelomet train` closes the study the first one left RUNNING (its owner is gone) and its
backbone's run, and finishes. The server here is the test's own (on a new database of the
session's PostgreSQL, restarted on the same port), since stopping the shared one would stop
the other tests'."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components import tracking
from myelomet.group_server import running_mlflow_server
from tests.group.group_project import error_line, myelomet, server_env, write_group_project
from tests.group_services import unique_name
from tests.processes import free_port, stop
from tests.project_factory import update_params

pytestmark = [
    pytest.mark.group,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

BACKBONE = "MobileNet"
APPEAR_TIMEOUT_S = 600


def _runs(client: MlflowClient, experiment: str, kind: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{tracking.KIND_TAG}` = '{kind}'"
    )


def _await_running_backbone(
    client: MlflowClient, experiment: str, train: subprocess.Popen, logs: Path
) -> None:
    deadline = time.monotonic() + APPEAR_TIMEOUT_S
    while time.monotonic() < deadline:
        assert train.poll() is None, (logs / "train.err").read_text()[-3000:]
        if any(r.info.status == "RUNNING" for r in _runs(client, experiment, "backbone")):
            return
        time.sleep(0.5)
    pytest.fail(f"no backbone run started in {APPEAR_TIMEOUT_S} s")


def test_a_study_whose_server_goes_away_fails_in_one_line_and_the_next_closes_it(
    postgres_server, tmp_path, monkeypatch
):
    experiment = unique_name("server-gone")
    root = write_group_project(
        tmp_path / "p", experiment, unique_name("model"), backbones=(BACKBONE,), epochs=100
    )
    update_params(root, "training", patience=100)
    database = postgres_server.new_database(unique_name("gone").replace("-", "_"))
    port = free_port()
    with running_mlflow_server(database, port) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        # fail at the first request the server does not answer, not after MLflow's retries
        env = server_env(server.env(), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
        with (tmp_path / "train.out").open("w") as out, (tmp_path / "train.err").open("w") as err:
            train = subprocess.Popen(
                ["myelomet", "train"],
                cwd=root,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            _await_running_backbone(MlflowClient(server.uri), experiment, train, tmp_path)
        except BaseException:
            stop(train)
            raise
    train.wait(timeout=600)
    stderr = (tmp_path / "train.err").read_text()
    done = subprocess.CompletedProcess(train.args, train.returncode, "", stderr)

    assert done.returncode != 0
    line = error_line(done, "train")
    assert "\n" not in line and f"MLflow server {server.uri} did not answer" in line, stderr[-4000:]

    update_params(root, "training", epochs=2)
    with running_mlflow_server(database, port) as again:
        for key, value in again.env().items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(again.uri)
        [stale] = _runs(client, experiment, "study")
        assert stale.info.status == "RUNNING"

        rerun = myelomet(["train"], root, server_env(again.env()))

        assert rerun.returncode == 0, rerun.stderr[-4000:]
        closed = client.get_run(stale.info.run_id)
        assert closed.info.status == "KILLED"
        assert closed.data.tags["myelomet.closed_by"] == "next study start"
        children = [
            r
            for r in _runs(client, experiment, "backbone")
            if r.data.tags.get(tracking.PARENT_TAG) == stale.info.run_id
        ]
        assert children and all(r.info.status in ("KILLED", "FAILED") for r in children)
        studies = _runs(client, experiment, "study")
        assert sorted(r.info.status for r in studies) == ["FINISHED", "KILLED"]
