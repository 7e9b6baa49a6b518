"""training.executor slurm without a cluster: its params and their errors, the environment a
task's process gets, the missing client commands, the parent run's requeue tags and the
reading of a task's log as it grows (tests/components/training/test_slurm_cluster.py runs
tasks on a real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import SlurmConfig, load_config
from components.training.loop import PROGRESS_PREFIX
from components.training.schedule import slurm_task_env
from components.training.slurm import (
    LogTail,
    SlurmUnavailable,
    describe_requeues,
    slurm_executor,
)


def _params(tmp_path, text: str):
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def test_the_defaults_ask_for_one_gpu_task_and_the_demo_runs_locally():
    slurm = SlurmConfig()
    assert (slurm.gpus_per_task, slurm.cpus_per_task, slurm.mem_gb) == (1, 8, 32)
    assert slurm.partition is None and slurm.folder == ".slurm"
    cfg = load_config(Path(__file__).parents[3] / "params.yaml")
    assert cfg.training.executor == "local"
    assert cfg.training.slurm.gpus_per_task == 1


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("slurm: {gpus: 1}", "training.slurm.gpus: Extra inputs are not permitted"),
        ("slurm: {mem_gb: 0}", "training.slurm.mem_gb: Input should be greater than 0"),
        ("slurm: {partition: ''}", "training.slurm.partition: String should have at least 1"),
        ("slurm: {options: {mem: 4G}}", "training.slurm.options: 'mem' is set by myelomet"),
        ("slurm: {options: {--qos: high}}", "'--qos' is not an sbatch option's long name"),
        ("executor: sge", "training.executor: Input should be 'local', 'ray' or 'slurm'"),
    ],
)
def test_wrong_slurm_params_fail_in_one_line_naming_the_key(tmp_path, section, expected):
    with pytest.raises(ValueError) as caught:
        load_config(_params(tmp_path, f"training:\n  {section}\n"))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_extra_sbatch_options_pass_through(tmp_path):
    cfg = load_config(_params(tmp_path, "training:\n  slurm: {options: {qos: high, nice: 10}}\n"))
    assert cfg.training.slurm.options == {"qos": "high", "nice": 10}


def test_a_task_without_gpus_hides_them_and_one_with_a_gpu_has_it_to_itself():
    assert slurm_task_env(SlurmConfig(gpus_per_task=0)) == {"CUDA_VISIBLE_DEVICES": ""}
    assert slurm_task_env(SlurmConfig()) == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def test_without_slurm_commands_the_executor_says_where_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = load_config(_params(tmp_path, "training: {executor: slurm}\n"))
    with pytest.raises(SlurmUnavailable, match="sbatch, srun, squeue not found; run train where"):
        slurm_executor(cfg, None)


def test_requeued_tasks_become_tags_of_the_parent_run():
    results = {"MobileNet": {"requeues": 2}, "VGG16": {"requeues": 0}, "fold-1/Xception": {}}
    assert describe_requeues(results) == {
        "requeued_backbones": "MobileNet",
        "requeues.MobileNet": "2",
    }
    assert describe_requeues({"VGG16": {"status": "trained"}}) == {}


def test_a_growing_log_is_read_line_by_line_with_progress_apart(tmp_path):
    log, lines, progress = tmp_path / "task.out", [], []
    tail = LogTail()
    tail.follow(log)
    tail.read(lines.append, progress.append)  # no log yet
    log.write_text("starting\n" + PROGRESS_PREFIX + json.dumps({"epoch": 1}) + "\nhalf a li")
    tail.read(lines.append, progress.append)
    assert (lines, progress) == (["starting"], [{"epoch": 1}])
    with log.open("a") as out:
        out.write("ne\n\n")
    tail.read(lines.append, progress.append)
    assert lines == ["starting", "half a line"]
