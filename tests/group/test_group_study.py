"""A study against the group's MLflow server (PostgreSQL, basic auth, proxied artifacts),
run as a researcher runs it: `myelomet train` and `myelomet evaluate` in a tiny project with
only MLFLOW_TRACKING_URI/USERNAME/PASSWORD set. The champion is registered on the server,
a search of the runs ranks the candidates there, and a second checkout that never trained
predicts with `models:/<model>@champion` and serves it with `mlflow models serve`. Then the
server's database is read directly: no text column holds the path of either checkout.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests
from mlflow.tracking import MlflowClient

from components import tracking
from myelomet.group_server import GroupServer
from tests.dicom_factory import write_ct_files
from tests.group.group_project import BACKBONES, myelomet, server_env, write_group_project
from tests.group_services import unique_name
from tests.serving_server import mlflow_model_server

pytestmark = [
    pytest.mark.group,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@dataclass(frozen=True)
class Study:
    """The first checkout after `train` and `evaluate` against the server."""

    root: Path
    experiment: str
    model: str
    env: dict[str, str]
    outcome: dict


@dataclass(frozen=True)
class SecondCheckout:
    """A checkout of the same project that never trained, and what it got from the server."""

    root: Path
    predictions: list[dict]
    served: list[dict]


@pytest.fixture(scope="module")
def as_admin(group_mlflow_server: GroupServer) -> GroupServer:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in group_mlflow_server.env().items():
            mp.setenv(key, value)
        yield group_mlflow_server


@pytest.fixture(scope="module")
def study(as_admin: GroupServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    experiment, model = unique_name("group-study"), unique_name("myelomet")
    root = write_group_project(tmp_path_factory.mktemp("first") / "myelomet", experiment, model)
    env = server_env(as_admin.env())
    for command in ("train", "evaluate"):
        done = myelomet([command], root, env)
        assert done.returncode == 0, f"myelomet {command}:\n{done.stderr[-4000:]}"
    outcome = json.loads((root / "reports" / "metrics.json").read_text())
    return Study(root, experiment, model, env, outcome)


@pytest.fixture(scope="module")
def second(study: Study, tmp_path_factory: pytest.TempPathFactory) -> SecondCheckout:
    """The project's source without anything training wrote, predicting and serving."""
    root = tmp_path_factory.mktemp("second") / "myelomet"
    shutil.copytree(
        study.root, root, ignore=shutil.ignore_patterns("models", "mlruns", "reports", "data")
    )
    dicoms = write_ct_files(root / "scans", 2)
    champion = f"models:/{study.model}@champion"
    done = myelomet(["predict", "--model", champion, *map(str, dicoms)], root, study.env)
    assert done.returncode == 0, done.stderr[-4000:]
    predictions = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    data = [[base64.b64encode(p.read_bytes()).decode(), p.name] for p in dicoms]
    body = {"dataframe_split": {"columns": ["dicom", "name"], "data": data}}
    with mlflow_model_server(champion, study.env, cwd=root) as url:
        reply = requests.post(f"{url}/invocations", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return SecondCheckout(root, predictions, reply.json()["predictions"])


def test_the_study_registers_a_champion_on_the_server(as_admin, study):
    client = MlflowClient(as_admin.uri)
    champion = client.get_registered_model(study.model).aliases["champion"]
    version = client.get_model_version(study.model, str(champion))
    assert version.tags["promotion.decision"] == "champion"
    assert version.tags["candidate"] == study.outcome["selection"]["selected"]
    assert version.source.startswith("models:/") or "mlflow-artifacts:" in version.source


def test_search_runs_through_the_server_ranks_the_candidates(as_admin, study):
    parent = json.loads((study.root / "models" / "study.json").read_text())["parent_run_id"]

    # A client of the server's, not mlflow.search_runs: that asks MLflow's global tracking
    # URI, which a test run before in this process may have set to its own store.
    client = MlflowClient(as_admin.uri)
    experiment = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent}' "
        "and metrics.test_patient_auc >= 0",
        order_by=["metrics.test_patient_auc DESC"],
    )

    assert sorted(r.data.tags[tracking.BACKBONE_TAG] for r in runs) == sorted(
        (*BACKBONES, "ensemble")
    )
    aucs = [r.data.metrics["test_patient_auc"] for r in runs]
    assert aucs == sorted(aucs, reverse=True)


def test_a_checkout_that_never_trained_predicts_with_the_champion(second):
    assert len(second.predictions) == 2
    assert all(p.get("error") is None and 0 <= p["p_mm"] <= 1 for p in second.predictions)
    assert not (second.root / "mlruns").exists() and not (second.root / "models").exists()


def test_mlflow_models_serve_answers_with_the_champion_from_that_checkout(second):
    by_file = {Path(p["file"]).name: p["p_mm"] for p in second.predictions}
    assert len(second.served) == 2
    for row in second.served:
        assert row["error"] is None
        assert row["p_mm"] == pytest.approx(by_file[row["file"]], rel=1e-4)


def test_the_servers_database_holds_no_path_of_either_checkout(as_admin, study, second):
    checkouts = {str(study.root), str(second.root), str(study.root.resolve())}
    found = []
    with psycopg.connect(as_admin.conninfo) as db:
        columns = db.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('text', 'character varying')"
        ).fetchall()
        assert len(columns) > 20  # the runs, the registry and the logged models
        for table, column in columns:
            for checkout in checkouts:
                hits = db.execute(
                    f'SELECT "{column}" FROM "{table}" WHERE strpos("{column}", %s) > 0',
                    (checkout,),
                ).fetchall()
                found += [f"{table}.{column}: {row[0][:200]}" for row in hits]
    assert found == []
    assert any(as_admin.artifacts.rglob("MLmodel"))  # the artifacts went through the proxy
