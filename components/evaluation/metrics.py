"""Binary classification metrics with confidence intervals from a patient bootstrap.

Conventions, everywhere in this module:

- `y` is 1 for the positive class and 0 otherwise; `p` is the predicted probability of the
  positive class; a case is called positive when `p >= threshold`.
- A metric whose denominator is zero, or that needs a class the data lack, is NaN; no
  warning is raised.
- Confidence intervals are percentile intervals over bootstrap resamples of *patients*:
  a resampled patient brings all its rows (slices) with it, so slices of one patient are
  never treated as independent. Resampling is stratified by the patient's label (each
  class keeps its number of patients, as pROC does for AUC), so every resample holds
  both classes whenever the data do. Resamples where a metric is undefined are left out
  of its interval.

Every statistic is computed from per-patient sums weighted by how often each patient is
drawn, so one matrix product evaluates all resamples at once; the point estimate is the
same computation with every weight 1 (the arithmetic is in `weighted_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from components.config import EvaluationConfig
from components.evaluation.weighted_stats import (
    Patients,
    all_stats,
    auc,
    bin_index,
    binary_labels,
    calibration_stats,
    confusion,
    group_by_patient,
    per_patient,
    probabilities,
    ratio,
    singletons,
    threshold_stats,
)
from components.metric_names import ALL_METRICS, THRESHOLD_METRICS

ArrayLike = npt.ArrayLike
_DEFAULTS = EvaluationConfig()


@dataclass(frozen=True)
class BootstrapOptions:
    """How every interval, calibration curve and comparison of an evaluation is computed.

    Built once from params `evaluation` (`from_config`) and passed down whole; the defaults
    are the configuration's.

    Attributes:
        n_bootstrap: patient resamples per interval and per comparison.
        confidence: coverage of the intervals, e.g. 0.95.
        calibration_bins: equal-width bins of the ECE and the reliability curves.
        seed: seeds the resampling; the same patients and seed give the same resamples.
    """

    n_bootstrap: int = _DEFAULTS.n_bootstrap
    confidence: float = _DEFAULTS.confidence
    calibration_bins: int = _DEFAULTS.calibration_bins
    seed: int = _DEFAULTS.seed

    @classmethod
    def from_config(cls, evaluation: EvaluationConfig) -> BootstrapOptions:
        """The options of params `evaluation`."""
        return cls(
            n_bootstrap=evaluation.n_bootstrap,
            confidence=evaluation.confidence,
            calibration_bins=evaluation.calibration_bins,
            seed=evaluation.seed,
        )


DEFAULT_BOOTSTRAP = BootstrapOptions()


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap percentile interval; NaN where undefined."""

    value: float
    ci_low: float
    ci_high: float

    @property
    def width(self) -> float:
        return self.ci_high - self.ci_low

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class AucComparison:
    """Paired bootstrap comparison of two models' AUC on the same patients.

    Attributes:
        difference: AUC of the first model minus AUC of the second, with its interval.
        p_value: two-sided bootstrap p-value of "no difference" (see `compare_auc`).
    """

    difference: Estimate
    p_value: float


def _row_level(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray, Patients, np.ndarray]:
    y_arr = binary_labels(y)
    p_arr = probabilities(p, len(y_arr))
    return y_arr, p_arr, singletons(len(y_arr)), np.ones((1, len(y_arr)))


