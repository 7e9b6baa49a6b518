"""The arithmetic behind `metrics`: inputs checked, rows grouped by patient, and every
statistic computed from per-patient sums weighted by how often each patient is drawn.

`weights` is always (n_resamples, n_patients): one row of draw counts per bootstrap
resample, or a single row of ones for the point estimate, so one matrix product evaluates
all resamples at once. Row-level statistics treat every row as its own patient
(`singletons`). Undefined values (a zero denominator, a missing class) are NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Resamples x rows processed at once by the AUC, to bound memory on large test sets.
_AUC_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Patients:
    """Rows mapped to patients: `codes[i]` is the patient index of row i."""

    ids: np.ndarray
    codes: np.ndarray
    labels: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)


def binary_labels(y: npt.ArrayLike) -> np.ndarray:
    """Labels as float 0/1 (1 = positive class).

    Raises:
        ValueError: labels are not one-dimensional or not 0/1.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.float64)
    values = set(np.unique(arr).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1 (1 = positive class), got values {sorted(values)}")
    return arr.astype(np.float64)


def probabilities(p: npt.ArrayLike, n: int) -> np.ndarray:
    """Probabilities of the positive class as floats, one per row of the n labels.

    Raises:
        ValueError: not one per row, or not finite and within [0, 1].
    """
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"probabilities have shape {arr.shape}, labels ({n},); pass one per row")
    if not np.all(np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise ValueError("probabilities must be finite and within [0, 1]; pass p, not logits")
    return arr


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def group_by_patient(y: np.ndarray, patients: npt.ArrayLike) -> Patients:
    """Map rows to patients (ids sorted) and give each patient its label.

    Raises:
        ValueError: not one patient per row, or a patient with rows of both classes.
    """
    arr = np.asarray(patients)
    if arr.shape != y.shape:
        raise ValueError(f"patients have shape {arr.shape}, labels {y.shape}; pass one per row")
    ids, codes = np.unique(arr, return_inverse=True)
    positives = np.bincount(codes, weights=y, minlength=len(ids))
    rows = np.bincount(codes, minlength=len(ids))
    mixed = (positives > 0) & (positives < rows)
    if mixed.any():
        raise ValueError(
            f"patients {ids[mixed][:5].tolist()} have rows of both classes; "
            "every patient must carry one label"
        )
    return Patients(ids=ids, codes=codes, labels=(positives > 0).astype(np.int64))


def singletons(n: int) -> Patients:
    """Every row its own patient (labels unused): unweighted, row-level statistics."""
    idx = np.arange(n)
    return Patients(ids=idx, codes=idx, labels=np.zeros(n, dtype=np.int64))


def per_patient(values: np.ndarray, pts: Patients) -> np.ndarray:
    """Sum of the row values per patient."""
    return np.bincount(pts.codes, weights=values, minlength=pts.n)


def confusion(
    y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray, pts: Patients, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted tp, fp, tn, fn (positive when p >= threshold), one value per row of weights."""
    pred = (p >= threshold).astype(np.float64)
    cells = np.stack(
        [
            per_patient(y * pred, pts),
            per_patient((1 - y) * pred, pts),
            per_patient((1 - y) * (1 - pred), pts),
            per_patient(y * (1 - pred), pts),
        ],
        axis=1,
    )
    tp, fp, tn, fn = (weights @ cells).T
    return tp, fp, tn, fn


def threshold_stats(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """THRESHOLD_METRICS (columns) from the confusion counts, one row per resample."""
    n = tp + fp + tn + fn
    accuracy = ratio(tp + tn, n)
    expected = ratio((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), n * n)
    return np.stack(
        [
            ratio(tp, tp + fn),
            ratio(tn, tn + fp),
            ratio(tp, tp + fp),
            ratio(tn, tn + fn),
            accuracy,
            ratio(2 * tp, 2 * tp + fp + fn),
            ratio(accuracy - expected, 1 - expected),
        ],
        axis=1,
    )


def _chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, _AUC_CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, start + step)


def auc(y: np.ndarray, p: np.ndarray, pts: Patients, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC (ties count one half), one value per row of weights."""
    out = np.full(len(weights), np.nan)
    if len(y) == 0:
        return out
    order = np.argsort(p, kind="stable")
    y_sorted, codes_sorted = y[order], pts.codes[order]
    starts = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0])
    for rows in _chunks(len(weights), len(y)):
        w = weights[rows][:, codes_sorted]
        pos = np.add.reduceat(w * y_sorted, starts, axis=1)
        neg = np.add.reduceat(w, starts, axis=1) - pos
        neg_below = np.cumsum(neg, axis=1) - neg
        num = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
        out[rows] = ratio(num, pos.sum(axis=1) * neg.sum(axis=1))
    return out


def bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Index of the equal-width bin on [0, 1] of each probability."""
    # Same edges and side as sklearn.calibration.calibration_curve(strategy="uniform").
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p)


def calibration_stats(
    y: np.ndarray, p: np.ndarray, pts: Patients, weights: np.ndarray, n_bins: int
) -> np.ndarray:
    """Brier score and ECE (columns) for each row of weights."""
    rows = weights @ np.bincount(pts.codes, minlength=pts.n).astype(np.float64)
    brier = ratio(weights @ per_patient((p - y) ** 2, pts), rows)
    cell = pts.codes * n_bins + bin_index(p, n_bins)
    size = pts.n * n_bins
    sum_p = np.bincount(cell, weights=p, minlength=size).reshape(pts.n, n_bins)
    sum_y = np.bincount(cell, weights=y, minlength=size).reshape(pts.n, n_bins)
    # ECE = sum over bins of (n_b / n) |mean p_b - mean y_b| = sum |sum p_b - sum y_b| / n
    ece = ratio(np.abs(weights @ sum_p - weights @ sum_y).sum(axis=1), rows)
    return np.stack([brier, ece], axis=1)


def all_stats(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | np.ndarray,
    pts: Patients,
    weights: np.ndarray,
    n_bins: int,
) -> np.ndarray:
    """Every metric of ALL_METRICS (columns) for each row of patient weights."""
    return np.column_stack(
        [
            threshold_stats(*confusion(y, p, threshold, pts, weights)),
            auc(y, p, pts, weights),
            calibration_stats(y, p, pts, weights, n_bins),
        ]
    )
