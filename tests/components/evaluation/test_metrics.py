"""Metrics against scikit-learn and hand-worked cases; the patient bootstrap; degenerate data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from components.config import EvaluationConfig
from components.evaluation.metrics import (
    BootstrapOptions,
    aggregate_patients,
    bootstrap_metrics,
    brier_score,
    compare_auc,
    expected_calibration_error,
    percentile_interval,
    reliability_curve,
    resample_patients,
    resampled_metrics,
    roc_auc,
    roc_curve,
    threshold_metrics,
    youden_threshold,
)
from components.metric_names import ALL_METRICS, THRESHOLD_METRICS


def _scores(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and rounded (so tied) probabilities with some signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)
    return y, p


def _cohort(
    n_per_class: int, slices: int = 6, seed: int = 0, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices of patients whose probabilities share a strong per-patient effect."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    patient_y = np.repeat([1, 0], n_per_class)
    effect = 0.8 * (2 * patient_y - 1) + spread * rng.normal(size=n)
    patients = np.repeat(np.arange(n), slices)
    logit = effect[patients] + 0.2 * rng.normal(size=n * slices)
    return patient_y[patients], 1 / (1 + np.exp(-logit)), patients.astype(str)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_threshold_metrics_match_sklearn(threshold):
    y, p = _scores()
    pred = (p >= threshold).astype(int)
    got = threshold_metrics(y, p, threshold)
    expected = {
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "ppv": skm.precision_score(y, pred),
        "npv": skm.precision_score(y, pred, pos_label=0),
        "accuracy": skm.accuracy_score(y, pred),
        "f1": skm.f1_score(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred),
    }
    assert list(got) == list(THRESHOLD_METRICS)
    assert got == pytest.approx(expected)


def test_threshold_metrics_hand_worked():
    # tp=3, fn=2, fp=1, tn=4 at threshold 0.5
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6, 0.4, 0.3, 0.2, 0.1]
    got = threshold_metrics(y, p, 0.5)
    tn, fp, fn, tp = skm.confusion_matrix(y, [int(v >= 0.5) for v in p]).ravel()
    assert (tp, fp, tn, fn) == (3, 1, 4, 2)
    # kappa: p_o = 0.7, p_e = (4 * 5 + 6 * 5) / 100 = 0.5, so (0.7 - 0.5) / 0.5
    assert got == pytest.approx(
        {
            "sensitivity": 0.6,
            "specificity": 0.8,
            "ppv": 0.75,
            "npv": 4 / 6,
            "accuracy": 0.7,
            "f1": 6 / 9,
            "kappa": 0.4,
        }
    )


def test_auc_and_roc_curve_match_sklearn_with_ties():
    y, p = _scores()
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    fpr, tpr, thresholds = roc_curve(y, p)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds, sk_thr)


def test_calibration_matches_sklearn_and_hand_worked_ece():
    y, p = _scores()
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p))
    curve = reliability_curve(y, p, n_bins=10)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve["observed"], observed)
    np.testing.assert_allclose(curve["p_mean"], predicted)
    assert curve["count"].sum() == len(y)
    ece = float(np.sum(curve["count"] / len(y) * np.abs(curve["p_mean"] - curve["observed"])))
    assert expected_calibration_error(y, p, 10) == pytest.approx(ece)
    # Two bins: [0.1, 0.3] (observed 0.5, mean 0.2) and [0.8, 0.9] (observed 1, mean 0.85)
    assert expected_calibration_error([0, 1, 1, 1], [0.1, 0.3, 0.8, 0.9], 2) == pytest.approx(
        0.5 * 0.3 + 0.5 * 0.15
    )


def test_youden_threshold_maximises_j_on_the_given_data():
    y, p = _scores()
    t = youden_threshold(y, p)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, p, drop_intermediate=False)
    assert t in sk_thr
    best_j = np.max(sk_tpr - sk_fpr)
    m = threshold_metrics(y, p, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best_j)


def test_youden_threshold_separable_and_plateau():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == 0.7
    # J is 1 at both 0.3 and 0.7 here; the one nearer 0.5 (then the larger) wins
    assert youden_threshold([0, 1], [0.3, 0.7]) == 0.7


def test_youden_threshold_falls_back_without_both_classes():
    assert youden_threshold([1, 1, 1], [0.2, 0.5, 0.9]) == 0.5
    assert youden_threshold([0, 0], [0.2, 0.5], fallback=0.4) == 0.4


def test_one_class_only_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = threshold_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
        assert np.isnan(m["specificity"])
        assert m["sensitivity"] == pytest.approx(2 / 3)
        assert np.isnan(threshold_metrics([1, 1], [0.6, 0.9], 0.5)["kappa"])
        assert np.isnan(roc_auc([0, 0], [0.1, 0.2]))
        assert all(np.isnan(v) for v in threshold_metrics([], [], 0.5).values())
        est = bootstrap_metrics(
            [1, 1, 1, 1],
            [0.2, 0.6, 0.9, 0.7],
            list("aabb"),
            0.5,
            options=BootstrapOptions(n_bootstrap=50),
        )
        assert np.isnan(est["auc"].value) and np.isnan(est["auc"].ci_low)
        assert est["ppv"].value == 1.0
        cmp = compare_auc(
            [1, 1], [0.2, 0.3], [0.4, 0.5], ["a", "b"], options=BootstrapOptions(n_bootstrap=20)
        )
        assert np.isnan(cmp.difference.value) and np.isnan(cmp.p_value)


def test_invalid_inputs_raise_with_advice():
    with pytest.raises(ValueError, match="0/1"):
        threshold_metrics([0, 2], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        roc_auc([0, 1], [-0.5, 3.0])
    with pytest.raises(ValueError, match="one per row"):
        roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="both classes"):
        aggregate_patients(["a", "a"], [0, 1], [0.1, 0.9])
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval([0.1, 0.2], confidence=1.5)


def test_aggregate_patients_takes_the_mean_per_patient():
    table = aggregate_patients(
        ["b", "a", "b", "a", "a"], [0, 1, 0, 1, 1], [0.2, 0.9, 0.4, 0.6, 0.3]
    )
    assert table["patient"].tolist() == ["a", "b"]
    assert table["y"].tolist() == [1, 0]
    np.testing.assert_allclose(table["p"], [0.6, 0.3])
    assert table["n_slices"].tolist() == [3, 2]


def test_resample_patients_draws_whole_patients_per_class():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    counts = resample_patients(labels, n_bootstrap=500, seed=3)
    assert counts.shape == (500, 7)
    np.testing.assert_array_equal(counts[:, labels == 1].sum(axis=1), 3)
    np.testing.assert_array_equal(counts[:, labels == 0].sum(axis=1), 4)
    np.testing.assert_array_equal(counts, resample_patients(labels, 500, seed=3))
    plain = resample_patients(labels, 500, seed=3, stratify=False)
    np.testing.assert_array_equal(plain.sum(axis=1), 7)
    assert plain[:, labels == 1].sum(axis=1).std() > 0


def test_resampled_metrics_equal_metrics_on_the_expanded_slices():
    y, p, patients = _cohort(5, slices=4, seed=1)
    table = aggregate_patients(patients, y, p)
    counts = resample_patients(table["y"], n_bootstrap=5, seed=2)
    got = resampled_metrics(y, p, patients, 0.5, counts)
    assert list(got.columns) == list(ALL_METRICS)
    for r in range(len(counts)):
        # Build the resample explicitly: each drawn patient brings all its slices.
        take = np.concatenate(
            [
                np.flatnonzero(patients == pid)
                for pid, k in zip(table["patient"], counts[r], strict=True)
                for _ in range(int(k))
            ]
        )
        expected = {**threshold_metrics(y[take], p[take], 0.5), "auc": roc_auc(y[take], p[take])}
        expected["brier"] = brier_score(y[take], p[take])
        expected["ece"] = expected_calibration_error(y[take], p[take], 10)
        assert got.iloc[r].to_dict() == pytest.approx(expected)


def test_bootstrap_contains_point_estimate_and_matches_plain_metrics():
    y, p, patients = _cohort(15, seed=4)
    est = bootstrap_metrics(y, p, patients, 0.5, options=BootstrapOptions(n_bootstrap=400, seed=1))
    assert list(est) == list(ALL_METRICS)
    plain = {**threshold_metrics(y, p, 0.5), "auc": roc_auc(y, p), "brier": brier_score(y, p)}
    for name, value in plain.items():
        assert est[name].value == pytest.approx(value)
    for name, e in est.items():
        assert e.ci_low <= e.value <= e.ci_high, name
    again = bootstrap_metrics(
        y, p, patients, 0.5, options=BootstrapOptions(n_bootstrap=400, seed=1)
    )
    assert again == est


def test_bootstrap_interval_narrows_as_patients_are_added():
    few = bootstrap_metrics(*_cohort(8, seed=5), 0.5, options=BootstrapOptions(n_bootstrap=400))
    many = bootstrap_metrics(*_cohort(80, seed=5), 0.5, options=BootstrapOptions(n_bootstrap=400))
    for name in ("auc", "accuracy", "sensitivity", "kappa", "brier"):
        assert many[name].width < 0.6 * few[name].width, name


def test_slice_resampling_would_understate_the_uncertainty():
    # 20 patients of 40 near-identical slices: the information is in 20 patients, not 800
    # slices. Treating each slice as its own patient shrinks the interval several-fold.
    y, p, patients = _cohort(10, slices=40, seed=6)
    by_patient = bootstrap_metrics(y, p, patients, 0.5, options=BootstrapOptions(n_bootstrap=400))
    by_slice = bootstrap_metrics(
        y, p, np.arange(len(y)), 0.5, options=BootstrapOptions(n_bootstrap=400)
    )
    for name in ("auc", "accuracy"):
        assert by_patient[name].value == pytest.approx(by_slice[name].value)
        assert by_patient[name].width > 3 * by_slice[name].width, name


def test_compare_auc_detects_a_better_model_and_not_a_copy():
    y, p_good, patients = _cohort(20, slices=3, seed=7, spread=0.5)
    rng = np.random.default_rng(0)
    p_noise = rng.random(len(y))
    better = compare_auc(y, p_good, p_noise, patients, options=BootstrapOptions(n_bootstrap=500))
    assert better.difference.value > 0.3
    assert better.difference.ci_low > 0
    assert better.p_value < 0.05
    assert (
        compare_auc(
            y, p_noise, p_good, patients, options=BootstrapOptions(n_bootstrap=500)
        ).difference.ci_high
        < 0
    )
    copy = compare_auc(
        y, p_good, p_good.copy(), patients, options=BootstrapOptions(n_bootstrap=500)
    )
    assert copy.difference.value == 0
    assert copy.difference.ci_low <= 0 <= copy.difference.ci_high
    assert copy.p_value == 1.0


def test_compare_auc_of_similar_models_is_not_significant():
    y, p, patients = _cohort(20, slices=3, seed=8, spread=0.5)
    rng = np.random.default_rng(1)
    jittered = np.clip(p + rng.normal(0, 0.02, len(p)), 0, 1)
    result = compare_auc(y, p, jittered, patients, options=BootstrapOptions(n_bootstrap=500))
    assert result.difference.ci_low <= 0 <= result.difference.ci_high
    assert result.p_value > 0.2


def test_percentile_interval_ignores_nan():
    assert percentile_interval([np.nan, 1.0, 2.0, 3.0], 0.5) == pytest.approx((1.5, 2.5))
    low, high = percentile_interval([np.nan, np.nan])
    assert np.isnan(low) and np.isnan(high)


def test_bootstrap_options_come_from_the_config_whose_defaults_they_share():
    evaluation = EvaluationConfig(n_bootstrap=20, confidence=0.9, calibration_bins=5, seed=4)
    assert BootstrapOptions.from_config(evaluation) == BootstrapOptions(
        n_bootstrap=20, confidence=0.9, calibration_bins=5, seed=4
    )
    assert BootstrapOptions.from_config(EvaluationConfig()) == BootstrapOptions()
