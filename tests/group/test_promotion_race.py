"""Two researchers' evaluates promote at once through the group's MLflow server (PostgreSQL,
basic auth), each held at a barrier just before its claim on the promotion ledger: one
champion, the other version a challenger naming it. The same race without the claim's guard
ends with the later writer overwriting the champion, so the first test fails without it.
The fixtures come from tests/group/conftest.py (tests.group_services)."""

from __future__ import annotations

import secrets

import pytest

from components import registered_models, tracking
from myelomet.group_server import GroupServer
from tests.components.registry.test_promotion_cas import (
    check_one_champion,
    race,
    racer_env,
    stub_model,
)
from tests.group_services import unique_name

pytestmark = [pytest.mark.group, pytest.mark.slow]


def _researchers(server: GroupServer) -> list[dict[str, str]]:
    """Two members of the group who may edit (the server's default), each's client settings."""
    envs = []
    for _ in range(2):
        user, password = unique_name("researcher"), secrets.token_urlsafe(16)
        server.create_user(user, password)
        envs.append(racer_env(server.env(user, password)))
    return envs


@pytest.fixture
def store(group_mlflow_server: GroupServer, monkeypatch: pytest.MonkeyPatch) -> tracking.Store:
    for key, value in group_mlflow_server.env().items():
        monkeypatch.setenv(key, value)
    return tracking.Store(group_mlflow_server.uri, None, unique_name("promotion-race"))


def test_two_evaluates_through_the_server_leave_one_champion(group_mlflow_server, store, tmp_path):
    name = unique_name("race")
    model_uri = stub_model(store)
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    outcomes = race(store, name, model_uri, barrier, _researchers(group_mlflow_server))

    check_one_champion(store.tracking_uri, name, outcomes)
    head = registered_models.ledger_head(store, registered_models.promotion_ledger(store, name))
    winner = next(o["version"] for o in outcomes if o["alias"] == "champion")
    assert (head.generation, head.entry) == (1, f"{winner} replaces none")


def test_without_the_guard_the_server_keeps_the_later_writers_champion(
    group_mlflow_server, store, tmp_path
):
    name = unique_name("unguarded")
    model_uri = stub_model(store)
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    outcomes = race(
        store, name, model_uri, barrier, _researchers(group_mlflow_server), guarded=False
    )

    assert [o["alias"] for o in outcomes] == ["champion", "champion"]
    with pytest.raises(AssertionError):
        check_one_champion(store.tracking_uri, name, outcomes)
