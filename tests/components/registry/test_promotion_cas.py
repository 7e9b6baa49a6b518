"""The promotion gate's compare-and-set: two promotions held at a barrier just before their
claim on the ledger leave one champion, and the same race without the claim's guard ends
with the later writer overwriting the champion (so the first test fails if the guard goes).
The registered "model" is a run folder holding an MLmodel file: nothing here loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components import registered_models, tracking
from components.config import TrackingConfig
from components.registry import promotion
from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[3]
TAGS = {"candidate": "stub", "data_version": "dv1"}
RACE_TIMEOUT_S = 300

# One promotion, held just before its first claim until every racer has decided. Unguarded,
# the claim is replaced by what a promotion without it does: set the alias, and go on as won.
_PROMOTE_AT_BARRIER = """
import dataclasses, json, os, sys, time
from pathlib import Path
from components.registered_models import set_alias
from components.registry import promotion
from components.tracking import Store
job = json.loads(sys.argv[1])
barrier = Path(job["barrier"])
claim = promotion.claim_generation
waiting = [True]
def claim_at_barrier(*args):
    if waiting:
        waiting.clear()
        Path(barrier, f"decided-{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < job["racers"]:
            if time.monotonic() > deadline:
                sys.exit("the other racer never reached the barrier")
            time.sleep(0.01)
    if job["guarded"]:
        return claim(*args)
    store, _, _, entry = args
    set_alias(store, job["name"], "champion", entry.split()[0])
    return True
promotion.claim_generation = claim_at_barrier
store = Store(job["uri"], job["artifacts"], job["experiment"])
outcome = promotion.register_and_promote(
    store, job["model_uri"], job["name"], job["tags"], "patient_auc", job["value"], None, 0.0
)
print(json.dumps(dataclasses.asdict(outcome)))
"""


def stub_model(store: tracking.Store) -> str:
    """A model URI the registry accepts: a run's `model` folder with an MLmodel file."""
    client = MlflowClient(store.tracking_uri)
    run = client.create_run(tracking.connect(store))
    client.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/model"


def race(
    store: tracking.Store,
    name: str,
    model_uri: str,
    barrier: Path,
    envs: Sequence[Mapping[str, str]],
    guarded: bool = True,
) -> list[dict]:
    """Promote `model_uri` as `name` with patient AUC 0.9 from one process per environment,
    all held at `barrier` (an empty folder) just before their first claim.

    Returns:
        Each process's RegistryOutcome as a dict.
    """
    job = {
        "uri": store.tracking_uri,
        "artifacts": store.artifact_location,
        "experiment": store.experiment,
        "model_uri": model_uri,
        "name": name,
        "tags": TAGS,
        "value": 0.9,
        "barrier": str(barrier),
        "racers": len(envs),
        "guarded": guarded,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROMOTE_AT_BARRIER, json.dumps(job)],
            env=dict(env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    outputs = [p.communicate(timeout=RACE_TIMEOUT_S) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outputs]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def racer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A racer's environment: this project on PYTHONPATH, none of the caller's MLflow
    settings, `extra` on top."""
    return project_env({"PYTHONPATH": str(ROOT), **(extra or {})}, drop_prefixes=("MLFLOW_",))


def check_one_champion(tracking_uri: str, name: str, outcomes: Sequence[dict]) -> None:
    """Exactly one racer is champion and holds the alias; the other is challenger, tagged
    with a reason naming the champion it lost to."""
    client = MlflowClient(tracking_uri)
    assert sorted(o["alias"] for o in outcomes) == ["challenger", "champion"], outcomes
    winner = next(o for o in outcomes if o["alias"] == "champion")
    loser = next(o for o in outcomes if o["alias"] == "challenger")
    aliases = client.get_registered_model(name).aliases
    assert {a: str(v) for a, v in aliases.items()} == {
        "champion": winner["version"],
        "challenger": loser["version"],
    }
    assert loser["previous_version"] == winner["version"]
    tags = client.get_model_version(name, loser["version"]).tags
    assert tags["promotion.decision"] == "challenger"
    assert tags["promotion.champion_version"] == winner["version"]
    assert f"version {winner['version']} became champion while" in tags["promotion.reason"]
    assert f"does not beat champion v{winner['version']}'s" in tags["promotion.reason"]
    decisions = [
        client.get_model_version(name, o["version"]).tags["promotion.decision"] for o in outcomes
    ]
    assert sorted(decisions) == ["challenger", "champion"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.resolve_store(TrackingConfig(experiment="cas-test"), tmp_path)


def _promote(store, model_uri, name, value):
    return promotion.register_and_promote(
        store, model_uri, name, TAGS, "patient_auc", value, None, 0.0
    )


@pytest.mark.slow  # two processes that each import MLflow: about 20 s on 2 cores
def test_two_promotions_held_before_their_claim_leave_one_champion(store, tmp_path):
    model_uri = stub_model(store)
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    outcomes = race(store, "race", model_uri, barrier, [racer_env(), racer_env()])

    assert all(o["previous_version"] != "none" for o in outcomes)
    check_one_champion(store.tracking_uri, "race", outcomes)
    ledger = registered_models.promotion_ledger(store, "race")
    head = registered_models.ledger_head(store, ledger)
    winner = next(o["version"] for o in outcomes if o["alias"] == "champion")
    assert (head.generation, head.version, head.entry) == (1, winner, f"{winner} replaces none")


@pytest.mark.slow  # two processes that each import MLflow: about 20 s on 2 cores
def test_without_the_guard_the_later_writer_overwrites_the_champion(store, tmp_path):
    model_uri = stub_model(store)
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    outcomes = race(
        store, "unguarded", model_uri, barrier, [racer_env(), racer_env()], guarded=False
    )

    # Both decided against no champion and both believe they won: the alias holds only the
    # later write, and the other version is tagged champion without being it.
    assert [o["alias"] for o in outcomes] == ["champion", "champion"]
    with pytest.raises(AssertionError):
        check_one_champion(store.tracking_uri, "unguarded", outcomes)
    client = MlflowClient(store.tracking_uri)
    holder = str(client.get_registered_model("unguarded").aliases["champion"])
    overwritten = next(o["version"] for o in outcomes if o["version"] != holder)
    assert client.get_model_version("unguarded", overwritten).tags["promotion.decision"] == (
        "champion"
    )


@pytest.mark.parametrize(("value", "alias"), [(0.85, "challenger"), (0.95, "champion")])
def test_a_champion_promoted_between_decision_and_claim_is_decided_against_again(
    store, monkeypatch, value, alias
):
    model_uri = stub_model(store)
    claim = promotion.claim_generation
    other = []

    def someone_else_first(*args):
        if not other:  # another evaluate promotes 0.9 after this one decided, before its claim
            monkeypatch.setattr(promotion, "claim_generation", claim)
            other.append(_promote(store, model_uri, "redecide", 0.9))
        return claim(*args)

    monkeypatch.setattr(promotion, "claim_generation", someone_else_first)
    outcome = _promote(store, model_uri, "redecide", value)

    assert (other[0].version, other[0].alias, other[0].previous_version) == ("2", "champion", None)
    assert (outcome.version, outcome.alias) == ("1", alias)
    assert (outcome.previous_version, outcome.previous_value) == ("2", 0.9)
    assert outcome.reason.startswith("version 2 became champion while this one was compared")
    aliases = MlflowClient(store.tracking_uri).get_registered_model("redecide").aliases
    assert str(aliases["champion"]) == ("2" if alias == "challenger" else "1")
    head = registered_models.ledger_head(
        store, registered_models.promotion_ledger(store, "redecide")
    )
    expected = (1, "2 replaces none") if alias == "challenger" else (2, "1 replaces 2")
    assert (head.generation, head.entry) == expected


def test_an_alias_moved_by_hand_stands_until_a_version_beats_it(store):
    """A rollback in the MLflow UI (or a process killed between its claim and its alias
    write): the alias is not moved back, and the next version is compared with the one it
    names."""
    model_uri = stub_model(store)
    _promote(store, model_uri, "rolled-back", 0.8)
    newer = _promote(store, model_uri, "rolled-back", 0.9)
    assert newer.alias == "champion"
    registered_models.set_alias(store, "rolled-back", "champion", "1")  # by hand

    worse = _promote(store, model_uri, "rolled-back", 0.75)
    aliases = MlflowClient(store.tracking_uri).get_registered_model("rolled-back").aliases
    assert (worse.alias, worse.previous_version) == ("challenger", "1")
    assert {a: str(v) for a, v in aliases.items()} == {"champion": "1", "challenger": "3"}

    better = _promote(store, model_uri, "rolled-back", 0.85)
    aliases = MlflowClient(store.tracking_uri).get_registered_model("rolled-back").aliases
    assert (better.alias, better.previous_version, better.previous_value) == ("champion", "1", 0.8)
    assert str(aliases["champion"]) == better.version


def test_a_champion_from_before_the_ledger_is_compared_and_replaced(store):
    model_uri = stub_model(store)
    old = registered_models.register_version(
        store, model_uri, "legacy", {**TAGS, "test.patient_auc": "0.8"}
    )
    registered_models.set_alias(store, "legacy", "champion", old)

    assert _promote(store, model_uri, "legacy", 0.7).previous_version == old
    better = _promote(store, model_uri, "legacy", 0.9)

    assert (better.alias, better.previous_version) == ("champion", old)
    head = registered_models.ledger_head(store, registered_models.promotion_ledger(store, "legacy"))
    assert (head.generation, head.entry) == (1, f"{better.version} replaces {old}")


def test_a_claim_taken_by_another_value_is_refused_and_a_retry_of_ones_own_is_not(store):
    tracking.connect(store)
    ledger = registered_models.promotion_ledger(store, "cas")
    assert registered_models.promotion_ledger(store, "cas") == ledger

    assert registered_models.claim_generation(store, ledger, 1, "1 replaces none")
    assert registered_models.claim_generation(store, ledger, 1, "1 replaces none")
    assert not registered_models.claim_generation(store, ledger, 1, "2 replaces none")
    assert registered_models.ledger_head(store, ledger) == registered_models.LedgerHead(
        1, "1", "1 replaces none"
    )
    client = MlflowClient(store.tracking_uri)
    anchor = client.get_experiment_by_name(f"{registered_models.LEDGER_EXPERIMENT}/cas")
    assert anchor.tags[registered_models.LEDGER_RUN_TAG] == ledger
    holder = client.get_experiment_by_name(registered_models.LEDGER_EXPERIMENT)
    assert client.get_run(ledger).info.experiment_id == holder.experiment_id
