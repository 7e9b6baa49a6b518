"""Prefect flows `study` and `train-on-demand`: the whole DVC pipeline as one scheduled run.

`study` reproduces the stages of `dvc.yaml` one task each, in dependency order, through DVC
(only the stages whose inputs changed run again). Every line a stage prints goes to its
task's log. A failing stage fails the run and nothing after it runs, so a failed validation
never reaches training or the registry. The run ends with three markdown artifacts: the
data validation, Table 2 of the test set, and the registry outcome. On failure a hook
publishes (and writes to `.myelomet/study/last_failure.md`) what failed and where to look.

`train-on-demand` runs the same pipeline as a DVC experiment (`dvc exp run -S ...`) with a
preset, backbones, epochs and folds, then puts params.yaml and dvc.lock back, so the scheduled
study keeps the workspace's configuration; `dvc exp show` lists the experiment.

`prefect.yaml` deploys both; `myelomet study` runs `study` without a server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.states import State
from prefect.utilities.urls import url_for

from components import tracking
from components.artifacts import EVALUATION_METRICS_FILE, VALIDATION_PAGE
from components.config import Config, load_config
from components.pipeline import notify, stages

ARTIFACT_KEYS = {
    "validation": "study-validation",
    "table2": "study-table2",
    "registry": "study-registry",
    "failure": "study-failure",
}
# DVC decides what is up to date; Prefect must never skip or cache a stage.
_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="dvc-stage", task_run_name="{stage}", **_TASK)
def run_stage(stage: str, root: Path) -> Path:
    """Reproduce one stage through DVC, its output lines in this task's log."""
    logger = get_run_logger()
    return stages.run_stage(stage, root, logger.info)


@task(name="dvc-experiment", task_run_name="exp-{name}", **_TASK)
def run_experiment(name: str, root: Path, overrides: dict[str, Any]) -> None:
    """`dvc exp run` of the whole pipeline with these params; the workspace files it
    rewrites are put back afterwards, also when it fails."""
    logger = get_run_logger()
    logger.info("experiment %s: %s", name, overrides or "params.yaml as it is")
    snapshot = stages.snapshot_workspace(root)
    cmd = stages.experiment_args(name, overrides)
    log_path = stages.stage_log_path(root, f"exp-{name}")
    try:
        returncode, tail = stages.stream_command(cmd, root, logger.info, log_path)
    finally:
        if not stages.restore_workspace(root, snapshot, logger.info):
            logger.warning(
                "params.yaml and dvc.lock are back, but `dvc checkout` could not restore every "
                "output; the next `dvc repro` (or scheduled study) rebuilds what is missing"
            )
    if returncode != 0:
        raise stages.StageFailed(f"exp-{name}", returncode, tail, log_path)


@task(name="publish-results", **_TASK)
def publish(cfg: Config, before: stages.RegistryState) -> dict[str, str | None]:
    """Markdown artifacts of the validation summary, Table 2 and the registry outcome.

    Returns:
        The champion and challenger versions after the run.
    """
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    after = stages.registry_state(store.tracking_uri, cfg.evaluation.registered_model)
    reports = cfg.path(cfg.evaluation.reports_out)
    texts = {
        "validation": stages.validation_markdown(
            cfg.path(cfg.validation.summary_out),
            cfg.path(cfg.validation.docs_out) / VALIDATION_PAGE,
        ),
        "table2": stages.table2_markdown(reports / EVALUATION_METRICS_FILE),
        "registry": stages.registry_markdown(before, after),
    }
    descriptions = {
        "validation": "Great Expectations results of the data this run used",
        "table2": "The paper's Table 2 on the test set, every candidate, 95% CIs",
        "registry": "Model versions this run registered and the current champion",
    }
    for name, markdown in texts.items():
        create_markdown_artifact(
            key=ARTIFACT_KEYS[name], markdown=markdown, description=descriptions[name]
        )
    return {"champion": after.holder("champion"), "challenger": after.holder("challenger")}


def _registry_now(cfg: Config) -> stages.RegistryState:
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    return stages.registry_state(store.tracking_uri, cfg.evaluation.registered_model)


def _failure_places(cfg: Config, flow_run: FlowRun, error: BaseException | None) -> list[str]:
    places = []
    run_url = url_for(flow_run)
    if run_url:
        places.append(f"this run in the Prefect UI: {run_url}")
    if isinstance(error, stages.StageFailed):
        places.append(f"the stage's full log: `{error.log_path}`")
        if error.stage == "validate":
            docs = cfg.path(cfg.validation.docs_out) / VALIDATION_PAGE
            places.append(f"failed expectations with offending rows: `{docs}`")
    places.append(f"`dvc status` in `{cfg.root}`: which stages are out of date")
    return places


def notify_failure(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Failure hook: publish and write what failed, the message and where to look."""
    params = flow_run.parameters.get("params", "params.yaml")
    cfg = load_config(params)
    error = state.result(raise_on_failure=False)
    error = error if isinstance(error, BaseException) else None
    failure = notify.Failure(
        flow=flow.name,
        run=flow_run.name,
        message=str(error) if error is not None else (state.message or state.name),
        stage=getattr(error, "stage", None),
        places=_failure_places(cfg, flow_run, error),
    )
    markdown = notify.failure_markdown(failure)
    path = notify.write_failure_note(cfg.root, markdown)
    create_markdown_artifact(
        key=ARTIFACT_KEYS["failure"], markdown=markdown, description=f"Why it failed ({path})"
    )


@flow(name="study", on_failure=[notify_failure], on_crashed=[notify_failure])
def study(params: str = "params.yaml") -> dict[str, Any]:
    """Reproduce every stage of dvc.yaml in order and publish what the run produced.

    Args:
        params: params.yaml of the project; its folder is the project (and DVC) root.

    Returns:
        The stages run (or skipped by DVC as up to date) and the champion and challenger
        versions after the run.

    Raises:
        StageFailed: a stage failed; the stages after it did not run.
    """
    cfg = load_config(params)
    before = _registry_now(cfg)
    order = stages.stage_order(cfg.root)
    for stage in order:
        run_stage(stage, cfg.root)
    return {"stages": order, **publish(cfg, before)}


@flow(name="train-on-demand", on_failure=[notify_failure], on_crashed=[notify_failure])
def train_on_demand(
    backbones: list[str] | None = None,
    epochs: int | None = None,
    preset: str = "demo",
    params: str = "params.yaml",
    folds: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline as a DVC experiment with other training settings; the promotion gate
    decides what the new model becomes.

    Args:
        backbones: train only these (default: training.backbones of params.yaml).
        epochs: training epochs of every backbone, per-backbone overrides included
            (default: the preset's, else params.yaml's).
        preset: "demo" (params.yaml as it is) or "paper" (the paper's configuration).
        params: params.yaml of the project.
        folds: patient-grouped cross-validation folds (at least 3), or 0 for one split
            (default: params.yaml's split.folds).

    Returns:
        The experiment's name, its overrides, and the champion and challenger versions.

    Raises:
        ValueError: unknown preset or backbone, epochs below 1, or folds 1 or 2.
        StageFailed: the experiment failed; the workspace files are back as they were.
    """
    cfg = load_config(params)
    overrides = stages.experiment_overrides(
        preset, backbones, epochs, cfg.training.overrides, folds
    )
    before = _registry_now(cfg)
    name = f"{preset}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run_experiment(name, cfg.root, overrides)
    return {"experiment": name, "overrides": overrides, **publish(cfg, before)}
