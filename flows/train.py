"""Prefect flow `train`: every backbone fine-tuned in a process of its own, in parallel.

With cross-validation (params split.folds) every backbone trains once per fold, on that
fold's split (`components.training.folds`), into `<models_out>/fold-<f>/<backbone>`.
One MLflow parent run per study; each backbone's (and fold's) child run is opened by its
own process.
Which jobs run in what order, how many at once and on which devices is
`components.training.schedule`'s: on GPUs each process is pinned to one GPU or a capped share
of one, the slowest first; on a CPU one at a time unless training.max_parallel says otherwise;
with training.executor: ray the same tasks go to a Ray cluster. Each backbone's task shows a
progress artifact that its process updates after every epoch.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from components import tracking
from components.artifacts import STUDY_FILE, TRAINING_SUMMARY_FILE
from components.config import Config, load_config
from components.evaluation.report_content import training_markdown, write_training_summary
from components.training.batches import data_paths, data_version
from components.training.devices import DevicePool
from components.training.folds import cv_folds, fold_label
from components.training.launcher import BackboneFailed, describe_progress, run_backbone_process
from components.training.schedule import (
    Machine,
    device_pool,
    parallelism,
    ray_gpus_per_task,
    training_jobs,
)

ARTIFACT_KEY = "training-results"


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    error = getattr(state, "data", None)
    return not (isinstance(error, BackboneFailed) and error.permanent)


@task(
    name="train-backbone",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_unless_permanent,
)
def launch_backbone(
    backbone: str,
    params: str,
    out_dir: str,
    parent_run_id: str,
    devices: DevicePool | None,
    fold: tuple[int, str] | None = None,
) -> dict:
    """Train one backbone in a fresh process (pinned to a free GPU or a share of one, or to
    its share of the CPU cores, when a pool is given), its progress shown as an artifact.
    `fold` is a cross-validation fold's number and split file."""
    logger = get_run_logger()
    job = backbone if fold is None else f"{backbone} {fold_label(fold[0])}"
    key = f"train-{job.lower().replace(' ', '-')}"
    progress = create_progress_artifact(0.0, key=key, description=f"{job}: waiting for a device")

    def show(epoch: dict) -> None:
        update_progress_artifact(progress, epoch["percent"], description=describe_progress(epoch))

    extra = () if fold is None else ("--fold", str(fold[0]), "--split", fold[1])
    with devices.lease() if devices is not None else nullcontext({}) as env:
        if env.get("CUDA_VISIBLE_DEVICES"):
            logger.info("%s on GPU %s", job, env["CUDA_VISIBLE_DEVICES"])
        result = run_backbone_process(
            backbone,
            Path(params),
            Path(out_dir),
            parent_run_id,
            env,
            logger.info,
            extra_args=extra,
            on_progress=show,
        )
    update_progress_artifact(progress, 100.0, description=f"{job}: {result['status']}")
    return result


@task(name="prepare-folds", cache_policy=NO_CACHE, persist_result=False)
def prepare_folds(cfg: Config) -> list[tuple[int, str]]:
    """Each cross-validation fold's number and split file (written beside its models);
    none for a single split."""
    return [(fold.number, str(fold.cfg.path(fold.cfg.split.out))) for fold in cv_folds(cfg)]


@task(name="start-study", cache_policy=NO_CACHE, persist_result=False)
def start_study(cfg: Config, names: list[str], owner: str) -> str:
    """Open the study's MLflow parent run, owned by the flow's process (`owner`, so that a
    killed flow's run is closed by the next one), and record its id beside the models."""
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    manifest, split = data_paths(cfg)
    run_id = tracking.start_study(
        store,
        run_name="study",
        params={"training": cfg.training.model_dump(mode="json"), "split": cfg.split.model_dump()},
        tags={"backbones": ",".join(names)},
        root=cfg.root,
        owner=owner,
        datasets=tracking.dataset_inputs(
            {"manifest": manifest, "split": split}, data_version(manifest, split)
        ),
    )
    models = cfg.path(cfg.training.models_out)
    models.mkdir(parents=True, exist_ok=True)
    (models / STUDY_FILE).write_text(json.dumps({"parent_run_id": run_id}, indent=2))
    return run_id


@task(name="report-training", cache_policy=NO_CACHE, persist_result=False)
def report_training(
    cfg: Config, parent_run_id: str, results: dict[str, dict], failures: dict[str, str]
) -> dict[str, Any]:
    """Close the parent run, write reports/train.json and a results table in the UI."""
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    tracking.tag_run(store, parent_run_id, tracking.outcome_tags(results, failures))
    tracking.end_study(store, parent_run_id, "FAILED" if failures else "FINISHED")
    write_training_summary(results, cfg.path(cfg.evaluation.reports_out) / TRAINING_SUMMARY_FILE)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=training_markdown(results, failures),
        description="Per-backbone training results (validation set)",
    )
    return {"parent_run_id": parent_run_id, "results": results, "failures": failures}


@flow(name="train")
def train(params: str = "params.yaml", backbones: list[str] | None = None) -> dict[str, Any]:
    """Fine-tune the backbones of params.yaml (or those named), one process each (per fold
    with cross-validation).

    Returns:
        parent_run_id, per-backbone results, and failures (backbone -> error) of those that
        still failed after their retries; the other backbones finish regardless. With
        cross-validation the keys are `fold-<f>/<backbone>`.
    """
    cfg = load_config(params)
    names = list(backbones or cfg.training.backbones)
    machine = Machine.detect()
    folds = prepare_folds(cfg)
    parent_run_id = start_study(cfg, names, tracking.process_identity())
    step = launch_backbone.with_options(retries=cfg.training.retries)
    jobs = training_jobs(names, folds, machine)
    pool = device_pool(cfg.training, machine, len(jobs)) if _runs_in_threads() else None
    futures = {}
    with _ray_resources(ray_gpus_per_task(cfg.training, machine)):
        for job in jobs:
            out_dir = cfg.path(cfg.training.models_out) / job.key
            futures[job.key] = step.submit(
                job.backbone, params, str(out_dir), parent_run_id, pool, job.fold
            )
    wait(list(futures.values()))
    results, failures = {}, {}
    for name, future in futures.items():
        state = future.state
        if state.is_completed():
            results[name] = future.result()
        else:
            failures[name] = str(state.result(raise_on_failure=False))
    return report_training(cfg, parent_run_id, results, failures)


def _runs_in_threads() -> bool:
    """Whether this flow's tasks run in its own threads, which then lend the processes they
    start a device each; another task runner (Ray) places its tasks itself."""
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    context = FlowRunContext.get()
    return context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner)


def _ray_resources(gpus_per_task: int) -> Any:
    """Ask Ray for `gpus_per_task` GPUs per backbone task (none: no request)."""
    if not gpus_per_task:
        return nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=gpus_per_task)


def task_runner(cfg: Config) -> Any:
    """The task runner of training.executor: threads that each wait on a process, or Ray."""
    if cfg.training.executor == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(
            address=cfg.training.ray_address,
            init_kwargs={"include_dashboard": False, "log_to_driver": False},
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=parallelism(cfg.training, Machine.detect()))
