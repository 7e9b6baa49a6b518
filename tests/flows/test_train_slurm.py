"""The `train` flow with training.executor: slurm on a real one-node Slurm cluster
(tests/slurm_cluster.py): two tiny backbones train as the tasks of one job array; one task
gets SIGUSR2 mid-training (what Slurm sends before a time limit, and what submitit takes for
a preemption) and is requeued by submitit, the other is requeued by Slurm (`scontrol
requeue`, as a preemption with PreemptMode=REQUEUE does); both resume from their last
finished epoch, and the flow and the MLflow parent run say so. A task that fails is
submitted again (training.retries), then reported per backbone, as with the local executor."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import submitit
from mlflow.tracking import MlflowClient

from components import tracking
from components.config import load_config
from flows.train import task_runner, train
from tests.project_factory import update_params, write_tiny_project
from tests.slurm_cluster import SlurmCluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.group,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

BACKBONES = ("MobileNet", "MobileNetV2")
EPOCHS = 6
SIGNAL_TIMEOUT_S = 600


@pytest.fixture
def project(tmp_path: Path, slurm_cluster: SlurmCluster, monkeypatch) -> Path:  # noqa: F811
    """A tiny project whose training runs on the test cluster (no GPUs, one CPU a task)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "project"
    write_tiny_project(root, patients_per_class=10, slices=2)
    update_params(
        root,
        "training",
        backbones=list(BACKBONES),
        epochs=EPOCHS,
        cpu_threads=1,
        retries=0,
        max_parallel=2,
        executor="slurm",
        slurm={
            "partition": slurm_cluster.partition,
            "gpus_per_task": 0,
            "cpus_per_task": 1,
            "mem_gb": 1,
            "time_min": 10,
            "poll_s": 1,
        },
    )
    return root


def _run_flow(root: Path) -> dict:
    cfg = load_config(root / "params.yaml")
    return train.with_options(task_runner=task_runner(cfg))(str(root / "params.yaml"))


def _task(root: Path, key: str) -> submitit.SlurmJob:
    record = json.loads((root / ".slurm" / "tasks" / f"{key}.json").read_text())
    return submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])


def _interrupt_after_first_epoch(
    root: Path, key: str, command: list[str], cluster: SlurmCluster, done: list[str]
) -> None:
    """Once the task's log shows an epoch done (checkpointed and logged to MLflow), run
    `command` + its Slurm task id."""
    deadline = time.monotonic() + SIGNAL_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            task = _task(root, key)
            log = task.paths.stdout.read_text()
        except (OSError, ValueError):
            log = ""
        if re.search(r'myelomet-progress \{[^\n]*"epoch": [1-9]', log):
            cluster.command(*command, task.job_id)
            done.append(key)
            return
        time.sleep(0.1)


def _resumed_from(log: str) -> int:
    """The epoch the task's second run resumed after, checked against its progress."""
    resumed = re.findall(r"resuming scratch after epoch (\d+)", log)
    assert len(resumed) == 1, log[-3000:]
    epoch = int(resumed[0])
    after = log[log.index("resuming scratch after epoch") :]
    progress = [json.loads(x) for x in re.findall(r"myelomet-progress (\{.*\})", after)]
    assert progress[0]["epoch"] == epoch + 1  # it went on, not from the start
    return epoch


def test_an_array_of_two_backbones_resumes_requeued_tasks_from_their_last_epoch(
    project: Path,
    slurm_cluster: SlurmCluster,  # noqa: F811
):
    interrupted: list[str] = []
    watchers = [
        threading.Thread(
            target=_interrupt_after_first_epoch,
            args=(project, "MobileNet", ["scancel", "--signal=USR2"], slurm_cluster, interrupted),
        ),
        threading.Thread(
            target=_interrupt_after_first_epoch,
            args=(project, "MobileNetV2", ["scontrol", "requeue"], slurm_cluster, interrupted),
        ),
    ]
    for watcher in watchers:
        watcher.start()
    outcome = _run_flow(project)
    for watcher in watchers:
        watcher.join()
    assert len(interrupted) == 2, (interrupted, slurm_cluster.logs())
    assert outcome["failures"] == {}
    tasks = {name: _task(project, name) for name in BACKBONES}
    resumed = {}
    assert tasks["MobileNet"].job_id.split("_")[0] == tasks["MobileNetV2"].job_id.split("_")[0]
    for name in BACKBONES:
        result = outcome["results"][name]
        assert (result["status"], result["requeues"]) == ("resumed", 1)
        assert result["slurm_job"] == tasks[name].job_id
        assert result["epochs_run"] == EPOCHS
        assert (project / "models" / name / "model.keras").is_file()
        resumed[name] = _resumed_from(tasks[name].paths.stdout.read_text())
        assert resumed[name] >= 1
    store = tracking.resolve_store(load_config(project / "params.yaml").tracking, project)
    client = MlflowClient(store.tracking_uri)
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["requeued_backbones"] == ",".join(BACKBONES)
    for name in BACKBONES:  # one child run per backbone, every epoch logged
        child = client.get_run(outcome["results"][name]["run_id"])
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert sorted(set(steps)) == list(range(1, EPOCHS + 1))
        # The epoch in flight when the task stopped may have logged its metrics before its
        # checkpoint committed it: that one epoch ran, and is logged, twice. No other.
        again = sorted({step for step in steps if steps.count(step) > 1})
        assert again in ([], [resumed[name] + 1]) and len(steps) <= EPOCHS + 1, steps


def test_a_failing_task_is_submitted_again_then_reported_per_backbone(project: Path):
    update_params(project, "training", backbones=["MobileNet"], retries=1)
    (project / "models").mkdir()
    (project / "models" / "MobileNet").write_text("not a folder: training cannot write here")
    outcome = _run_flow(project)
    assert outcome["results"] == {}
    assert list(outcome["failures"]) == ["MobileNet"]
    failure = outcome["failures"]["MobileNet"]
    assert failure.startswith("MobileNet: training failed (exit 1): ") and "\n" not in failure
    assert (
        "Not a directory" in failure
        and f"(Slurm task {_task(project, 'MobileNet').job_id}" in failure
    )
    submissions = [p for p in (project / ".slurm").iterdir() if p.is_dir() and p.name != "tasks"]
    assert len(submissions) == 2  # the first try and the retry, each a job of its own
    store = tracking.resolve_store(load_config(project / "params.yaml").tracking, project)
    parent = MlflowClient(store.tracking_uri).get_run(outcome["parent_run_id"])
    assert parent.data.tags["failed_backbones"] == "MobileNet"
    assert parent.info.status == "FAILED"
