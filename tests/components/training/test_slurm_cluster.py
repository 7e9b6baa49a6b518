"""Training tasks on a real one-node Slurm cluster (tests/slurm_cluster.py): a task
cancelled outright fails without a result and is not submitted again; sbatch's refusal of
the array is one line naming training.slurm. The flow's array, requeue and resume are in
tests/flows/test_train_slurm.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.config import load_config
from components.training.schedule import slurm_task_env
from components.training.slurm import (
    SlurmTaskFailed,
    SlurmTraining,
    SlurmUnavailable,
    TrainingTask,
)
from tests.project_factory import update_params, write_tiny_project
from tests.slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.group]

START_TIMEOUT_S = 120


@pytest.fixture
def project(tmp_path: Path, slurm_cluster: SlurmCluster, monkeypatch) -> Path:  # noqa: F811
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "project"
    write_tiny_project(root, patients_per_class=4, slices=1)
    slurm = {"gpus_per_task": 0, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5, "poll_s": 1}
    update_params(root, "training", executor="slurm", slurm=slurm)
    return root


def _task(root: Path) -> TrainingTask:
    cfg = load_config(root / "params.yaml")
    return TrainingTask(
        "MobileNet",
        "MobileNet",
        str(root / "params.yaml"),
        str(root / "models" / "MobileNet"),
        None,
        slurm_task_env(cfg.training.slurm),
        ("--no-tracking",),
    )


def test_a_task_cancelled_outright_fails_without_a_result_and_is_not_retried(
    project: Path,
    slurm_cluster: SlurmCluster,  # noqa: F811
):
    training = SlurmTraining.submit(load_config(project / "params.yaml"), [_task(project)], None)
    job = training.jobs["MobileNet"]
    deadline = time.monotonic() + START_TIMEOUT_S
    while training.queue.state(job.job_id) != "RUNNING":
        assert time.monotonic() < deadline, slurm_cluster.logs()
        time.sleep(0.2)
    slurm_cluster.command("scancel", job.job_id)
    lines: list[str] = []
    with pytest.raises(SlurmTaskFailed) as caught:
        training.result("MobileNet", 1, lines.append, lambda progress: None)
    assert str(caught.value) == (
        f"MobileNet: Slurm task {job.job_id} was cancelled (scancel); run train again to resume it"
    )
    assert not caught.value.retry
    assert not any("submitting it again" in line for line in lines)
    assert not job.paths.result_pickle.exists()


def test_an_array_sbatch_refuses_fails_in_one_line_naming_the_params(project: Path):
    update_params(project, "training", slurm={"partition": "nosuch", "gpus_per_task": 0})
    with pytest.raises(SlurmUnavailable) as caught:
        SlurmTraining.submit(load_config(project / "params.yaml"), [_task(project)], None)
    message = str(caught.value)
    assert message.startswith("sbatch refused the training array: ")
    assert "invalid partition" in message.lower() and "check training.slurm" in message
    assert "\n" not in message
