import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from components import tracking
from components.config import Config, EvaluationConfig, load_config
from components.evaluation.candidates import score_candidates
from components.evaluation.metric_files import log_candidate_runs
from components.evaluation.metrics import (
    BootstrapOptions,
    aggregate_patients,
    roc_auc,
    threshold_metrics,
)
from components.evaluation.report_content import format_estimate
from components.registry import promotion
from tests.components.registry.registry_support import keras_p, run_cli
from tests.model_factory import (
    BACKBONE,
    CLASSES,
    POSITIVE,
    ct_like_slices,
    tiny_model,
    write_models_dir,
)

ROOT = Path(__file__).resolve().parents[3]


def _register(store, logged, name, value, metric="patient_auc", **kwargs):
    tags = {**logged.tags, "data_version": kwargs.pop("data_version", "dv1")}
    return promotion.register_and_promote(
        store,
        logged.model_uri,
        name,
        tags,
        metric,
        value,
        kwargs.pop("rescore", None),
        kwargs.pop("min_improvement", 0.0),
    )


def _aliases(store, name) -> dict[str, str]:
    aliases = MlflowClient(store.tracking_uri).get_registered_model(name).aliases
    return {alias: str(version) for alias, version in aliases.items()}


def _tags(store, name, version) -> dict[str, str]:
    return MlflowClient(store.tracking_uri).get_model_version(name, version).tags


def test_the_first_version_becomes_champion_with_its_tags(store, logged):
    outcome = _register(store, logged, "first", 0.8)

    assert (outcome.version, outcome.alias, outcome.candidate) == ("1", "champion", BACKBONE)
    assert (outcome.previous_version, outcome.previous_value) == (None, None)
    assert _aliases(store, "first") == {"champion": "1"}
    tags = _tags(store, "first", "1")
    assert tags["data_version"] == "dv1" and tags["backbones"] == BACKBONE
    assert tags["test.patient_auc"] == "0.8"
    assert tags["promotion.decision"] == "champion"
    assert tags["promotion.compared"] == "first"
    assert tags["promotion.champion_version"] == "none"
    version = MlflowClient(store.tracking_uri).get_model_version("first", "1")
    assert version.current_stage == "None"  # aliases only, never stages


def test_a_worse_or_equal_version_is_challenger_and_never_takes_champion(store, logged):
    _register(store, logged, "worse", 0.8)

    worse = _register(store, logged, "worse", 0.7)
    assert (worse.alias, worse.previous_version, worse.previous_value) == ("challenger", "1", 0.8)
    assert _aliases(store, "worse") == {"champion": "1", "challenger": "2"}
    tags = _tags(store, "worse", "2")
    assert tags["promotion.decision"] == "challenger"
    assert tags["promotion.champion_version"] == "1"
    assert tags["promotion.champion_value"] == "0.8"
    assert tags["promotion.new_value"] == "0.7"
    assert tags["promotion.compared"] == "recorded"
    assert "does not beat" in tags["promotion.reason"]

    assert _register(store, logged, "worse", 0.8).alias == "challenger"  # a tie is not a win
    short = _register(store, logged, "worse", 0.83, min_improvement=0.05)
    assert short.alias == "challenger"
    assert _aliases(store, "worse") == {"champion": "1", "challenger": "4"}


def test_a_better_version_takes_champion_from_the_old_one(store, logged):
    _register(store, logged, "better", 0.8)
    _register(store, logged, "better", 0.7)

    better = _register(store, logged, "better", 0.86, min_improvement=0.05)

    assert (better.alias, better.version, better.previous_version) == ("champion", "3", "1")
    assert _aliases(store, "better") == {"champion": "3", "challenger": "2"}
    assert "beats champion v1" in better.reason
    assert _tags(store, "better", "3")["promotion.decision"] == "champion"


def test_lower_is_better_metrics_promote_the_smaller_value(store, logged):
    _register(store, logged, "brier", 0.20, metric="patient_brier")
    assert _register(store, logged, "brier", 0.25, metric="patient_brier").alias == "challenger"
    assert _register(store, logged, "brier", 0.15, metric="patient_brier").alias == "champion"


def test_a_champion_tested_on_other_data_is_rescored_or_kept(store, logged):
    _register(store, logged, "drift", 0.8, data_version="dv0")

    kept = _register(store, logged, "drift", 0.9)
    assert kept.alias == "challenger"
    assert _tags(store, "drift", "2")["promotion.compared"] == "not_comparable"

    calls = []

    def rescore(uri: str) -> float:
        calls.append(uri)
        return 0.6

    promoted = _register(store, logged, "drift", 0.7, rescore=rescore)
    assert calls == ["models:/drift/1"]
    assert (promoted.alias, promoted.previous_value) == ("champion", 0.6)
    assert _tags(store, "drift", "3")["promotion.compared"] == "rescored"
    assert _aliases(store, "drift")["champion"] == "3"


