"""Training jobs as one Slurm job array (training.executor: slurm), through submitit.

Each job (one backbone, per fold) is one task of the array. A task runs the command the local
launcher runs (`launcher.run_backbone_process`: `python -m components.training.worker`, the
same arguments, the environment of a device slot, `schedule.slurm_task_env`) in the project
folder, which the nodes share with the machine that submits: models, results, checkpoints
and the MLflow store (a local one, or the group's server) come back through it; the task's
log is `training.slurm.folder/<job>/<job>_0_log.out`.

Requeue: 90 s before its time limit a task gets SIGUSR2 (sbatch `--signal`); submitit then
calls `TrainingTask.checkpoint` and requeues it (`scontrol requeue`), at most
training.slurm.max_timeouts times. A task that Slurm requeues (preemption with
PreemptMode=REQUEUE, `scontrol requeue JOB_TASK`, `scancel --signal=USR2 JOB_TASK`) starts
again after the cluster's delay (AuthInfo cred_expire, 120 s by default) and resumes from the
checkpoint of its last finished epoch (`components.training.loop`). While Slurm ends a task,
its training process dies of a signal and the task leaves no result, so that the requeued
run's result is the one read. A task cancelled outright (`scancel JOB_TASK`) fails; its
checkpoint stays for the next `myelomet train`, which resumes it.

The flow submits the array (`SlurmTraining.submit`) and waits on each task from a thread of
its own (`SlurmTraining.result`): one `squeue` call per poll for all of them (the cluster's
accounting, `sacct`, is not needed), the task's log lines and epoch progress passed on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, pickle_load
from submitit.helpers import Checkpointable

from components import atomic
from components.artifacts import CHECKPOINT_DIR, ERROR_FILE, EXIT_FAILED
from components.config import Config
from components.training.launcher import BackboneFailed, run_backbone_process
from components.training.loop import PROGRESS_PREFIX

# Slurm job states of a task that may still produce a result (squeue --states).
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
    "RESV_DEL_HOLD",
})  # fmt: skip
# What `squeue` answered when it could not be asked: the task is taken to be still active.
UNKNOWN = "UNKNOWN"
# The exit status of a task whose training process a signal ended (128 + SIGTERM's 15).
EXIT_SIGNALLED = 143
# submitit's message when a task reached its time limit more than max_num_timeout times.
_TIMED_OUT = "timed-out too many times"


class SlurmUnavailable(RuntimeError):
    """No Slurm client commands here, or sbatch refused the array."""


class SlurmTaskFailed(RuntimeError):
    """A task ended without a training result (cancelled, out of memory, node failure,
    time limit reached too often); `retry` says whether another submission may help."""

    def __init__(self, key: str, message: str, retry: bool) -> None:
        super().__init__(f"{key}: {message}")
        self.retry = retry


@dataclass(frozen=True)
class TrainingTask(Checkpointable):
    """One training job as a Slurm task: the callable submitit pickles and runs on a node.

    Checkpointable: on SIGUSR2 (time limit or preemption) submitit requeues this same task;
    its training process resumes from the last epoch's checkpoint in `out_dir`.
    """

    key: str
    backbone: str
    params: str
    out_dir: str
    parent_run_id: str | None
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()

    def __call__(self) -> dict:
        """Train (or resume) the job in a child process, its log and progress printed to the
        task's log; the result gains `slurm_job` and `requeues` (the task's restarts).

        Raises:
            BackboneFailed: the training process failed.
            SystemExit: a signal ended the training process (Slurm ends the task): no result.
        """
        try:
            result = run_backbone_process(
                self.backbone,
                Path(self.params),
                Path(self.out_dir),
                self.parent_run_id,
                self.env,
                _print,
                extra_args=self.extra_args,
                on_progress=_print_progress,
            )
        except BackboneFailed as exc:
            if exc.killed:  # a result here would be read before the requeued run's
                print(f"{self.key}: training process ended by signal {-exc.exit_code}", flush=True)
                raise SystemExit(EXIT_SIGNALLED) from None
            raise
        job = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return {
            **result,
            "slurm_job": "_".join(job) if all(job) else os.environ.get("SLURM_JOB_ID"),
            "requeues": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        }


def _print(line: str) -> None:
    print(line, flush=True)


def _print_progress(progress: dict) -> None:
    print(PROGRESS_PREFIX + json.dumps(progress), flush=True)


class SlurmQueue:
    """The states of the user's Slurm tasks, from one `squeue` call per `poll_s` however
    many threads ask (thread-safe)."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._asked = -float("inf")
        self._states: dict[str, str] | None = {}

    def state(self, job_id: str) -> str | None:
        """The task's state (`squeue --states all`), None when Slurm no longer lists it,
        UNKNOWN when squeue failed."""
        with self._lock:
            if time.monotonic() - self._asked >= self.poll_s:
                self._states = _squeue()
                self._asked = time.monotonic()
            return UNKNOWN if self._states is None else self._states.get(job_id)