def threshold_metrics(y: ArrayLike, p: ArrayLike, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV, accuracy, F1 and Cohen's kappa at a threshold.

    Args:
        y: 1 for the positive class, 0 otherwise.
        p: probability of the positive class; positive when p >= threshold.
        threshold: the decision threshold.

    Returns:
        Metric name (THRESHOLD_METRICS) -> value; NaN where a denominator is zero.

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    y_arr, p_arr, pts, weights = _row_level(y, p)
    stats = threshold_stats(*confusion(y_arr, p_arr, threshold, pts, weights))[0]
    return dict(zip(THRESHOLD_METRICS, stats.tolist(), strict=True))


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is absent.

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    y_arr, p_arr, pts, weights = _row_level(y, p)
    return float(auc(y_arr, p_arr, pts, weights)[0])


def brier_score(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared difference between probability and outcome; NaN for no rows.

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    y_arr, p_arr, pts, weights = _row_level(y, p)
    return float(calibration_stats(y_arr, p_arr, pts, weights, n_bins=2)[0, 0])


def expected_calibration_error(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins.

    The bin-size-weighted mean of |mean probability - observed positive fraction|.

    Args:
        y: 1 for the positive class, 0 otherwise.
        p: probability of the positive class.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        The ECE; NaN for no rows.

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    y_arr, p_arr, pts, weights = _row_level(y, p)
    return float(calibration_stats(y_arr, p_arr, pts, weights, n_bins)[0, 1])


def reliability_curve(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Points of the reliability diagram over equal-width bins; empty bins are left out.

    Args:
        y: 1 for the positive class, 0 otherwise.
        p: probability of the positive class.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        Columns `bin` (index), `p_mean` (mean probability), `observed` (fraction positive)
        and `count`, one row per non-empty bin in increasing order.

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    y_arr = binary_labels(y)
    p_arr = probabilities(p, len(y_arr))
    bins = bin_index(p_arr, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    keep = np.flatnonzero(count)
    return pd.DataFrame(
        {
            "bin": keep,
            "p_mean": np.bincount(bins, weights=p_arr, minlength=n_bins)[keep] / count[keep],
            "observed": np.bincount(bins, weights=y_arr, minlength=n_bins)[keep] / count[keep],
            "count": count[keep],
        }
    )


def roc_curve(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points at every distinct probability, as sklearn with drop_intermediate=False.

    Returns:
        fpr, tpr and thresholds (decreasing; the first is +inf, calling nothing positive).
        fpr (tpr) is NaN when there are no negatives (positives).

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    y_arr = binary_labels(y)
    p_arr = probabilities(p, len(y_arr))
    order = np.argsort(-p_arr, kind="stable")
    p_sorted, y_sorted = p_arr[order], y_arr[order]
    # Index of the last row of each run of equal probabilities (the slice guards no rows).
    last = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), len(p_sorted) - 1][: len(p_sorted)]
    tps = np.r_[0.0, np.cumsum(y_sorted)[last]]
    fps = np.r_[0.0, last + 1 - tps[1:]]
    thresholds = np.r_[np.inf, p_sorted[last]]
    return ratio(fps, fps[-1]), ratio(tps, tps[-1]), thresholds


def youden_threshold(y: ArrayLike, p: ArrayLike, fallback: float = 0.5) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1.

    Candidates are the distinct probabilities (positive when p >= threshold). Among equal
    J the candidate closest to 0.5 wins, then the larger one, so the choice is
    deterministic and not pushed to an extreme by a plateau.

    Args:
        y: 1 for the positive class, 0 otherwise (validation data).
        p: probability of the positive class.
        fallback: returned when a class is absent and J is undefined.

    Returns:
        The threshold.

    Raises:
        ValueError: labels are not 0/1 or probabilities are not within [0, 1].
    """
    fpr, tpr, thresholds = roc_curve(y, p)
    if len(thresholds) < 2 or np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
        return float(fallback)
    j = (tpr - fpr)[1:]
    candidates = thresholds[1:][j >= j.max() - 1e-12]
    return float(min(candidates, key=lambda t: (abs(t - 0.5), -t)))


def aggregate_patients(patients: ArrayLike, y: ArrayLike, p: ArrayLike) -> pd.DataFrame:
    """One probability per patient: the mean of its slices' probabilities.

    The mean treats the two classes alike and does not grow with the number of slices
    (the maximum would push patients with many slices toward the positive class).

    Args:
        patients: patient id of each slice.
        y: 1 for the positive class, 0 otherwise, per slice.
        p: probability of the positive class, per slice.

    Returns:
        Columns `patient`, `y`, `p` and `n_slices`, one row per patient, sorted by patient.

    Raises:
        ValueError: a patient has slices of both classes, or labels or probabilities are
            invalid.
    """
    y_arr = binary_labels(y)
    p_arr = probabilities(p, len(y_arr))
    pts = group_by_patient(y_arr, patients)
    n_slices = np.bincount(pts.codes, minlength=pts.n)
    return pd.DataFrame(
        {
            "patient": pts.ids,
            "y": pts.labels,
            "p": ratio(per_patient(p_arr, pts), n_slices),
            "n_slices": n_slices,
        }
    )


def resample_patients(
    patient_labels: ArrayLike, n_bootstrap: int, seed: int = 0, stratify: bool = True
) -> np.ndarray:
    """Bootstrap resamples of patients, as draw counts.

    Args:
        patient_labels: the label (0/1) of each patient.
        n_bootstrap: number of resamples.
        seed: seeds the generator; equal inputs and seed give equal resamples.
        stratify: resample within each label, keeping each class's number of patients.

    Returns:
        Array (n_bootstrap, n_patients): how many times each patient is drawn per resample.

    Raises:
        ValueError: n_bootstrap is below 1.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    labels = np.asarray(patient_labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [None]
    counts = np.zeros(n_bootstrap * n)
    offsets = (np.arange(n_bootstrap) * n)[:, None]
    for members in strata:
        pool = np.arange(n) if members is None else members
        draws = pool[rng.integers(0, len(pool), size=(n_bootstrap, len(pool)))]
        counts += np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n)
    return counts.reshape(n_bootstrap, n)


def resampled_metrics(
    y: ArrayLike,
    p: ArrayLike,
    patients: ArrayLike,
    threshold: float,
    counts: np.ndarray,
    n_bins: int = 10,
) -> pd.DataFrame:
    """Every metric on each patient resample, each patient bringing all its rows.

    Args:
        y: 1 for the positive class, 0 otherwise, per row.
        p: probability of the positive class, per row.
        patients: patient id of each row.
        threshold: decision threshold for the threshold metrics.
        counts: (n_resamples, n_patients) draw counts, patients in sorted id order (as
            from `resample_patients` on `aggregate_patients(...)["y"]`).
        n_bins: calibration bins for the ECE.

    Returns:
        One row per resample, one column per metric of ALL_METRICS.

    Raises:
        ValueError: invalid labels or probabilities, a patient with both classes, or
            counts whose width is not the number of patients.
    """
    y_arr = binary_labels(y)
    p_arr = probabilities(p, len(y_arr))
    pts = group_by_patient(y_arr, patients)
    weights = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    if weights.shape[1] != pts.n:
        raise ValueError(f"counts have {weights.shape[1]} columns for {pts.n} patients")
    stats = all_stats(y_arr, p_arr, threshold, pts, weights, n_bins)
    return pd.DataFrame(stats, columns=list(ALL_METRICS))


def percentile_interval(samples: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples, ignoring NaN; (NaN, NaN) when none is finite.

    Raises:
        ValueError: confidence is not strictly between 0 and 1.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    arr = np.asarray(samples, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    low, high = np.quantile(arr, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_metrics(
    y: ArrayLike,
    p: ArrayLike,
    patients: ArrayLike,
    threshold: float | np.ndarray,
    *,
    options: BootstrapOptions = DEFAULT_BOOTSTRAP,
    stratify: bool = True,
) -> dict[str, Estimate]:
    """Every metric with a percentile interval from a patient bootstrap.

    For slice-level metrics pass one row per slice; for patient-level metrics pass the
    rows of `aggregate_patients` (each patient its own id).

    Args:
        y: 1 for the positive class, 0 otherwise, per row.
        p: probability of the positive class, per row.
        patients: patient id of each row; the unit that is resampled.
        threshold: decision threshold for the threshold metrics, or one per row (pooled
            cross-validation folds, each at the threshold its fold chose).
        options: resamples, coverage, calibration bins (of the ECE) and seed.
        stratify: resample patients within each class.

    Returns:
        Metric name (ALL_METRICS) -> Estimate.

    Raises:
        ValueError: invalid labels or probabilities, a patient with both classes, or an
            invalid n_bootstrap or confidence.
    """
    y_arr = binary_labels(y)
    p_arr = probabilities(p, len(y_arr))
    pts = group_by_patient(y_arr, patients)
    cut = np.asarray(threshold, dtype=float)
    if cut.ndim and cut.shape != y_arr.shape:
        raise ValueError(f"{cut.size} thresholds for {y_arr.size} rows; give one, or one per row")
    counts = resample_patients(pts.labels, options.n_bootstrap, options.seed, stratify)
    n_bins = options.calibration_bins
    point = all_stats(y_arr, p_arr, cut, pts, np.ones((1, pts.n)), n_bins)[0]
    samples = all_stats(y_arr, p_arr, cut, pts, counts, n_bins)
    return {
        name: Estimate(float(point[i]), *percentile_interval(samples[:, i], options.confidence))
        for i, name in enumerate(ALL_METRICS)
    }


def compare_auc(
    y: ArrayLike,
    p_first: ArrayLike,
    p_second: ArrayLike,
    patients: ArrayLike,
    *,
    options: BootstrapOptions = DEFAULT_BOOTSTRAP,
    stratify: bool = True,
) -> AucComparison:
    """Paired patient bootstrap of the AUC difference of two models on the same rows.

    Both AUCs are computed on the same resample each time, so the interval reflects the
    correlation between the models. The two-sided p-value inverts the percentile
    interval: p = 2 * min(share of resampled differences <= 0, share >= 0), each share
    counted as (k + 1) / (B + 1) so that it is never 0, capped at 1. It is below 1 -
    confidence about when the interval excludes 0; identical models give p = 1.

    Args:
        y: 1 for the positive class, 0 otherwise, per row.
        p_first: probabilities of the first model.
        p_second: probabilities of the second model, for the same rows.
        patients: patient id of each row.
        options: resamples, coverage of the interval of the difference, and seed.
        stratify: resample patients within each class.

    Returns:
        The AUC difference (first - second) with its interval, and the p-value; NaN when
        a class is absent.

    Raises:
        ValueError: invalid labels or probabilities, or a patient with both classes.
    """
    y_arr = binary_labels(y)
    p_a = probabilities(p_first, len(y_arr))
    p_b = probabilities(p_second, len(y_arr))
    pts = group_by_patient(y_arr, patients)
    counts = resample_patients(pts.labels, options.n_bootstrap, options.seed, stratify)
    ones = np.ones((1, pts.n))
    point = float(auc(y_arr, p_a, pts, ones)[0] - auc(y_arr, p_b, pts, ones)[0])
    diffs = auc(y_arr, p_a, pts, counts) - auc(y_arr, p_b, pts, counts)
    diffs = diffs[np.isfinite(diffs)]
    low, high = percentile_interval(diffs, options.confidence)
    if diffs.size == 0:
        return AucComparison(Estimate(point, low, high), float("nan"))
    below = (np.sum(diffs <= 0) + 1) / (diffs.size + 1)
    above = (np.sum(diffs >= 0) + 1) / (diffs.size + 1)
    return AucComparison(Estimate(point, low, high), float(min(1.0, 2 * min(below, above))))
