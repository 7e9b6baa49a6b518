"""Which GPUs (and how much memory each) and CPU cores this machine has, found without
importing a framework, and a pool that hands each concurrent training process devices of its
own: a whole GPU, a capped share of one, or a share of the CPU cores."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# Comma-separated CPU ids a training process pins itself to (os.sched_setaffinity).
CPUS_ENV = "MYELOMET_CPUS"


def visible_gpus() -> list[str]:
    """The GPU ids this process may use.

    CUDA_VISIBLE_DEVICES, when set, decides (an empty value means none); otherwise
    `nvidia-smi -L` is asked. A machine without the NVIDIA driver has none.

    Returns:
        GPU ids as strings, suitable for CUDA_VISIBLE_DEVICES.
    """
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [g.strip() for g in declared.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


def usable_cpus() -> list[int]:
    """The CPU ids this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_to_cpus(env: Mapping[str, str] = os.environ) -> None:
    """Pin this process to the CPUs named in MYELOMET_CPUS, if set (before TensorFlow starts:
    it sizes its thread pools from the CPUs it may use)."""
    named = env.get(CPUS_ENV, "").strip()
    if named and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in named.split(",")})


# Device memory one training process is given at most, when training.processes_per_gpu is
# auto: a planning figure with headroom for the seven backbones at native size, batch 16,
# mixed precision (activations, weights, Adam state and XLA's scratch space).
PROCESS_MEMORY_MB = 10 * 1024
# The share of a card's memory that the processes on it may take between them.
MEMORY_SHARE = 0.9


def gpu_memory_mb() -> dict[str, int]:
    """Each GPU's total memory in MiB by its index, from `nvidia-smi`; empty without one."""
    if shutil.which("nvidia-smi") is None:
        return {}
    query = ["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"]
    listing = subprocess.run(query, capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        return {}
    memory = {}
    for line in listing.stdout.splitlines():
        index, _, total = line.partition(",")
        if index.strip().isdigit() and total.strip().isdigit():
            memory[index.strip()] = int(total.strip())
    return memory


def processes_per_gpu(setting: str | int, memory_mb: int | None, backbones: int) -> int:
    """How many training processes share one GPU: `setting` when it is a number; for
    "auto", as many as fit in MEMORY_SHARE of the card at PROCESS_MEMORY_MB each, at most
    one per backbone, and 1 when the card's memory is unknown."""
    if setting != "auto":
        return int(setting)
    if not memory_mb:
        return 1
    return max(1, min(backbones, int(memory_mb * MEMORY_SHARE // PROCESS_MEMORY_MB)))


def _gpu_slot(gpu: str, per_gpu: int, memory_mb: int | None) -> dict[str, str]:
    """The environment of one process on `gpu`: alone, it grows into the card; shared, each
    process is capped at its share (JAX: preallocated fraction; TensorFlow: a logical
    device with a memory limit, set by components.training.runtime)."""
    from components.training.runtime import GPU_MEMORY_ENV

    slot = {"CUDA_VISIBLE_DEVICES": gpu}
    if per_gpu == 1:
        return slot | {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    share = MEMORY_SHARE / per_gpu
    slot["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{share:.3f}"
    if memory_mb:
        slot[GPU_MEMORY_ENV] = str(int(memory_mb * share))
    return slot


class DevicePool:
    """Lends each concurrent training process a slot of its own (thread-safe): a GPU, or a
    share of one when several processes fit on a card, else an equal share of the CPU cores."""

    def __init__(self, slots: list[dict[str, str]]) -> None:
        self._free: queue.Queue[dict[str, str]] = queue.Queue()
        for slot in slots:
            self._free.put(slot)
        self.size = len(slots)

    @property
    def available(self) -> int:
        """How many slots are free now."""
        return self._free.qsize()

    @classmethod
    def for_machine(
        cls,
        gpus: list[str],
        parallel: int,
        cpus: list[int],
        per_gpu: int = 1,
        memory_mb: Mapping[str, int] | None = None,
    ) -> DevicePool:
        """`per_gpu` slots on each of `gpus` (spread over the cards first, each capped at its
        share of the card's memory when it shares one); without GPUs, `parallel` slots that
        split `cpus` between them and hide GPUs, so no framework probes for them."""
        if gpus:
            memory = memory_mb or {}
            return cls([_gpu_slot(g, per_gpu, memory.get(g)) for _ in range(per_gpu) for g in gpus])
        parallel = max(1, parallel)
        shares = [cpus[i::parallel] or [cpus[i % len(cpus)]] for i in range(parallel)]
        return cls([{"CUDA_VISIBLE_DEVICES": "", CPUS_ENV: ",".join(map(str, s))} for s in shares])

    @contextmanager
    def lease(self) -> Iterator[dict[str, str]]:
        """Yield the environment variables of a free slot for a child process; waits for one."""
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)
