"""What the evaluation writes: metrics.json, comparisons.csv and the plot data that DVC
tracks, and the flat metric dicts logged to MLflow.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components.artifacts import COMPARISONS_FILE, EVALUATION_METRICS_FILE
from components.evaluation.candidates import SPLITS, CandidateResult, EvaluationResults
from components.evaluation.crossval import fold_spread
from components.evaluation.metrics import Estimate, roc_curve
from components.machine import machine_description, machine_record
from components.metric_names import LEVELS, parse_metric_name

if TYPE_CHECKING:
    from components.tracking import DatasetInput, Store


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
        interval are the selected candidate's on validation. With cross-validation the
        candidates' metrics are the pooled out-of-fold ones, and "cross_validation":
        {"folds": k, "test_auc": {name: {level: {"fold <f>", "mean", "sd"}}}} adds the
        per-fold spread.
    """
    level, metric = parse_metric_name(results.select_metric)
    chosen = results.candidates[results.selected].metrics["val"][level][metric]
    return {
        **_cross_validation_json(results),
        "candidates": {name: _candidate_json(c) for name, c in results.candidates.items()},
        "selection": {
            "selected": results.selected,
            "metric": results.select_metric,
            "split": "val",
            "ensemble_members": ",".join(results.ensemble_members),
            **_estimate_json(chosen),
        },
        "bootstrap": {
            "n": results.options.n_bootstrap,
            "confidence": results.options.confidence,
            "unit": "patient",
        },
    }


def _cross_validation_json(results: EvaluationResults) -> dict:
    spread = fold_spread(results)
    if spread.empty:
        return {}
    per_candidate = {}
    for row in spread.to_dict("records"):
        per_candidate[row["candidate"]] = {
            level: {
                key.removeprefix(f"{level} "): _number(value)
                for key, value in row.items()
                if key.startswith(f"{level} ") and not key.endswith("pooled")
            }
            for level in LEVELS
        }
    return {"cross_validation": {"folds": len(results.fold_results), "test_auc": per_candidate}}


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
    """Actual and predicted class of every row at the candidate's validation threshold (with
    cross-validation, its fold's).

    Returns:
        Columns candidate, actual, predicted (class names), one row per slice or patient.

    Raises:
        ValueError: unknown split or level.
    """
    _check_split_level(split, level)
    positive, negative = results.classes
    parts = []
    for name, candidate in results.candidates.items():
        rows = candidate.scored_rows(split, level)
        called = rows["p"].to_numpy() >= rows["threshold"].to_numpy()
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

    metrics.json is `to_metrics_json` with `machine`: the CPU, its float-relevant instruction
    sets and the library versions the numbers were computed with (`components.machine`).

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
    content = {**to_metrics_json(results), "machine": machine_record(machine_description())}
    paths["metrics"].write_text(json.dumps(content, indent=2, allow_nan=False))
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


def log_candidate_runs(
    store: Store,
    parent_run_id: str,
    results: EvaluationResults,
    datasets: Sequence[DatasetInput] = (),
) -> dict[str, str]:
    """Every candidate's `run_metrics` into its own run of the study (`tracking.candidate_run`),
    with the data it was measured on as the run's inputs; candidate -> run id."""
    # here, not at the top: the figures and the report read this module without MLflow
    from components.tracking import candidate_run, log_run_metrics

    runs = {}
    for name, candidate in results.candidates.items():
        runs[name] = candidate_run(
            store,
            parent_run_id,
            name,
            candidate.members,
            datasets,
            cross_validated=bool(results.fold_results),
        )
        log_run_metrics(store, runs[name], run_metrics(candidate))
    return runs


def headline_metrics(results: EvaluationResults) -> dict[str, float]:
    """Test-set point values of every candidate, flat, for the study's MLflow run."""
    return {
        f"test_{level}_{metric}.{name}": float(estimate.value)
        for name, candidate in results.candidates.items()
        for level, metrics in candidate.metrics["test"].items()
        for metric, estimate in metrics.items()
    }
