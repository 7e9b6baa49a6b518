"""Prefect flow `evaluate`: score every candidate, register and promote the best, and write
the study report.

Selection uses validation only; the test set is measured once and reported with patient
bootstrap CIs. The outputs are DVC metrics and plots, an MLflow registry version, the study
page, and a summary artifact in the Prefect UI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.artifacts import STUDY_FILE
from components.config import Config, load_config
from components.evaluation import report_gather
from components.evaluation.candidates import EvaluationResults
from components.evaluation.metric_files import headline_metrics, log_candidate_runs, write_outputs
from components.evaluation.report_content import results_markdown
from components.evaluation.report_html import write_study_report
from components.registry import promotion
from components.registry_outcome import RegistryOutcome
from components.training.batches import data_paths, data_version

ARTIFACT_KEY = "study-results"
_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="score-candidates", **_TASK)
def score(cfg: Config, backbones: list[str]) -> EvaluationResults:
    return report_gather.score_study(cfg, backbones)


@task(name="write-metrics", **_TASK)
def write_metrics(cfg: Config, results: EvaluationResults) -> dict[str, Path]:
    return write_outputs(results, cfg.path(cfg.evaluation.reports_out))


@task(name="check-tracking-store", **_TASK)
def check_store(cfg: Config, parent_run_id: str) -> None:
    tracking.require_run(tracking.resolve_store(cfg.tracking, cfg.root), parent_run_id)


@task(name="log-candidate-runs", **_TASK)
def log_candidates(cfg: Config, results: EvaluationResults, parent_run_id: str) -> None:
    """Every candidate's validation and test metrics into its own run of the study."""
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    manifest, split = data_paths(cfg)
    datasets = tracking.dataset_inputs(
        {"manifest": manifest, "split": split}, data_version(manifest, split), cfg.root
    )
    log_candidate_runs(store, parent_run_id, results, datasets)


@task(name="register-and-promote", **_TASK)
def register(cfg: Config, results: EvaluationResults, parent_run_id: str) -> RegistryOutcome:
    """Register the selected candidate. Two evaluates at once, from any machines, cannot
    both take champion: the store refuses the second claim on the promotion ledger
    (`components.registry.promotion`), and its evaluate decides again."""
    return promotion.register_selected(cfg, results, parent_run_id)


@task(name="grad-cam", **_TASK)
def gradcam(cfg: Config, results: EvaluationResults) -> Path | None:
    out = cfg.path(cfg.evaluation.reports_out) / "figures" / "gradcam.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    return report_gather.gradcam_png(cfg, results, out)


@task(name="write-study-report", **_TASK)
def write_report(
    cfg: Config,
    results: EvaluationResults,
    backbones: list[str],
    outcome: RegistryOutcome,
    gradcam_path: Path | None,
    parent_run_id: str,
) -> Path:
    run_info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": tracking.git_commit(cfg.root) or "none",
        "MLflow study run": parent_run_id,
    }
    inputs = report_gather.study_inputs(cfg, results, backbones, outcome, gradcam_path, run_info)
    out = cfg.path(cfg.evaluation.reports_out) / "study.html"
    return write_study_report(out, inputs).html


@task(name="publish", **_TASK)
def publish(
    cfg: Config,
    results: EvaluationResults,
    outcome: RegistryOutcome,
    files: list[Path],
    parent_run_id: str,
) -> None:
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    tracking.log_study_outputs(store, parent_run_id, files, headline_metrics(results))
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=results_markdown(results, outcome),
        description="Test-set results with 95% CIs, the selected model and its registry alias",
    )


@flow(name="evaluate")
def evaluate(params: str = "params.yaml") -> dict[str, Any]:
    """Evaluate the trained backbones of params.yaml, register the best, write the report.

    Returns:
        The selected candidate, the registered version and its alias, and the report path.
    """
    cfg = load_config(params)
    backbones = list(cfg.training.backbones)
    study_file = cfg.path(cfg.training.models_out) / STUDY_FILE
    parent_run_id = json.loads(study_file.read_text())["parent_run_id"]
    check_store(cfg, parent_run_id)
    results = score(cfg, backbones)
    paths = write_metrics(cfg, results)
    log_candidates(cfg, results, parent_run_id)
    outcome = register(cfg, results, parent_run_id)
    gradcam_path = gradcam(cfg, results)
    html = write_report(cfg, results, backbones, outcome, gradcam_path, parent_run_id)
    publish(cfg, results, outcome, [html, *paths.values()], parent_run_id)
    return {
        "selected": results.selected,
        "version": outcome.version,
        "alias": outcome.alias,
        "report": str(html),
    }
