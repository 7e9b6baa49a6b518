"""Prefect flow `train`: every backbone fine-tuned in a process of its own, in parallel.

With cross-validation (params split.folds) every backbone trains once per fold, on that
fold's split (`components.training.folds`), into `<models_out>/fold-<f>/<backbone>`.
One MLflow parent run per study; each backbone's (and fold's) child run is opened by its
own process.
Which jobs run in what order, how many at once and on which devices is
`components.training.schedule`'s: on GPUs each process is pinned to one GPU or a capped share
of one, the slowest first; on a CPU one at a time unless training.max_parallel says otherwise;
with training.executor: ray the same tasks go to a Ray cluster; with training.executor: slurm
they are the tasks of one Slurm job array (`components.training.slurm`), each waited on by a
task of this flow, and a task that Slurm requeued resumes from its last epoch. Each
backbone's task shows a progress artifact that its process updates after every epoch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    Job,
    Machine,
    device_pool,
    parallelism,
    ray_gpus_per_task,
    slurm_task_env,
    training_jobs,
)
from components.training.slurm import (
    SlurmTraining,
    SlurmUnavailable,
    TrainingTask,
    describe_requeues,
)

ARTIFACT_KEY = "training-results"
# Threads that wait on Slurm tasks at most (each polls a file and a shared squeue answer).
SLURM_WAITERS = 64


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
    job, progress, show = _progress(backbone, fold, "waiting for a device")
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
            extra_args=_fold_args(fold),
            on_progress=show,
        )
    update_progress_artifact(progress, 100.0, description=f"{job}: {result['status']}")
    return result


def _progress(
    backbone: str, fold: tuple[int, str] | None, waiting: str
) -> tuple[str, Any, Callable[[dict], None]]:
    """The job's label, its progress artifact and the callback that updates it per epoch."""
    job = backbone if fold is None else f"{backbone} {fold_label(fold[0])}"
    key = f"train-{job.lower().replace(' ', '-')}"
    progress = create_progress_artifact(0.0, key=key, description=f"{job}: {waiting}")

    def show(epoch: dict) -> None:
        update_progress_artifact(progress, epoch["percent"], description=describe_progress(epoch))

    return job, progress, show


def _fold_args(fold: tuple[int, str] | None) -> tuple[str, ...]:
    """The worker's arguments for a cross-validation fold's split."""
    return () if fold is None else ("--fold", str(fold[0]), "--split", fold[1])


@task(name="submit-slurm-array", cache_policy=NO_CACHE, persist_result=False)
def submit_slurm_array(
    cfg: Config, params: str, jobs: list[Job], parent_run_id: str
) -> SlurmTraining:
    """Submit every job as a task of one Slurm job array (training.slurm)."""
    env = slurm_task_env(cfg.training.slurm)
    tasks = [
        TrainingTask(
            job.key,
            job.backbone,
            str(Path(params).resolve()),
            str(cfg.path(cfg.training.models_out) / job.key),
            parent_run_id,
            env,
            _fold_args(job.fold),
        )
        for job in jobs
    ]
    training = SlurmTraining.submit(cfg, tasks, cfg.training.max_parallel)
    get_run_logger().info(
        "submitted %d training tasks to Slurm: %s",
        len(tasks),
        ", ".join(f"{k} {j.job_id}" for k, j in training.jobs.items()),
    )
    return training


@task(name="train-backbone-slurm", cache_policy=NO_CACHE, persist_result=False)
def await_slurm_task(
    training: SlurmTraining, key: str, backbone: str, fold: tuple[int, str] | None, retries: int
) -> dict:
    """Wait for one Slurm task's training (resubmitted alone up to `retries` times when it
    failed), its log and progress shown here."""
    logger = get_run_logger()
    job, progress, show = _progress(backbone, fold, "queued on Slurm")
    result = training.result(key, retries, logger.info, show)
    if result.get("requeues"):
        logger.info(
            "%s: Slurm requeued it %d time(s); it resumed from its last epoch's checkpoint",
            job,
            result["requeues"],
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
            {"manifest": manifest, "split": split}, data_version(manifest, split), cfg.root
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
    tags = {**tracking.outcome_tags(results, failures), **describe_requeues(results)}
    tracking.tag_run(store, parent_run_id, tags)
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
    jobs = training_jobs(names, folds, machine)
    if cfg.training.executor == "slurm":
        futures, failures = _on_slurm(cfg, params, jobs, parent_run_id)
    else:
        futures, failures = _in_processes(cfg, params, jobs, parent_run_id, machine), {}
    wait(list(futures.values()))
    results = {}
    for name, future in futures.items():
        state = future.state
        if state.is_completed():
            results[name] = future.result()
        else:
            failures[name] = str(state.result(raise_on_failure=False))
    return report_training(cfg, parent_run_id, results, failures)


def _in_processes(
    cfg: Config, params: str, jobs: list[Job], parent_run_id: str, machine: Machine
) -> dict[str, Any]:
    """Start each job's training process from a task (threads of this flow, or Ray)."""
    step = launch_backbone.with_options(retries=cfg.training.retries)
    pool = device_pool(cfg.training, machine, len(jobs)) if _runs_in_threads() else None
    futures = {}
    with _ray_resources(ray_gpus_per_task(cfg.training, machine)):
        for job in jobs:
            out_dir = cfg.path(cfg.training.models_out) / job.key
            futures[job.key] = step.submit(
                job.backbone, params, str(out_dir), parent_run_id, pool, job.fold
            )
    return futures


def _on_slurm(
    cfg: Config, params: str, jobs: list[Job], parent_run_id: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Submit the jobs as one Slurm array and wait on each from a task; when the array
    cannot be submitted, every job fails with sbatch's reason."""
    try:
        training = submit_slurm_array(cfg, params, jobs, parent_run_id)
    except SlurmUnavailable as exc:
        return {}, dict.fromkeys((job.key for job in jobs), str(exc))
    futures = {
        job.key: await_slurm_task.submit(
            training, job.key, job.backbone, job.fold, cfg.training.retries
        )
        for job in jobs
    }
    return futures, {}


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
    """The task runner of training.executor: threads that each wait on a process (on a
    Slurm task: one thread per job), or Ray."""
    if cfg.training.executor == "slurm":
        from prefect.task_runners import ThreadPoolTaskRunner

        jobs = len(cfg.training.backbones) * max(1, cfg.split.folds)
        return ThreadPoolTaskRunner(max_workers=min(jobs, SLURM_WAITERS))
    if cfg.training.executor == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(
            address=cfg.training.ray_address,
            init_kwargs={"include_dashboard": False, "log_to_driver": False},
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=parallelism(cfg.training, Machine.detect()))