def test_register_needs_the_candidate_tags(store, logged):
    with pytest.raises(ValueError, match="tags lack"):
        promotion.register_and_promote(
            store, logged.model_uri, "x", {"candidate": "a"}, "patient_auc", 0.5, None, 0.0
        )
    with pytest.raises(ValueError, match="<level>_<metric>"):
        promotion.register_and_promote(
            store, logged.model_uri, "x", logged.tags, "auc", 0.5, None, 0.0
        )


def test_rescorer_scores_a_registered_model_on_the_given_slices(store, logged, models_dir):
    _register(store, logged, "rescored", 0.8)
    hu = ct_like_slices(8)
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    patients = np.repeat(["a", "b", "c", "d"], 2)
    p = keras_p(models_dir, hu)

    auc = promotion.rescorer(hu, y, patients, "patient_auc")("models:/rescored/1")
    per_patient = aggregate_patients(patients, y, p)
    assert auc == pytest.approx(roc_auc(per_patient["y"], per_patient["p"]))

    sensitivity = promotion.rescorer(hu, y, patients, "slice_sensitivity")("models:/rescored/1")
    assert sensitivity == pytest.approx(threshold_metrics(y, p, 0.4)["sensitivity"])


def test_predict_prints_one_json_line_per_slice(store, logged, ct_files, params, tmp_path):
    _register(store, logged, "cli", 0.8)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 300)

    code, out, _ = run_cli(
        params, "predict", "--model", "models:/cli@champion", str(ct_files[0]), str(garbage)
    )

    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert list(lines[0]) == ["file", "p_mm", "label", "threshold"]
    assert lines[0]["file"] == str(ct_files[0]) and 0 <= lines[0]["p_mm"] <= 1
    assert set(lines[1]) == {"file", "error"} and lines[1]["file"] == str(garbage)

    assert run_cli(params, "predict", "--model", "models:/cli@champion", str(garbage))[0] == 1
    code, _, err = run_cli(params, "predict", "--model", "models:/nothing@champion", str(garbage))
    assert code == 2 and "cannot load models:/nothing@champion" in err


VAL_PATIENTS = 3
TEST_PATIENTS = 4


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with a trained model, a manifest of HU slices and a split: two slices
    of one image per patient, 3 validation patients, then 4 test patients labelled so that
    the model scores both MM patients below both OMBT ones (its test patient AUC is 0)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_models_dir(tmp_path, tiny_model())
    slices = tmp_path / "data" / "processed" / "slices"
    slices.mkdir(parents=True)
    images = ct_like_slices(VAL_PATIENTS + TEST_PATIENTS)
    per_patient = keras_p(tmp_path / "models", images)
    ranked = np.argsort(per_patient[VAL_PATIENTS:]) + VAL_PATIENTS
    labels = ["MM", "OMBT", "MM"] + [""] * TEST_PATIENTS
    for rank, patient in enumerate(ranked):
        labels[patient] = "MM" if rank < TEST_PATIENTS // 2 else "OMBT"
    rows, hu = [], []
    for i in range(2 * len(images)):
        patient = i // 2
        np.save(slices / f"im{i}.npy", images[patient])
        hu.append(images[patient])
        split = "val" if patient < VAL_PATIENTS else "test"
        rows.append((f"im{i}", f"pt{patient}", labels[patient], split, f"slices/im{i}.npy"))
    table = pd.DataFrame(rows, columns=["image_id", "patient", "label", "split", "file"])
    table.to_csv(slices.parent / "manifest.csv", index=False)
    (tmp_path / "data" / "splits").mkdir(parents=True)
    table.drop(columns="file").to_csv(tmp_path / "data" / "splits" / "split.csv", index=False)
    p = keras_p(tmp_path / "models", hu)
    return tmp_path, table.assign(p=p)


def _set_data_version(root: Path, version: str) -> None:
    metrics_file = root / "models" / BACKBONE / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "data_version": version}))


