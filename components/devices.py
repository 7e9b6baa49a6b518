"""Which GPUs and CPU cores this machine has, found without importing TensorFlow, and a pool
that hands each concurrent training process devices of its own."""

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


class DevicePool:
    """Lends each concurrent training process a slot of its own (thread-safe): one GPU each
    where there are GPUs, else an equal share of the CPU cores."""

    def __init__(self, slots: list[dict[str, str]]) -> None:
        self._free: queue.Queue[dict[str, str]] = queue.Queue()
        for slot in slots:
            self._free.put(slot)
        self.size = len(slots)

    @classmethod
    def for_machine(cls, gpus: list[str], parallel: int, cpus: list[int]) -> DevicePool:
        """GPU slots (memory growth on) when `gpus`; otherwise `parallel` slots that split
        `cpus` between them and hide GPUs, so TensorFlow does not probe for them."""
        if gpus:
            return cls(
                [{"CUDA_VISIBLE_DEVICES": g, "TF_FORCE_GPU_ALLOW_GROWTH": "true"} for g in gpus]
            )
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
