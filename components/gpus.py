"""Which GPUs this machine has, found without importing TensorFlow, and a pool that hands
one to each training process."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


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


class GpuPool:
    """Lends each concurrent training process a GPU of its own (thread-safe)."""

    def __init__(self, gpus: list[str]) -> None:
        self._free: queue.Queue[str] = queue.Queue()
        for gpu in gpus:
            self._free.put(gpu)
        self.size = len(gpus)

    @contextmanager
    def lease(self) -> Iterator[dict[str, str]]:
        """Yield the environment variables that pin a child process to one free GPU.

        Without GPUs the child sees none (CUDA_VISIBLE_DEVICES empty), so TensorFlow
        does not probe for them.
        """
        if self.size == 0:
            yield {"CUDA_VISIBLE_DEVICES": ""}
            return
        gpu = self._free.get()
        try:
            yield {"CUDA_VISIBLE_DEVICES": gpu, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        finally:
            self._free.put(gpu)