def test_register_selected_logs_registers_and_rescores_a_champion_of_other_data(project):
    root, predictions = project
    cfg = Config(root=root, evaluation=EvaluationConfig(n_bootstrap=10, onnx=False))
    results = score_candidates(
        {BACKBONE: predictions},
        CLASSES,
        POSITIVE,
        options=BootstrapOptions(n_bootstrap=10),
        ensemble_top_k=0,
    )
    chosen = results.candidates[BACKBONE]

    store = tracking.resolve_store(cfg.tracking, root)
    study_run = tracking.start_study(store, "study")
    log_candidate_runs(store, study_run, results)  # as the evaluate flow does first
    first = promotion.register_selected(cfg, results, study_run)

    assert (first.version, first.alias, first.candidate) == ("1", "champion", BACKBONE)
    tags = _tags(store, "myelomet", "1")
    assert float(tags["test.patient_auc"]) == chosen.metrics["test"]["patient"]["auc"].value
    assert not any(k.startswith("test.slice") for k in tags)  # metrics live in run and card
    assert float(tags["threshold.slice"]) == pytest.approx(chosen.thresholds["slice"], rel=1e-5)
    client = MlflowClient(store.tracking_uri)
    version = client.get_model_version("myelomet", "1")
    sensitivity = chosen.metrics["test"]["slice"]["sensitivity"]
    run = client.get_run(version.run_id).data.metrics
    assert run["test_slice_sensitivity"] == sensitivity.value
    assert run["test_slice_sensitivity_ci_low"] == sensitivity.ci_low
    card = Path(client.download_artifacts(version.run_id, "model_card.md", str(root))).read_text()
    assert version.description == card
    assert "Research use only" in card and "myelomet version 1" in card
    assert f"| AUC | {format_estimate(chosen.metrics['test']['slice']['auc'], 3)} |" in card
    assert "random initialisation" in card and "champion" in card

    # The champion was tested on other data: it is rescored on these test slices, where the
    # model's patient AUC is 0 by construction. The same scores tie it: no win.
    _set_data_version(root, "dv2")
    second = promotion.register_selected(cfg, results, study_run)
    assert chosen.metrics["test"]["patient"]["auc"].value == 0.0
    assert (second.previous_version, second.previous_value) == ("1", pytest.approx(0.0))
    assert second.alias == "challenger"
    assert _tags(store, "myelomet", "2")["promotion.compared"] == "rescored"

    # A candidate whose scores rank every test patient right (AUC 1) beats the rescored 0.
    inverted = predictions.assign(p=1 - predictions["p"])
    results = score_candidates(
        {BACKBONE: inverted},
        CLASSES,
        POSITIVE,
        options=BootstrapOptions(n_bootstrap=10),
        ensemble_top_k=0,
    )
    assert results.candidates[BACKBONE].metrics["test"]["patient"]["auc"].value == 1.0
    _set_data_version(root, "dv3")
    third = promotion.register_selected(cfg, results, study_run)
    assert (third.previous_version, third.previous_value) == ("1", pytest.approx(0.0))
    assert (third.version, third.alias) == ("3", "champion")
    assert _aliases(store, "myelomet") == {"champion": "3", "challenger": "2"}


def test_a_moved_project_is_detected_relocated_and_predicts(project, ct_files, tmp_path_factory):
    root, predictions = project
    (root / "params.yaml").write_text("evaluation: {n_bootstrap: 10}\n")
    cfg = load_config(root / "params.yaml")
    results = score_candidates(
        {BACKBONE: predictions},
        CLASSES,
        POSITIVE,
        options=BootstrapOptions(n_bootstrap=10),
        ensemble_top_k=0,
    )
    store = tracking.resolve_store(cfg.tracking, root)
    promotion.register_selected(cfg, results, tracking.start_study(store, "study"))
    assert "MLFLOW_TRACKING_URI" not in os.environ  # a new shell would not have it either
    moved = tmp_path_factory.mktemp("elsewhere") / "project"
    shutil.copytree(root, moved)
    shutil.rmtree(root)

    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(moved / "params.yaml", *args)

    code, _, err = cli("predict", str(ct_files[0]))
    assert code == 2 and "myelomet doctor --relocate" in err and str(root) in err
    assert cli("doctor")[0] == 2

    code, out, _ = cli("doctor", "--relocate")
    assert code == 0 and "relocated the MLflow store" in out
    assert list((moved / "mlruns").glob("mlflow.db.before-relocate-*"))

    code, out, _ = cli("predict", str(ct_files[0]))
    assert code == 0 and 0 <= json.loads(out.splitlines()[0])["p_mm"] <= 1
    store = tracking.resolve_store(cfg.tracking, moved)
    experiment = MlflowClient(store.tracking_uri).get_experiment(tracking.connect(store))
    assert experiment.artifact_location == (moved / "mlruns" / "artifacts").as_uri()
    assert cli("doctor", "--relocate")[1].endswith("(ok)\n")
