"""Evaluation: thresholds and selection from validation only, the ensemble, comparisons,
metrics.json and plot data."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest

from components.evaluation.candidates import (
    ENSEMBLE,
    PREDICTION_COLUMNS,
    SPLITS,
    ensemble_predictions,
    load_predictions,
    score_candidates,
)
from components.evaluation.metric_files import (
    calibration_plot_data,
    comparisons_table,
    confusion_plot_data,
    roc_plot_data,
    to_metrics_json,
    write_outputs,
)
from components.evaluation.metrics import (
    BootstrapOptions,
    Estimate,
    aggregate_patients,
    youden_threshold,
)
from components.machine import machine_description, machine_record
from components.metric_names import ALL_METRICS, LEVELS, parse_metric_name
from tests.tool_env import project_env

CLASSES = ("MM", "OMBT")
N_BOOT = 200
# Backbone -> signal strength: larger separates the classes better.
STRENGTH = {"VGG16": 3.0, "MobileNet": 1.5, "Xception": 0.0}


def _slices(patients_per_split_class: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", *SPLITS):
        for label in CLASSES:
            for i in range(patients_per_split_class):
                for s in range(int(rng.integers(2, 7))):
                    patient = f"{split}-{label}-{i}"
                    rows.append(
                        {
                            "image_id": f"{patient}-{s}",
                            "patient": patient,
                            "label": label,
                            "split": split,
                        }
                    )
    return pd.DataFrame(rows)


def _predictions(
    strength: dict[str, float] = STRENGTH, seed: int = 0, per_class: int = 6
) -> dict[str, pd.DataFrame]:
    base = _slices(per_class, seed)
    rng = np.random.default_rng(seed + 1)
    sign = np.where(base["label"] == "MM", 1.0, -1.0)
    out = {}
    for name, k in strength.items():
        patient_effect = base["patient"].map({p: rng.normal() for p in base["patient"].unique()})
        logit = k * sign + 0.7 * patient_effect + 0.5 * rng.normal(size=len(base))
        out[name] = base.assign(p=1 / (1 + np.exp(-logit)))
    return out


@pytest.fixture(scope="module")
def results():
    return score_candidates(
        _predictions(),
        CLASSES,
        "MM",
        options=BootstrapOptions(n_bootstrap=N_BOOT),
        ensemble_top_k=2,
    )


def _perturb_test(predictions: dict[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """New random test labels (per patient, shared by all backbones) and probabilities."""
    rng = np.random.default_rng(seed)
    first = next(iter(predictions.values()))
    patients = sorted(first.loc[first["split"] == "test", "patient"].unique())
    new_label = dict(zip(patients, rng.choice(CLASSES, len(patients)), strict=True))
    out = {}
    for name, frame in predictions.items():
        frame = frame.copy()
        test = frame["split"] == "test"
        frame.loc[test, "p"] = rng.random(int(test.sum()))
        frame.loc[test, "label"] = frame.loc[test, "patient"].map(new_label)
        out[name] = frame
    return out


def test_parse_metric_name():
    assert parse_metric_name("patient_auc") == ("patient", "auc")
    assert parse_metric_name("slice_f1") == ("slice", "f1")
    for bad in ("auc", "image_auc", "patient_roc", "patient-auc"):
        with pytest.raises(ValueError, match="<level>_<metric>"):
            parse_metric_name(bad)


def test_load_predictions_renames_the_positive_probability(tmp_path):
    frame = (
        _predictions()["VGG16"].rename(columns={"p": "p_mm"}).assign(p_ombt=lambda f: 1 - f["p_mm"])
    )
    (tmp_path / "VGG16").mkdir()
    frame.to_csv(tmp_path / "VGG16" / "predictions.csv", index=False)
    loaded = load_predictions(tmp_path, ["VGG16"], "MM")
    assert list(loaded) == ["VGG16"]
    assert list(loaded["VGG16"].columns) == list(PREDICTION_COLUMNS)
    np.testing.assert_allclose(loaded["VGG16"]["p"], frame["p_mm"])
    with pytest.raises(ValueError, match="p_omb"):
        load_predictions(tmp_path, ["VGG16"], "OMB")
    with pytest.raises(FileNotFoundError, match="myelomet train"):
        load_predictions(tmp_path, ["Xception"], "MM")


def test_results_hold_every_metric_with_an_interval(results):
    assert list(results.candidates) == [*STRENGTH, ENSEMBLE]
    for candidate in results.candidates.values():
        assert set(candidate.thresholds) == set(LEVELS)
        for split in SPLITS:
            assert candidate.counts[split]["n_patients"] == 12
            for level in LEVELS:
                metrics = candidate.metrics[split][level]
                assert list(metrics) == list(ALL_METRICS)
                for name, e in metrics.items():
                    assert isinstance(e, Estimate)
                    # ECE is biased upward on resamples; its interval may sit above it.
                    if math.isfinite(e.value) and name != "ece":
                        assert e.ci_low <= e.value + 1e-9 and e.value - 1e-9 <= e.ci_high, name
    strong = results.candidates["VGG16"].metrics["test"]["patient"]["auc"]
    weak = results.candidates["Xception"].metrics["test"]["patient"]["auc"]
    assert strong.value > 0.9 > weak.value


def test_thresholds_are_youden_on_validation(results):
    candidate = results.candidates["MobileNet"]
    val = candidate.predictions[candidate.predictions["split"] == "val"]
    assert candidate.thresholds["slice"] == youden_threshold(val["y"], val["p"])
    table = aggregate_patients(val["patient"], val["y"], val["p"])
    assert candidate.thresholds["patient"] == youden_threshold(table["y"], table["p"])


def test_test_data_never_change_thresholds_ensemble_or_selection():
    predictions = _predictions()
    base = score_candidates(
        predictions, CLASSES, "MM", options=BootstrapOptions(n_bootstrap=50), ensemble_top_k=2
    )
    perturbed = score_candidates(
        _perturb_test(predictions, 3),
        CLASSES,
        "MM",
        options=BootstrapOptions(n_bootstrap=50),
        ensemble_top_k=2,
    )
    assert perturbed.selected == base.selected
    assert perturbed.ranking == base.ranking
    assert perturbed.ensemble_members == base.ensemble_members
    for name in base.candidates:
        assert perturbed.candidates[name].thresholds == base.candidates[name].thresholds
        assert perturbed.candidates[name].metrics["val"] == base.candidates[name].metrics["val"]
    assert perturbed.candidates["VGG16"].metrics["test"] != base.candidates["VGG16"].metrics["test"]


def test_ensemble_averages_the_top_k_on_validation(results):
    assert results.ensemble_members == ("VGG16", "MobileNet")
    ensemble = results.candidates[ENSEMBLE]
    assert ensemble.members == results.ensemble_members
    members = [
        results.candidates[m].predictions.set_index("image_id")["p"] for m in ensemble.members
    ]
    expected = (members[0] + members[1]) / 2
    got = ensemble.predictions.set_index("image_id")["p"]
    pd.testing.assert_series_equal(got, expected.loc[got.index])


def test_ensemble_predictions_reject_different_images():
    predictions = _predictions()
    mobilenet = predictions["MobileNet"]
    shorter = {
        **predictions,
        "MobileNet": mobilenet.drop(mobilenet.index[mobilenet["split"] == "test"][0]),
    }
    with pytest.raises(ValueError, match="different val/test slices"):
        ensemble_predictions(shorter, ["VGG16", "MobileNet"])
    with pytest.raises(ValueError, match="same split.csv"):
        score_candidates(shorter, CLASSES, "MM", options=BootstrapOptions(n_bootstrap=20))


def test_no_ensemble_below_two_members():
    results = score_candidates(
        _predictions(), CLASSES, "MM", options=BootstrapOptions(n_bootstrap=20), ensemble_top_k=1
    )
    assert ENSEMBLE not in results.candidates and results.ensemble_members == ()


def test_pairwise_comparisons_find_the_better_model_and_not_a_copy():
    predictions = _predictions(per_class=10)
    predictions["VGG16copy"] = predictions["VGG16"].copy()
    results = score_candidates(
        predictions, CLASSES, "MM", options=BootstrapOptions(n_bootstrap=N_BOOT), ensemble_top_k=0
    )
    table = comparisons_table(results)
    assert len(table) == 4 * 3 // 2
    assert list(table.columns) == [
        "first",
        "second",
        "auc_difference",
        "ci_low",
        "ci_high",
        "p_value",
    ]
    pairs = {frozenset((c.first, c.second)): c for c in results.comparisons}
    strong_vs_weak = pairs[frozenset(("VGG16", "Xception"))]
    # Pairs run in validation ranking order: the better model comes first.
    assert (strong_vs_weak.first, strong_vs_weak.second) == ("VGG16", "Xception")
    assert strong_vs_weak.difference.value > 0.3 and strong_vs_weak.difference.ci_low > 0
    assert strong_vs_weak.p_value < 0.05
    copy = pairs[frozenset(("VGG16", "VGG16copy"))]
    assert copy.difference.value == 0 and copy.difference.ci_low <= 0 <= copy.difference.ci_high
    assert copy.p_value == 1.0


def test_metrics_json_names_the_machine_the_numbers_were_computed_on(results, tmp_path):
    written = json.loads(write_outputs(results, tmp_path)["metrics"].read_text())
    assert written["machine"] == machine_record(machine_description())
    assert written["machine"]["libraries"]["numpy"] == np.__version__
    assert {k: v for k, v in written.items() if k != "machine"} == json.loads(
        json.dumps(to_metrics_json(results))
    )


@pytest.mark.slow
def test_dvc_metrics_show_lists_the_machine(results, tmp_path):
    write_outputs(results, tmp_path)
    run = {"cwd": tmp_path, "env": project_env(), "capture_output": True, "text": True}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], check=True, **run)
    shown = subprocess.run(["dvc", "metrics", "show", "--json", "metrics.json"], **run)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)[""]["data"]["metrics.json"]["data"]
    assert data["machine"]["cpu"] == machine_description()["cpu"]
    assert data["machine"]["cpu_flags"] == machine_record(machine_description())["cpu_flags"]
    assert data["selection"]["selected"] == results.selected


def test_metrics_json_is_strict_json_of_nested_numbers(results):
    content = to_metrics_json(results)
    text = json.dumps(content, allow_nan=False)

    def leaves(node: object) -> list[object]:
        assert not isinstance(node, list)
        return [v for x in node.values() for v in leaves(x)] if isinstance(node, dict) else [node]

    assert all(isinstance(v, int | float | str) or v is None for v in leaves(json.loads(text)))
    assert set(content["candidates"]) == set(results.candidates)
    auc = content["candidates"]["VGG16"]["test"]["patient"]["auc"]
    assert set(auc) == {"value", "ci_low", "ci_high"}
    assert auc["value"] == pytest.approx(
        results.candidates["VGG16"].metrics["test"]["patient"]["auc"].value, abs=1e-6
    )
    selection = content["selection"]
    assert selection["selected"] == results.selected
    assert selection["metric"] == "patient_auc" and selection["split"] == "val"
    assert selection["ensemble_members"] == "VGG16,MobileNet"
    assert content["bootstrap"] == {"n": N_BOOT, "confidence": 0.95, "unit": "patient"}


def test_plot_data_are_tidy_records(results):
    roc = roc_plot_data(results)
    assert list(roc.columns) == ["candidate", "fpr", "tpr"]
    assert set(roc["candidate"]) == set(results.candidates)
    for _, curve in roc.groupby("candidate"):
        assert curve["fpr"].is_monotonic_increasing and curve["tpr"].is_monotonic_increasing
    confusion = confusion_plot_data(results, level="patient")
    assert list(confusion.columns) == ["candidate", "actual", "predicted"]
    vgg = confusion[confusion["candidate"] == "VGG16"]
    assert len(vgg) == 12
    accuracy = (vgg["actual"] == vgg["predicted"]).mean()
    assert accuracy == pytest.approx(
        results.candidates["VGG16"].metrics["test"]["patient"]["accuracy"].value
    )
    slices = confusion_plot_data(results, level="slice")
    assert (
        len(slices[slices["candidate"] == "VGG16"])
        == results.candidates["VGG16"].counts["test"]["n_slices"]
    )
    calibration = calibration_plot_data(results)
    assert list(calibration.columns) == ["candidate", "bin", "p_mean", "observed", "count"]
    with pytest.raises(ValueError, match="split must be"):
        roc_plot_data(results, split="train")


def test_one_class_test_split_gives_nan_not_a_crash():
    predictions = {
        name: frame[~((frame["split"] == "test") & (frame["label"] == "OMBT"))]
        for name, frame in _predictions().items()
    }
    results = score_candidates(
        predictions, CLASSES, "MM", options=BootstrapOptions(n_bootstrap=30), ensemble_top_k=2
    )
    test = results.candidates["VGG16"].metrics["test"]
    assert math.isnan(test["patient"]["auc"].value) and math.isnan(
        test["slice"]["specificity"].value
    )
    assert math.isnan(results.comparisons[0].p_value)
    content = to_metrics_json(results)
    json.dumps(content, allow_nan=False)
    assert content["candidates"]["VGG16"]["test"]["patient"]["auc"]["value"] is None
    assert roc_plot_data(results).empty


def test_invalid_predictions_raise_with_advice():
    predictions = _predictions()
    with pytest.raises(ValueError, match="labels \\['mm'\\]"):
        bad = predictions["VGG16"].assign(label=lambda f: f["label"].replace("MM", "mm"))
        score_candidates({"VGG16": bad}, CLASSES, "MM", options=BootstrapOptions(n_bootstrap=20))
    with pytest.raises(ValueError, match="no 'val' rows"):
        score_candidates(
            {"VGG16": predictions["VGG16"].query("split != 'val'")},
            CLASSES,
            "MM",
            options=BootstrapOptions(n_bootstrap=20),
        )
    with pytest.raises(ValueError, match="reserved"):
        score_candidates(
            {ENSEMBLE: predictions["VGG16"]},
            CLASSES,
            "MM",
            options=BootstrapOptions(n_bootstrap=20),
        )
    with pytest.raises(ValueError, match="<level>_<metric>"):
        score_candidates(predictions, CLASSES, "MM", select_metric="auc")
    with pytest.raises(ValueError, match="probability"):
        score_candidates(
            {"VGG16": predictions["VGG16"].assign(p=2.0)},
            CLASSES,
            "MM",
            options=BootstrapOptions(n_bootstrap=20),
        )
