"""Cross-validation pooling: every patient scored once out of fold, each row at the threshold
its own fold chose, selection on pooled validation, the fold ensemble as the candidate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.evaluation.candidates import ENSEMBLE, score_candidates
from components.evaluation.crossval import cross_validate, fold_spread, pool_candidate
from components.evaluation.metric_files import confusion_plot_data, to_metrics_json
from components.evaluation.metrics import BootstrapOptions, aggregate_patients, bootstrap_metrics
from components.metric_names import LEVELS

CLASSES = ("MM", "OMBT")
FOLDS = 3
PER_CLASS = 9  # patients per class; 3 per class per fold
STRENGTH = {"VGG16": 2.5, "MobileNet": 1.0, "Xception": 0.2}
OPTIONS = BootstrapOptions(n_bootstrap=100, confidence=0.95, calibration_bins=10, seed=0)


def _patients() -> pd.DataFrame:
    rows = []
    for label in CLASSES:
        for i in range(PER_CLASS):
            rows.append({"patient": f"{label}-{i}", "label": label, "fold": i % FOLDS})
    return pd.DataFrame(rows)


def _fold_predictions(number: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Each backbone's predictions in one fold: test = fold, val = fold + 1, train = rest;
    each fold's model shifted by its own offset so the folds choose different thresholds."""
    patients = _patients()
    split = np.where(
        patients["fold"] == number,
        "test",
        np.where(patients["fold"] == (number + 1) % FOLDS, "val", "train"),
    )
    slices = []
    for (patient, label), part in zip(
        patients[["patient", "label"]].itertuples(index=False), split, strict=True
    ):
        for s in range(3):
            slices.append(
                {"image_id": f"{patient}-{s}", "patient": patient, "label": label, "split": part}
            )
    base = pd.DataFrame(slices)
    rng = np.random.default_rng(seed + number)
    y = (base["label"] == CLASSES[0]).to_numpy(int)
    out = {}
    for name, strength in STRENGTH.items():
        logit = strength * (2 * y - 1) + rng.normal(0, 1, len(base)) + 0.6 * number
        out[name] = base.assign(p=1 / (1 + np.exp(-logit)))
    return out


@pytest.fixture(scope="module")
def folds():
    return [
        score_candidates(
            _fold_predictions(f), CLASSES, CLASSES[0], ensemble_top_k=2, options=OPTIONS
        )
        for f in range(FOLDS)
    ]


@pytest.fixture(scope="module")
def pooled(folds):
    return cross_validate(folds, OPTIONS)


def test_every_patient_is_tested_once_and_validated_once(pooled):
    everyone = set(_patients()["patient"])
    for candidate in pooled.candidates.values():
        for split in ("val", "test"):
            rows = candidate.rows(split, "patient")
            assert sorted(rows["patient"]) == sorted(everyone)
            assert candidate.counts[split]["n_patients"] == len(everyone)


def test_each_row_is_called_at_its_own_folds_threshold(folds, pooled):
    name = "MobileNet"
    own = {f: folds[f].candidates[name].thresholds for f in range(FOLDS)}
    assert len({t["slice"] for t in own.values()}) > 1, "the folds must disagree to test this"
    frame = pooled.candidates[name].predictions
    test = frame[frame["split"] == "test"]
    expected = test["fold"].map(lambda f: own[f]["slice"]).to_numpy()
    manual = bootstrap_metrics(test["y"], test["p"], test["patient"], expected, options=OPTIONS)
    assert pooled.candidates[name].metrics["test"]["slice"] == manual
    called = confusion_plot_data(pooled, "test", "slice")
    called = called[called["candidate"] == name]
    assert (called["predicted"] == CLASSES[0]).sum() == int((test["p"] >= expected).sum())

    patients = aggregate_patients(test["patient"], test["y"], test["p"])
    fold_of = test.drop_duplicates("patient").set_index("patient")["fold"]
    cut = patients["patient"].map(lambda p: own[fold_of[p]]["patient"]).to_numpy()
    at_median = bootstrap_metrics(
        patients["y"],
        patients["p"],
        patients["patient"],
        np.median(cut),
        options=BootstrapOptions(n_bootstrap=100),
    )
    per_fold = bootstrap_metrics(
        patients["y"],
        patients["p"],
        patients["patient"],
        cut,
        options=BootstrapOptions(n_bootstrap=100),
    )
    assert pooled.candidates[name].metrics["test"]["patient"] == per_fold
    assert per_fold != at_median


def test_the_pooled_candidate_is_the_fold_ensemble(folds, pooled):
    backbone = pooled.candidates["VGG16"]
    assert backbone.members == ("fold-0/VGG16", "fold-1/VGG16", "fold-2/VGG16")
    for level in LEVELS:
        assert backbone.thresholds[level] == pytest.approx(
            np.median([f.candidates["VGG16"].thresholds[level] for f in folds])
        )
    ensemble = pooled.candidates[ENSEMBLE]
    expected = tuple(
        f"fold-{n}/{m}" for n, fold in enumerate(folds) for m in fold.candidates[ENSEMBLE].members
    )
    assert ensemble.members == expected == pooled.ensemble_members
    assert pooled.fold_results == tuple(folds)


def test_selection_ranks_the_pooled_validation_metric(pooled):
    val = {n: c.metrics["val"]["patient"]["auc"].value for n, c in pooled.candidates.items()}
    assert val[pooled.selected] == max(val.values())
    assert pooled.selected in ("VGG16", ENSEMBLE)
    assert pooled.ranking[-1] == "Xception"


def test_fold_spread_and_metrics_json(folds, pooled):
    spread = fold_spread(pooled).set_index("candidate")
    assert list(spread.index) == list(pooled.ranking)
    vgg = [f.candidates["VGG16"].metrics["test"]["patient"]["auc"].value for f in folds]
    assert spread.loc["VGG16", "patient mean"] == pytest.approx(np.mean(vgg))
    assert spread.loc["VGG16", "patient sd"] == pytest.approx(np.std(vgg, ddof=1))
    pooled_auc = pooled.candidates["VGG16"].metrics["test"]["patient"]["auc"].value
    assert spread.loc["VGG16", "patient pooled"] == pooled_auc
    written = to_metrics_json(pooled)["cross_validation"]
    assert written["folds"] == FOLDS
    assert written["test_auc"]["VGG16"]["patient"]["fold 1"] == pytest.approx(vgg[1])
    assert "cross_validation" not in to_metrics_json(folds[0])
    assert fold_spread(folds[0]).empty


def test_a_slice_tested_in_two_folds_is_refused(folds):
    twice = [folds[0].candidates["VGG16"], folds[0].candidates["VGG16"]]
    with pytest.raises(ValueError, match="in two folds"):
        pool_candidate(twice, OPTIONS)
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validate(folds[:1], OPTIONS)


def test_bootstrap_takes_one_threshold_or_one_per_row():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.4, 0.3, 0.6, 0.7, 0.2])
    patients = ["a", "b", "c", "d", "e", "f"]
    same = bootstrap_metrics(y, p, patients, 0.5, options=BootstrapOptions(n_bootstrap=50))
    assert (
        bootstrap_metrics(y, p, patients, np.full(6, 0.5), options=BootstrapOptions(n_bootstrap=50))
        == same
    )
    with pytest.raises(ValueError, match="one per row"):
        bootstrap_metrics(y, p, patients, np.full(4, 0.5), options=BootstrapOptions(n_bootstrap=50))
