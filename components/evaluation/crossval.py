"""Cross-validation: every fold evaluated on its own, then the out-of-fold predictions pooled.

Inside each fold everything is chosen on that fold's validation patients only, exactly as
in a single split (`candidates.score_candidates`): each candidate's thresholds and the ensemble's
members. The pooled result then scores every patient once on test (the fold that held it
out) and once on validation, each row at the threshold its own fold chose, with patient
bootstrap CIs over all patients; the selection ranks the pooled validation metric.

A pooled candidate is the fold ensemble that the registry registers: the mean probability
of its k fold models (for `ensemble`, of every fold's members), at the median of the folds'
thresholds. The pooled test metrics estimate how the procedure generalises; the fold
ensemble, which averages k models each trained on (k-2)/k of the patients, is expected to
do at least as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from components.data.split import FOLD_COLUMN
from components.evaluation.candidates import (
    ENSEMBLE,
    SPLITS,
    CandidateResult,
    EvaluationResults,
    counts,
    measure,
    threshold_column,
)
from components.evaluation.metrics import DEFAULT_BOOTSTRAP, BootstrapOptions
from components.evaluation.selection import compare_candidates, rank_candidates
from components.metric_names import LEVELS
from components.training.folds import fold_label


def _pooled_frame(per_fold: Sequence[CandidateResult]) -> pd.DataFrame:
    """The folds' val and test predictions of one candidate, each row with its fold and the
    thresholds that fold chose."""
    frames = []
    for number, candidate in enumerate(per_fold):
        frame = candidate.predictions.copy()
        frame[FOLD_COLUMN] = number
        for level in LEVELS:
            frame[threshold_column(level)] = candidate.thresholds[level]
        frames.append(frame)
    pooled = pd.concat(frames, ignore_index=True)
    for split in SPLITS:
        rows = pooled[pooled["split"] == split]
        if rows["image_id"].duplicated().any():
            raise ValueError(
                f"{per_fold[0].name}: a slice is in {split} in two folds; the folds must "
                "hold every patient out once (rerun `myelomet split`)"
            )
    return pooled.sort_values(["split", "image_id"], ignore_index=True)


def pool_candidate(
    per_fold: Sequence[CandidateResult], options: BootstrapOptions = DEFAULT_BOOTSTRAP
) -> CandidateResult:
    """One candidate's out-of-fold result over all folds (see the module docstring).

    Args:
        per_fold: the candidate's result in each fold, in fold order.
        options: as in `candidates.score_candidates`.

    Returns:
        A CandidateResult whose members are the fold models (`fold-<f>/<backbone>`), whose
        thresholds are the folds' medians and whose predictions carry `fold` and the
        per-row thresholds.

    Raises:
        ValueError: the folds test or validate a slice twice.
    """
    frame = _pooled_frame(per_fold)
    thresholds = {
        level: float(np.median([c.thresholds[level] for c in per_fold])) for level in LEVELS
    }
    metrics, reliability = measure(frame, thresholds, options)
    return CandidateResult(
        name=per_fold[0].name,
        members=tuple(
            f"{fold_label(number)}/{member}"
            for number, candidate in enumerate(per_fold)
            for member in candidate.members
        ),
        thresholds=thresholds,
        metrics=metrics,
        counts={split: counts(frame[frame["split"] == split]) for split in SPLITS},
        reliability=reliability,
        predictions=frame,
    )


def cross_validate(
    folds: Sequence[EvaluationResults], options: BootstrapOptions = DEFAULT_BOOTSTRAP
) -> EvaluationResults:
    """Pool the folds' evaluations (each made by `candidates.score_candidates` on one fold).

    Args:
        folds: one EvaluationResults per fold, in fold order.
        options: as in `candidates.score_candidates`.

    Returns:
        EvaluationResults over every patient: candidates as in the folds (those present in
        all), ranked by their pooled validation `select_metric`; `fold_results` holds the
        folds' own results.

    Raises:
        ValueError: fewer than two folds, or folds that disagree on the select metric.
    """
    if len(folds) < 2:
        raise ValueError(f"cross-validation pools at least 2 folds, got {len(folds)}")
    first = folds[0]
    if any(f.select_metric != first.select_metric for f in folds):
        raise ValueError("the folds were evaluated with different select metrics")
    names = [n for n in first.candidates if all(n in f.candidates for f in folds)]
    candidates = {
        name: pool_candidate([f.candidates[name] for f in folds], options) for name in names
    }
    ranking = tuple(rank_candidates(candidates, first.select_metric))
    return EvaluationResults(
        candidates=candidates,
        classes=first.classes,
        select_metric=first.select_metric,
        selected=ranking[0],
        ranking=ranking,
        ensemble_members=candidates[ENSEMBLE].members if ENSEMBLE in candidates else (),
        comparisons=compare_candidates(candidates, ranking, options),
        options=options,
        fold_results=tuple(folds),
    )


def fold_spread(results: EvaluationResults, metric: str = "auc") -> pd.DataFrame:
    """Each candidate's test `metric` in every fold, at both levels, beside the pooled one.

    Returns:
        One row per candidate in ranking order: `candidate`, then per level the columns
        `<level> fold <f>`, `<level> mean`, `<level> sd` and `<level> pooled`; empty
        without folds.
    """
    rows = []
    for name in results.ranking:
        row: dict[str, object] = {"candidate": name}
        for level in LEVELS:
            values = [
                fold.candidates[name].metrics["test"][level][metric].value
                for fold in results.fold_results
            ]
            for number, value in enumerate(values):
                row[f"{level} fold {number}"] = value
            row[f"{level} mean"] = float(np.nanmean(values)) if values else np.nan
            row[f"{level} sd"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else np.nan
            row[f"{level} pooled"] = results.candidates[name].metrics["test"][level][metric].value
        rows.append(row)
    return pd.DataFrame(rows) if results.fold_results else pd.DataFrame()
