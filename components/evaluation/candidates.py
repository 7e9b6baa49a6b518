"""Evaluation of the trained backbones and their ensemble: thresholds, CIs, selection.

Everything that is chosen is chosen on the validation split and then fixed for the test
split, which is only measured:

- per candidate, the decision threshold (Youden's J on validation slices for slice
  metrics, on validation patients for patient metrics);
- the members of the ensemble (top-k backbones by the validation `select_metric`);
- the selected candidate (best validation `select_metric`, first of `rank_candidates`).

A candidate is a backbone or `ensemble` (the mean probability of its members per image).
Patient-level rows are the mean slice probability per patient (`aggregate_patients`).
Every metric comes with a percentile interval from a patient bootstrap (`metrics`); all
candidates share the seed, so on the same patients they are scored on the same resamples.
Validation metrics are measured at the threshold chosen on validation, so they are
optimistic; only the test metrics estimate performance.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import (
    COMPARISONS_FILE,
    EVALUATION_METRICS_FILE,
    PREDICTIONS_FILE,
    probability_column,
)
from components.evaluation.metrics import (
    Estimate,
    aggregate_patients,
    bootstrap_metrics,
    compare_auc,
    reliability_curve,
    roc_curve,
    youden_threshold,
)
from components.metric_names import LEVELS, LOWER_IS_BETTER, parse_metric_name

SPLITS = ("val", "test")
ENSEMBLE = "ensemble"
PREDICTION_COLUMNS = ("image_id", "patient", "label", "split", "p")
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class CandidateResult:
    """One candidate measured on validation and test.

    Attributes:
        name: backbone name or `ensemble`.
        members: the backbones whose probabilities it averages (itself for a backbone).
        thresholds: level -> threshold chosen on validation.
        metrics: split -> level -> metric (ALL_METRICS) -> Estimate.
        counts: split -> {"n_slices", "n_patients", "n_positive_patients"}.
        reliability: split -> level -> reliability curve (`metrics.reliability_curve`).
        predictions: the val and test slices: image_id, patient, label, split, p, y.
    """

    name: str
    members: tuple[str, ...]
    thresholds: dict[str, float]
    metrics: dict[str, dict[str, dict[str, Estimate]]]
    counts: dict[str, dict[str, int]]
    reliability: dict[str, dict[str, pd.DataFrame]]
    predictions: pd.DataFrame

    def rows(self, split: str, level: str) -> pd.DataFrame:
        """The rows scored at a split and level: slices, or one per patient (patient, y, p)."""
        return _level_rows(self.predictions, split, level)


@dataclass(frozen=True)
class Comparison:
    """Test-set patient-level AUC of `first` minus that of `second` (paired bootstrap)."""

    first: str
    second: str
    difference: Estimate
    p_value: float


@dataclass(frozen=True)
class EvaluationResults:
    """All candidates, the selection and the pairwise comparisons.

    Attributes:
        candidates: name -> CandidateResult, backbones in input order, then `ensemble`.
        classes: the two class names, positive first.
        select_metric: `<level>_<metric>` used for the ensemble and the selection.
        selected: name of the best candidate on validation.
        ranking: candidate names, best on validation first.
        ensemble_members: backbones averaged by `ensemble`; empty when there is none.
        comparisons: every pair of candidates, in ranking order, on test.
        n_bootstrap: resamples per interval.
        confidence: coverage of the intervals.
    """

    candidates: dict[str, CandidateResult]
    classes: tuple[str, str]
    select_metric: str
    selected: str
    ranking: tuple[str, ...]
    ensemble_members: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    n_bootstrap: int
    confidence: float


def load_predictions(
    models_dir: str | Path, backbones: Sequence[str], positive_class: str
) -> dict[str, pd.DataFrame]:
    """Read `<models_dir>/<backbone>/predictions.csv` of each backbone.

    Args:
        models_dir: the training output folder.
        backbones: backbone names, in the order wanted.
        positive_class: its probability column (`artifacts.probability_column`) becomes `p`.

    Returns:
        Backbone -> DataFrame with the columns PREDICTION_COLUMNS.

    Raises:
        FileNotFoundError: a backbone has no predictions file.
        ValueError: a file lacks a needed column.
    """
    frames = {}
    for backbone in backbones:
        path = Path(models_dir) / backbone / PREDICTIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no predictions; run `myelomet train` for {backbone}")
        frame = pd.read_csv(path, dtype={c: str for c in ("image_id", "patient", "label", "split")})
        column = probability_column(positive_class)
        needed = [*PREDICTION_COLUMNS[:-1], column]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path}: lacks columns {missing}; retrain {backbone} with positive_class "
                f"{positive_class!r} or fix the file"
            )
        frames[backbone] = frame[needed].rename(columns={column: "p"})
    return frames


def _prepared(name: str, frame: pd.DataFrame, classes: tuple[str, str]) -> pd.DataFrame:
    """The val and test rows of one candidate's predictions, checked, with y added."""
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"predictions of {name} lack columns {missing}")
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise ValueError(f"predictions of {name} have labels {unknown}; classes are {classes}")
    out = frame.loc[frame["split"].isin(SPLITS), list(PREDICTION_COLUMNS)].copy()
    for split in SPLITS:
        if not (out["split"] == split).any():
            raise ValueError(
                f"predictions of {name} have no {split!r} rows; evaluation needs both "
                f"{list(SPLITS)} (check data/splits/split.csv)"
            )
    if out["image_id"].duplicated().any():
        raise ValueError(f"predictions of {name} repeat image_ids in val/test; one row per slice")
    p = pd.to_numeric(out["p"], errors="coerce")
    if p.isna().any() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"predictions of {name}: p must be a probability in [0, 1]")
    out["p"] = p.astype(float)
    out["y"] = (out["label"] == classes[0]).astype(int)
    return out.sort_values("image_id", ignore_index=True)


