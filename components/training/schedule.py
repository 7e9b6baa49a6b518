"""How the train flow lays out its processes: which jobs, in what order, how many at once,
and on which devices.

A job is one backbone (per fold with cross-validation). On GPUs the slowest backbones start
first and each process gets a GPU, or a capped share of one when several fit on a card
(training.processes_per_gpu); on a CPU params.yaml's order stands (the demo's is tuned for two
at a time) and they run one at a time unless training.max_parallel says otherwise. With
training.executor: ray, Ray places the tasks itself, one GPU each where GPUs exist; with
training.executor: slurm, Slurm does (training.slurm), and each task's process gets the
environment of a slot of its own (`slurm_task_env`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from components.config import SlurmConfig, TrainingConfig, slowest_first
from components.training.devices import (
    DevicePool,
    gpu_memory_mb,
    processes_per_gpu,
    usable_cpus,
    visible_gpus,
)
from components.training.folds import fold_label


@dataclass(frozen=True)
class Machine:
    """The devices training may use: GPU ids, each GPU's memory in MiB, CPU ids."""

    gpus: tuple[str, ...] = ()
    memory_mb: dict[str, int] = field(default_factory=dict)
    cpus: tuple[int, ...] = (0,)

    @classmethod
    def detect(cls) -> Machine:
        """This process' GPUs (CUDA_VISIBLE_DEVICES or nvidia-smi) and CPUs."""
        gpus = tuple(visible_gpus())
        return cls(gpus, gpu_memory_mb() if gpus else {}, tuple(usable_cpus()))

    def smallest_gpu_mb(self) -> int | None:
        """The memory of the smallest visible GPU; None when unknown or without GPUs."""
        return min((self.memory_mb[g] for g in self.gpus if g in self.memory_mb), default=None)


@dataclass(frozen=True)
class Job:
    """One training process: `key` is its folder under training.models_out and its name in
    the results (the backbone, or `fold-<f>/<backbone>`); `fold` is a cross-validation
    fold's number and split file."""

    key: str
    backbone: str
    fold: tuple[int, str] | None = None


def training_jobs(
    backbones: Sequence[str], folds: Sequence[tuple[int, str]], machine: Machine
) -> list[Job]:
    """Every backbone once, or once per fold (every fold of a backbone before the next
    backbone), slowest backbone first on GPUs."""
    names = slowest_first(backbones) if machine.gpus else list(backbones)
    if not folds:
        return [Job(name, name) for name in names]
    return [Job(f"{fold_label(f[0])}/{name}", name, f) for name in names for f in folds]


def per_gpu(training: TrainingConfig, machine: Machine, jobs: int) -> int:
    """How many of `jobs` processes share one GPU (training.processes_per_gpu, by the
    smallest card's memory when auto)."""
    return processes_per_gpu(training.processes_per_gpu, machine.smallest_gpu_mb(), jobs)


def parallelism(training: TrainingConfig, machine: Machine) -> int:
    """How many backbones train at once: training.max_parallel, else the processes the GPUs
    take (training.processes_per_gpu each), else 1."""
    if training.max_parallel:
        return training.max_parallel
    if not machine.gpus:
        return 1
    return len(machine.gpus) * per_gpu(training, machine, len(training.backbones))


def device_pool(training: TrainingConfig, machine: Machine, jobs: int) -> DevicePool:
    """The GPUs (or shares of them) or CPU cores lent to `jobs` processes started from
    threads of this process."""
    return DevicePool.for_machine(
        list(machine.gpus),
        parallelism(training, machine),
        list(machine.cpus),
        per_gpu=per_gpu(training, machine, jobs),
        memory_mb=machine.memory_mb,
    )


def ray_gpus_per_task(training: TrainingConfig, machine: Machine) -> int:
    """The GPUs to ask Ray for per training task: one where GPUs exist, else none (also
    none for the local executor, which uses a `device_pool`)."""
    return 1 if training.executor == "ray" and machine.gpus else 0


def slurm_task_env(slurm: SlurmConfig) -> dict[str, str]:
    """The environment of one Slurm task's training process, as a device slot of the local
    pool gives it: Slurm names the task's GPUs (CUDA_VISIBLE_DEVICES), which it has to
    itself; a task without GPUs hides any, so that no framework probes for them."""
    if slurm.gpus_per_task:
        return {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}  # alone on its GPUs, as devices._gpu_slot
    return {"CUDA_VISIBLE_DEVICES": ""}
