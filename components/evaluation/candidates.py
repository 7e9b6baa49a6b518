"""Evaluation of the trained backbones and their ensemble: thresholds, CIs, selection.

Everything that is chosen is chosen on the validation split and then fixed for the test
split, which is only measured:

- per candidate, the decision threshold (Youden's J on validation slices for slice
  metrics, on validation patients for patient metrics);
- the members of the ensemble (top-k backbones by the validation `select_metric`);
- the selected candidate (best validation `select_metric`, first of
  `selection.rank_candidates`).

A candidate is a backbone or `ensemble` (the mean probability of its members per image).
Patient-level rows are the mean slice probability per patient (`aggregate_patients`).
Every metric comes with a percentile interval from a patient bootstrap (`metrics`); all
candidates share the seed, so on the same patients they are scored on the same resamples.
Validation metrics are measured at the threshold chosen on validation, so they are
optimistic; only the test metrics estimate performance. What is written from the results
(metrics.json, plot data, MLflow metrics) is in `outputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import PREDICTIONS_FILE, probability_column
from components.evaluation.metrics import (
    DEFAULT_BOOTSTRAP,
    BootstrapOptions,
    Estimate,
    aggregate_patients,
    bootstrap_metrics,
    reliability_curve,
    youden_threshold,
)
from components.evaluation.selection import Comparison, compare_candidates, rank_candidates
from components.metric_names import LEVELS, parse_metric_name

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

    def scored_rows(self, split: str, level: str) -> pd.DataFrame:
        """`rows` with the `threshold` each row is called at (see `scored_rows`)."""
        return scored_rows(self.predictions, split, level, self.thresholds[level])


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
        options: how the intervals and comparisons were computed.
        fold_results: with cross-validation, each fold's own results, pooled into these
            (`crossval.cross_validate`); empty for a single split.
    """

    candidates: dict[str, CandidateResult]
    classes: tuple[str, str]
    select_metric: str
    selected: str
    ranking: tuple[str, ...]
    ensemble_members: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    options: BootstrapOptions
    fold_results: tuple[EvaluationResults, ...] = ()


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


def threshold_column(level: str) -> str:
    """The predictions' column of per-row thresholds (pooled cross-validation folds)."""
    return f"threshold_{level}"


def scored_rows(frame: pd.DataFrame, split: str, level: str, threshold: float) -> pd.DataFrame:
    """The rows of a split at a level, with the `threshold` each is called at: `threshold`,
    or where the frame carries `threshold_column(level)` (cross-validation folds pooled, each
    at the threshold its fold chose) that row's, or that patient's."""
    rows = _level_rows(frame, split, level)
    column = threshold_column(level)
    if column not in frame:
        return rows.assign(threshold=float(threshold))
    if level == "slice":
        return rows.assign(threshold=rows[column].to_numpy(float))
    own = frame[frame["split"] == split].drop_duplicates("patient").set_index("patient")[column]
    return rows.assign(threshold=rows["patient"].map(own).to_numpy(float))


def measure(
    frame: pd.DataFrame,
    thresholds: dict[str, float],
    options: BootstrapOptions,
) -> tuple[dict[str, dict[str, dict[str, Estimate]]], dict[str, dict[str, pd.DataFrame]]]:
    """Every metric with its patient-bootstrap interval, and the reliability curve, per
    split and level, each row called at its threshold (`scored_rows`).

    Returns:
        split -> level -> metric -> Estimate, and split -> level -> reliability curve.
    """
    metrics: dict[str, dict[str, dict[str, Estimate]]] = {}
    reliability: dict[str, dict[str, pd.DataFrame]] = {}
    for split in SPLITS:
        metrics[split], reliability[split] = {}, {}
        for level in LEVELS:
            rows = scored_rows(frame, split, level, thresholds[level])
            metrics[split][level] = bootstrap_metrics(
                rows["y"].to_numpy(),
                rows["p"].to_numpy(),
                rows["patient"].to_numpy(),
                rows["threshold"].to_numpy(float),
                options=options,
            )
            reliability[split][level] = reliability_curve(
                rows["y"], rows["p"], options.calibration_bins
            )
    return metrics, reliability


def counts(frame: pd.DataFrame) -> dict[str, int]:
    """Slices, patients and positive patients of a frame with patient and y."""
    patients = frame.drop_duplicates("patient")
    return {
        "n_slices": len(frame),
        "n_patients": len(patients),
        "n_positive_patients": int(patients["y"].sum()),
    }


def score_candidate(
    name: str,
    frame: pd.DataFrame,
    *,
    members: Sequence[str] | None = None,
    options: BootstrapOptions = DEFAULT_BOOTSTRAP,
) -> CandidateResult:
    """Choose the thresholds on validation, then measure validation and test.

    Args:
        name: the candidate's name.
        frame: val and test slices with image_id, patient, label, split, p and y (1 =
            positive class).
        members: backbones the candidate averages; (name,) when omitted.
        options: resamples, coverage, calibration bins and seed of the intervals.

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
    metrics, reliability = measure(frame, thresholds, options)
    return CandidateResult(
        name=name,
        members=tuple(members) if members else (name,),
        thresholds=thresholds,
        metrics=metrics,
        counts={split: counts(_level_rows(frame, split, "slice")) for split in SPLITS},
        reliability=reliability,
        predictions=frame,
    )


def _classes(classes: Sequence[str], positive_class: str) -> tuple[str, str]:
    if len(classes) != 2 or positive_class not in classes or len(set(classes)) != 2:
        raise ValueError(f"need two classes including {positive_class!r}, got {list(classes)}")
    negative = next(c for c in classes if c != positive_class)
    return positive_class, negative


def score_candidates(
    predictions: Mapping[str, pd.DataFrame],
    classes: Sequence[str],
    positive_class: str,
    *,
    options: BootstrapOptions = DEFAULT_BOOTSTRAP,
    select_metric: str = "patient_auc",
    ensemble_top_k: int = 3,
) -> EvaluationResults:
    """Evaluate every backbone and the ensemble; select on validation; compare on test.

    Args:
        predictions: backbone -> frame with PREDICTION_COLUMNS (train rows are ignored).
        classes: the two class names (params `classes`).
        positive_class: the class whose probability is `p`.
        options: resamples, coverage, calibration bins and seed, shared by all candidates
            and comparisons (`BootstrapOptions.from_config`).
        select_metric: `<level>_<metric>` ranking candidates on validation.
        ensemble_top_k: number of best backbones averaged into `ensemble`; below 2, or
            with fewer than 2 backbones, there is no ensemble.

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
    candidates = {
        name: score_candidate(name, frame, options=options) for name, frame in frames.items()
    }
    members: tuple[str, ...] = ()
    if ensemble_top_k >= 2 and len(frames) >= 2:
        members = tuple(rank_candidates(candidates, select_metric)[:ensemble_top_k])
        candidates[ENSEMBLE] = score_candidate(
            ENSEMBLE, ensemble_predictions(frames, members), members=members, options=options
        )
    ranking = tuple(rank_candidates(candidates, select_metric))
    return EvaluationResults(
        candidates=candidates,
        classes=class_pair,
        select_metric=select_metric,
        selected=ranking[0],
        ranking=ranking,
        ensemble_members=members,
        comparisons=compare_candidates(candidates, ranking, options),
        options=options,
    )