def _check_same_rows(frames: Mapping[str, pd.DataFrame]) -> None:
    keys = ["image_id", "patient", "label", "split"]
    names = list(frames)
    reference = frames[names[0]][keys]
    for name in names[1:]:
        if not frames[name][keys].equals(reference):
            raise ValueError(
                f"predictions of {names[0]} and {name} cover different val/test slices; "
                "train every backbone on the same split.csv"
            )


def ensemble_predictions(
    predictions: Mapping[str, pd.DataFrame], members: Sequence[str]
) -> pd.DataFrame:
    """Average the members' probabilities per image.

    Args:
        predictions: backbone -> frame with PREDICTION_COLUMNS over the same images.
        members: backbones to average.

    Returns:
        Frame with PREDICTION_COLUMNS (and any other columns of the first member) where p
        is the members' mean, sorted by image_id.

    Raises:
        ValueError: no members, or the members cover different images.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    frames = {m: predictions[m].sort_values("image_id", ignore_index=True) for m in members}
    _check_same_rows(frames)
    out = frames[members[0]].copy()
    out["p"] = np.mean([frames[m]["p"].to_numpy(float) for m in members], axis=0)
    return out


def _level_rows(frame: pd.DataFrame, split: str, level: str) -> pd.DataFrame:
    rows = frame[frame["split"] == split]
    if level == "slice":
        return rows
    return aggregate_patients(rows["patient"], rows["y"], rows["p"])


def _level_metrics(
    rows: pd.DataFrame, threshold: float, n_bootstrap: int, confidence: float, bins: int, seed: int
) -> dict[str, Estimate]:
    return bootstrap_metrics(
        rows["y"].to_numpy(),
        rows["p"].to_numpy(),
        rows["patient"].to_numpy(),
        threshold,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        n_bins=bins,
        seed=seed,
    )


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    patients = frame.drop_duplicates("patient")
    return {
        "n_slices": len(frame),
        "n_patients": len(patients),
        "n_positive_patients": int(patients["y"].sum()),
    }


def evaluate_candidate(
    name: str,
    frame: pd.DataFrame,
    *,
    members: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    calibration_bins: int = 10,
    seed: int = 0,
) -> CandidateResult:
    """Choose the thresholds on validation, then measure validation and test.

    Args:
        name: the candidate's name.
        frame: val and test slices with image_id, patient, label, split, p and y (1 =
            positive class).
        members: backbones the candidate averages; (name,) when omitted.
        n_bootstrap: resamples per interval.
        confidence: coverage of the intervals.
        calibration_bins: equal-width bins of the ECE and the reliability curve.
        seed: seed of the patient bootstrap.

    Returns:
        The CandidateResult.

    Raises:
        ValueError: the frame lacks a column or a val or test split.
    """
    missing = [c for c in (*PREDICTION_COLUMNS, "y") if c not in frame.columns]
    absent = [s for s in SPLITS if not (frame["split"] == s).any()] if not missing else []
    if missing or absent:
        raise ValueError(f"{name}: frame lacks columns {missing} or splits {absent}")
    thresholds = {}
    for level in LEVELS:
        val = _level_rows(frame, "val", level)
        thresholds[level] = youden_threshold(val["y"], val["p"], FALLBACK_THRESHOLD)
    metrics: dict[str, dict[str, dict[str, Estimate]]] = {}
    reliability: dict[str, dict[str, pd.DataFrame]] = {}
    for split in SPLITS:
        metrics[split], reliability[split] = {}, {}
        for level in LEVELS:
            rows = _level_rows(frame, split, level)
            metrics[split][level] = _level_metrics(
                rows, thresholds[level], n_bootstrap, confidence, calibration_bins, seed
            )
            reliability[split][level] = reliability_curve(rows["y"], rows["p"], calibration_bins)
    return CandidateResult(
        name=name,
        members=tuple(members) if members else (name,),
        thresholds=thresholds,
        metrics=metrics,
        counts={split: _counts(_level_rows(frame, split, "slice")) for split in SPLITS},
        reliability=reliability,
        predictions=frame,
    )


def _score(estimate: Estimate, metric: str) -> float:
    """Smaller is better; NaN ranks last."""
    value = estimate.value if metric in LOWER_IS_BETTER else -estimate.value
    return value if math.isfinite(value) else math.inf


def _rank_key(
    candidate: CandidateResult, level: str, metric: str
) -> tuple[float, float, float, str]:
    val = candidate.metrics["val"]
    other = next(lvl for lvl in LEVELS if lvl != level)
    width = val[level][metric].width
    return (
        _score(val[level][metric], metric),
        _score(val[other][metric], metric),
        width if math.isfinite(width) else math.inf,
        candidate.name,
    )


def rank_candidates(results: Mapping[str, CandidateResult], select_metric: str) -> list[str]:
    """Candidate names, best first, by the VALIDATION value of `select_metric`.

    Ties (frequent at patient level, where a handful of patients often gives AUC 1.0) are
    broken by the same metric at the other level, then by the narrower interval, then by
    name; NaN values rank last.

    Raises:
        ValueError: select_metric is not `<level>_<metric>`.
    """
    level, metric = parse_metric_name(select_metric)
    return sorted(results, key=lambda n: _rank_key(results[n], level, metric))


def compare_candidates(
    results: Mapping[str, CandidateResult],
    order: Sequence[str] | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Comparison, ...]:
    """Paired patient bootstrap of the test patient-level AUC difference for every pair.

    Args:
        results: name -> CandidateResult, all on the same test patients.
        order: names in the order pairs are formed (first minus second); default sorted.
        n_bootstrap: resamples per comparison.
        confidence: coverage of the interval of the difference.
        seed: seed of the patient bootstrap.

    Returns:
        One Comparison per unordered pair.

    Raises:
        ValueError: two candidates were tested on different patients.
    """
    names = list(order) if order is not None else sorted(results)
    tables = {n: results[n].rows("test", "patient") for n in names}
    comparisons = []
    for first, second in itertools.combinations(names, 2):
        a, b = tables[first], tables[second]
        if not a[["patient", "y"]].equals(b[["patient", "y"]]):
            raise ValueError(f"{first} and {second} were tested on different patients")
        outcome = compare_auc(
            a["y"].to_numpy(),
            a["p"].to_numpy(),
            b["p"].to_numpy(),
            a["patient"].to_numpy(),
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )
        comparisons.append(Comparison(first, second, outcome.difference, outcome.p_value))
    return tuple(comparisons)


def _classes(classes: Sequence[str], positive_class: str) -> tuple[str, str]:
    if len(classes) != 2 or positive_class not in classes or len(set(classes)) != 2:
        raise ValueError(f"need two classes including {positive_class!r}, got {list(classes)}")
    negative = next(c for c in classes if c != positive_class)
    return positive_class, negative


def evaluate(
    predictions: Mapping[str, pd.DataFrame],
    classes: Sequence[str],
    positive_class: str,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    select_metric: str = "patient_auc",
    ensemble_top_k: int = 3,
    calibration_bins: int = 10,
    seed: int = 0,
) -> EvaluationResults:
    """Evaluate every backbone and the ensemble; select on validation; compare on test.

    Args:
        predictions: backbone -> frame with PREDICTION_COLUMNS (train rows are ignored).
        classes: the two class names (params `classes`).
        positive_class: the class whose probability is `p`.
        n_bootstrap: resamples per interval and per comparison.
        confidence: coverage of the intervals.
        select_metric: `<level>_<metric>` ranking candidates on validation.
        ensemble_top_k: number of best backbones averaged into `ensemble`; below 2, or
            with fewer than 2 backbones, there is no ensemble.
        calibration_bins: equal-width bins of the ECE and the reliability curves.
        seed: seed of the patient bootstrap, shared by all candidates.

    Returns:
        The EvaluationResults.

    Raises:
        ValueError: no predictions, a backbone named `ensemble`, an invalid select_metric
            or classes, or predictions that are malformed or cover different slices.
    """
    parse_metric_name(select_metric)
    class_pair = _classes(classes, positive_class)
    if not predictions:
        raise ValueError("no predictions to evaluate; run `myelomet train` first")
    if ENSEMBLE in predictions:
        raise ValueError(f"{ENSEMBLE!r} is reserved for the ensemble; rename that backbone")
    frames = {name: _prepared(name, frame, class_pair) for name, frame in predictions.items()}
    _check_same_rows(frames)
    options = {
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "calibration_bins": calibration_bins,
        "seed": seed,
    }
    candidates = {
        name: evaluate_candidate(name, frame, **options) for name, frame in frames.items()
    }
    members: tuple[str, ...] = ()
    if ensemble_top_k >= 2 and len(frames) >= 2:
        members = tuple(rank_candidates(candidates, select_metric)[:ensemble_top_k])
        candidates[ENSEMBLE] = evaluate_candidate(
            ENSEMBLE, ensemble_predictions(frames, members), members=members, **options
        )
    ranking = tuple(rank_candidates(candidates, select_metric))
    return EvaluationResults(
        candidates=candidates,
        classes=class_pair,
        select_metric=select_metric,
        selected=ranking[0],
        ranking=ranking,
        ensemble_members=members,
        comparisons=compare_candidates(
            candidates, ranking, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
        ),
        n_bootstrap=n_bootstrap,
        confidence=confidence,
    )


def _number(value: float) -> float | None:
    """A JSON-safe number: NaN and infinities become null, which DVC leaves out."""
    return round(float(value), 6) if math.isfinite(value) else None


def _estimate_json(estimate: Estimate) -> dict[str, float | None]:
    return {key: _number(value) for key, value in estimate.as_dict().items()}


def _candidate_json(candidate: CandidateResult) -> dict:
    out: dict = {"threshold": {lvl: _number(t) for lvl, t in candidate.thresholds.items()}}
    for split in SPLITS:
        out[split] = dict(candidate.counts[split])
        for level in LEVELS:
            out[split][level] = {
                metric: _estimate_json(est)
                for metric, est in candidate.metrics[split][level].items()
            }
    return out


def to_metrics_json(results: EvaluationResults) -> dict:
    """The content of reports/metrics.json, for `dvc metrics show/diff`.

    Nested dicts of numbers and strings, no lists; NaN becomes null (write it with
    `json.dump(..., allow_nan=False)`). DVC shows strings as values and skips nulls.

    Returns:
        {"candidates": {name: {"threshold": {level: t}, split: {"n_slices", "n_patients",
        "n_positive_patients", level: {metric: {"value", "ci_low", "ci_high"}}}}},
        "selection": {"selected", "metric", "ensemble_members", "value", "ci_low",
        "ci_high"}, "bootstrap": {"n", "confidence", "unit"}}; the selection's value and
        interval are the selected candidate's on validation.
    """
    level, metric = parse_metric_name(results.select_metric)
    chosen = results.candidates[results.selected].metrics["val"][level][metric]
    return {
        "candidates": {name: _candidate_json(c) for name, c in results.candidates.items()},
        "selection": {
            "selected": results.selected,
            "metric": results.select_metric,
            "split": "val",
            "ensemble_members": ",".join(results.ensemble_members),
            **_estimate_json(chosen),
        },
        "bootstrap": {
            "n": results.n_bootstrap,
            "confidence": results.confidence,
            "unit": "patient",
        },
    }


def comparisons_table(results: EvaluationResults) -> pd.DataFrame:
    """The pairwise test comparisons as a table.

    Returns:
        Columns first, second, auc_difference, ci_low, ci_high, p_value (one row per pair).
    """
    return pd.DataFrame(
        [
            {
                "first": c.first,
                "second": c.second,
                "auc_difference": c.difference.value,
                "ci_low": c.difference.ci_low,
                "ci_high": c.difference.ci_high,
                "p_value": c.p_value,
            }
            for c in results.comparisons
        ],
        columns=["first", "second", "auc_difference", "ci_low", "ci_high", "p_value"],
    )


def _check_split_level(split: str, level: str) -> None:
    if split not in SPLITS or level not in LEVELS:
        raise ValueError(f"split must be one of {SPLITS} and level one of {LEVELS}")


def roc_plot_data(
    results: EvaluationResults, split: str = "test", level: str = "patient"
) -> pd.DataFrame:
    """ROC curve points of every candidate, tidy, for `dvc plots`.

    Returns:
        Columns candidate, fpr, tpr; candidates whose split lacks a class have no rows.

    Raises:
        ValueError: unknown split or level.
    """
    _check_split_level(split, level)
    parts = []
    for name, candidate in results.candidates.items():
        rows = candidate.rows(split, level)
        fpr, tpr, _ = roc_curve(rows["y"], rows["p"])
        parts.append(pd.DataFrame({"candidate": name, "fpr": fpr, "tpr": tpr}).dropna())
    return pd.concat(parts, ignore_index=True)


def confusion_plot_data(
    results: EvaluationResults, split: str = "test", level: str = "patient"
) -> pd.DataFrame:
    """Actual and predicted class of every row at the candidate's validation threshold.

    Returns:
        Columns candidate, actual, predicted (class names), one row per slice or patient.

    Raises:
        ValueError: unknown split or level.
    """
    _check_split_level(split, level)
    positive, negative = results.classes
    parts = []
    for name, candidate in results.candidates.items():
        rows = candidate.rows(split, level)
        called = rows["p"].to_numpy() >= candidate.thresholds[level]
        parts.append(
            pd.DataFrame(
                {
                    "candidate": name,
                    "actual": np.where(rows["y"].to_numpy() == 1, positive, negative),
                    "predicted": np.where(called, positive, negative),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def calibration_plot_data(
    results: EvaluationResults, split: str = "test", level: str = "slice"
) -> pd.DataFrame:
    """Reliability curve points of every candidate, tidy, for `dvc plots`.

    Returns:
        Columns candidate, bin, p_mean, observed, count.

    Raises:
        ValueError: unknown split or level.
    """
    _check_split_level(split, level)
    parts = [
        c.reliability[split][level].assign(candidate=name) for name, c in results.candidates.items()
    ]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["candidate", "bin", "p_mean", "observed", "count"]]


def write_outputs(results: EvaluationResults, reports_dir: str | Path) -> dict[str, Path]:
    """Write what DVC tracks: metrics.json, comparisons.csv and the plot data.

    The plot data (test set, patient level; calibration at slice level) go one file per
    candidate under plots/roc/, plots/confusion/ and plots/calibration/, so `dvc plots show`
    draws one series per candidate.

    Args:
        results: the evaluation.
        reports_dir: the reports folder (params evaluation.reports_out).

    Returns:
        name -> path written: metrics, comparisons, and the three plot folders.
    """
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / EVALUATION_METRICS_FILE, "comparisons": out / COMPARISONS_FILE}
    paths["metrics"].write_text(json.dumps(to_metrics_json(results), indent=2, allow_nan=False))
    comparisons_table(results).to_csv(paths["comparisons"], index=False)
    plot_data = {
        "roc": roc_plot_data(results, "test", "patient"),
        "confusion": confusion_plot_data(results, "test", "patient"),
        "calibration": calibration_plot_data(results, "test"),
    }
    for kind, frame in plot_data.items():
        folder = out / "plots" / kind
        if folder.exists():
            for stale in folder.glob("*.csv"):
                stale.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for candidate, rows in frame.groupby("candidate", sort=False):
            rows.drop(columns="candidate").to_csv(folder / f"{candidate}.csv", index=False)
        paths[kind] = folder
    return paths


def run_metrics(candidate: CandidateResult) -> dict[str, float]:
    """A candidate's validation and test metrics for its MLflow run, under the same names
    for every candidate (`test_patient_auc`, `test_patient_auc_ci_low`, ...) so that the
    Compare view and `search_runs(order_by=...)` rank candidates; finite values only."""
    out = {}
    for split in SPLITS:
        for level, metrics in candidate.metrics[split].items():
            for metric, estimate in metrics.items():
                name = f"{split}_{level}_{metric}"
                for suffix, value in (
                    ("", estimate.value),
                    ("_ci_low", estimate.ci_low),
                    ("_ci_high", estimate.ci_high),
                ):
                    if math.isfinite(value):
                        out[name + suffix] = float(value)
    return out


def headline_metrics(results: EvaluationResults) -> dict[str, float]:
    """Test-set point values of every candidate, flat, for the study's MLflow run."""
    return {
        f"test_{level}_{metric}.{name}": float(estimate.value)
        for name, candidate in results.candidates.items()
        for level, metrics in candidate.metrics["test"].items()
        for metric, estimate in metrics.items()
    }