def _squeue() -> dict[str, str] | None:
    """Job (array task) id -> state of the user's jobs; None when squeue fails."""
    command = ["squeue", "--me", "--noheader", "--array", "--states=all", "--format=%i|%T"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in done.stdout.split() if "|" in line)


class LogTail:
    """The new lines of a task's log since the last read: progress lines apart."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.offset = 0

    def follow(self, path: Path) -> None:
        if path != self.path:
            self.path, self.offset = path, 0

    def read(self, on_line: Callable[[str], None], on_progress: Callable[[dict], None]) -> None:
        if self.path is None or not self.path.is_file():
            return
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith(PROGRESS_PREFIX):
                with contextlib.suppress(json.JSONDecodeError):
                    on_progress(json.loads(line.removeprefix(PROGRESS_PREFIX)))
            elif line.strip():
                on_line(line)


def slurm_executor(cfg: Config, parallel: int | None) -> submitit.SlurmExecutor:
    """A submitit executor for training.slurm, its scripts and logs in training.slurm.folder.

    Args:
        cfg: the parsed params.yaml.
        parallel: how many tasks of the array may run at once (None: no cap).

    Raises:
        SlurmUnavailable: no sbatch or srun on PATH.
    """
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    if missing:
        raise SlurmUnavailable(
            f"training.executor slurm: {', '.join(missing)} not found; run train where jobs "
            "are submitted to the cluster (a login node), or set training.executor: local"
        )
    sc = cfg.training.slurm
    executor = submitit.SlurmExecutor(
        folder=cfg.path(sc.folder) / "%j", max_num_timeout=sc.max_timeouts
    )
    optional = {
        "partition": sc.partition,
        "account": sc.account,
        "gpus_per_task": sc.gpus_per_task or None,
        "array_parallelism": parallel,
    }
    executor.update_parameters(
        job_name="myelomet-train",
        time=sc.time_min,
        cpus_per_task=sc.cpus_per_task,
        mem=f"{round(sc.mem_gb * 1024)}MB",
        stderr_to_stdout=True,
        additional_parameters={k.replace("_", "-"): v for k, v in sc.options.items()},
        **{k: v for k, v in optional.items() if v is not None},
    )
    return executor


@dataclass
class SlurmTraining:
    """This study's training tasks on Slurm: submitted as one array, each waited on from a
    thread of its own (`result`), resubmitted alone when it failed and retries are left."""

    executor: submitit.SlurmExecutor
    tasks: dict[str, TrainingTask]
    jobs: dict[str, submitit.Job]
    queue: SlurmQueue
    records: Path
    time_min: int
    max_timeouts: int

    @classmethod
    def submit(
        cls, cfg: Config, tasks: Sequence[TrainingTask], parallel: int | None
    ) -> SlurmTraining:
        """Submit the tasks as one job array; a task whose earlier submission is still
        queued or running (a flow that was stopped) is waited on, not submitted again.
        Each task's job id is recorded in training.slurm.folder/tasks/<key>.json.

        Raises:
            SlurmUnavailable: no Slurm client commands here, or sbatch refused the array.
        """
        executor = slurm_executor(cfg, parallel)
        sc = cfg.training.slurm
        queue = SlurmQueue(sc.poll_s)
        records = cfg.path(sc.folder) / "tasks"
        jobs = {t.key: job for t in tasks if (job := _running(records, t.key, queue))}
        new = [t for t in tasks if t.key not in jobs]
        for task in new:  # the node's worker writes a fresh one if it fails
            if (error := Path(task.out_dir) / ERROR_FILE).is_file():
                error.unlink()
        try:
            with executor.batch():
                submitted = [executor.submit(task) for task in new]
        except FailedJobError as exc:
            reason = " ".join(str(exc).split()) or "no message"
            raise SlurmUnavailable(
                f"sbatch refused the training array: {reason}; check training.slurm "
                "(partition, account, gpus_per_task, mem_gb, time_min, options)"
            ) from None
        for task, job in zip(new, submitted, strict=True):
            jobs[task.key] = job
            _record(records, task.key, job, executor.folder)
        return cls(
            executor,
            {t.key: t for t in tasks},
            jobs,
            queue,
            records,
            sc.time_min,
            sc.max_timeouts,
        )

    def result(
        self,
        key: str,
        retries: int,
        on_line: Callable[[str], None],
        on_progress: Callable[[dict], None],
    ) -> dict:
        """Wait for the task's training result, resubmitting it alone (it then resumes from
        its checkpoint) up to `retries` times when it failed and another try may help.

        Raises:
            BackboneFailed: its training process failed (the worker's error).
            SlurmTaskFailed: it ended without a result.
        """
        job, log, attempt = self.jobs[key], LogTail(), 0
        while True:
            try:
                return self._wait(key, job, log, on_line, on_progress)
            except (BackboneFailed, SlurmTaskFailed) as exc:
                again = exc.retry if isinstance(exc, SlurmTaskFailed) else not exc.permanent
                if not again or attempt == retries:
                    raise
                attempt += 1
                on_line(f"{exc}; submitting it again ({attempt} of {retries})")
                job = self.executor.submit(self.tasks[key])
                _record(self.records, key, job, self.executor.folder)

    def _wait(
        self,
        key: str,
        job: submitit.Job,
        log: LogTail,
        on_line: Callable[[str], None],
        on_progress: Callable[[dict], None],
    ) -> dict:
        """The result of one submission of the task, once it has ended."""
        log.follow(job.paths.stdout)
        ended: float | None = None
        while True:
            log.read(on_line, on_progress)
            if job.paths.result_pickle.exists():
                log.read(on_line, on_progress)
                return self._outcome(key, job)
            state = self.queue.state(job.job_id)
            if state in ACTIVE_STATES or state == UNKNOWN:
                ended = None
            elif ended is None:
                ended = time.monotonic()
            # the result file may reach this machine's view of a shared filesystem late
            elif time.monotonic() - ended > 3 * self.queue.poll_s:
                log.read(on_line, on_progress)
                raise self._ended(key, job, state)
            time.sleep(min(1.0, self.queue.poll_s))

    def _outcome(self, key: str, job: submitit.Job) -> dict:
        """The task's result; its failure as the exception the local launcher raises: the
        worker's error file, else the last line of the task's traceback."""
        task = self.tasks[key]
        outcome, value = pickle_load(job.paths.result_pickle)
        if outcome == "success":
            return value
        if _TIMED_OUT in value:
            raise SlurmTaskFailed(key, self._timed_out(task), retry=False)
        error_file = Path(task.out_dir) / ERROR_FILE
        if error_file.is_file():
            error = json.loads(error_file.read_text())
            raise BackboneFailed(task.backbone, error["exit_code"], error["error"])
        code = re.search(r"training failed \(exit (-?\d+)\)", value)
        last = next((x.strip() for x in reversed(value.splitlines()) if x.strip()), "no message")
        raise BackboneFailed(
            task.backbone,
            int(code.group(1)) if code else EXIT_FAILED,
            f"{last} (Slurm task {job.job_id}, log {job.paths.stdout})",
        )

    def _timed_out(self, task: TrainingTask) -> str:
        return (
            f"reached training.slurm.time_min ({self.time_min} min) "
            f"{self.max_timeouts + 1} times{_resume_hint(task)}; raise time_min or "
            "max_timeouts, then run train again"
        )

    def _ended(self, key: str, job: submitit.Job, state: str | None) -> SlurmTaskFailed:
        task = self.tasks[key]
        how = f"ended {state}" if state else "is no longer listed by squeue"
        if state == "CANCELLED":
            return SlurmTaskFailed(
                key,
                f"Slurm task {job.job_id} was cancelled (scancel){_resume_hint(task)}; "
                "run train again to resume it",
                retry=False,
            )
        if state == "TIMEOUT":
            return SlurmTaskFailed(key, self._timed_out(task), retry=False)
        return SlurmTaskFailed(
            key,
            f"Slurm task {job.job_id} {how} without a result (out of memory, node failure?)"
            f"{_resume_hint(task)}; its log: {job.paths.stdout}",
            retry=True,
        )


def _resume_hint(task: TrainingTask) -> str:
    """Where a rerun resumes the task: its checkpoint's last finished epoch, if any."""
    state = Path(task.out_dir) / CHECKPOINT_DIR / "state.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        epoch = int(json.loads(state.read_text())["epoch"])
        if epoch:
            return f" after epoch {epoch} (its checkpoint is kept)"
    return ""


def _record(records: Path, key: str, job: submitit.Job, folder: Path) -> None:
    """Write where the task's submission is: its job id and submitit's folder pattern."""
    path = records / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({"job_id": job.job_id, "folder": str(folder)}))


def _running(records: Path, key: str, queue: SlurmQueue) -> submitit.Job | None:
    """The task's earlier submission when Slurm still has it queued or running."""
    path = records / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        record = json.loads(path.read_text())
        if queue.state(record["job_id"]) in ACTIVE_STATES:
            return submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
    return None


def describe_requeues(results: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Tags for the study's parent run: the tasks Slurm requeued and how often (they
    resumed from their last epoch)."""
    requeued = {k: int(r["requeues"]) for k, r in results.items() if r.get("requeues")}
    if not requeued:
        return {}
    return {
        "requeued_backbones": ",".join(sorted(requeued)),
        **{f"requeues.{k}": str(n) for k, n in requeued.items()},
    }
