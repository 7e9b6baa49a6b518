"""What a run's numbers depend on besides its inputs: the CPU, the instruction sets that
change float results, the numeric libraries' versions and the pins that steer them.

Training on a CPU is deterministic on one machine, but oneDNN and XLA pick kernels by the
instruction sets they find (AVX2, AVX-512, AMX), and the order of a sum changes with them:
two machines can agree on the split and differ in the fourth digit of an epoch's loss, and
after a few epochs in the chosen epoch. Every run records this description so a number can
be traced to what produced it. A leaf: it imports nothing of the project.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The instruction sets whose presence changes which kernels oneDNN/XLA run on x86 and Arm.
FLOAT_RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
)
NUMERIC_LIBRARIES = ("tensorflow", "keras", "jax", "jaxlib", "numpy")
# Environment variables that change which kernels run (see README "Demo run").
KERNEL_PINS = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "XLA_FLAGS", "TF_DETERMINISTIC_OPS")
_CPUINFO = Path("/proc/cpuinfo")


def _linux_cpu(text: str) -> tuple[str, set[str]]:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def cpu_description(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """The CPU's model name and which of FLOAT_RELEVANT_FLAGS it has (lower case).

    Args:
        cpuinfo: the text of /proc/cpuinfo; read from the machine when None (Linux), else
            `sysctl` is asked (macOS).
    """
    if cpuinfo is None and _CPUINFO.is_file():
        cpuinfo = _CPUINFO.read_text(errors="replace")
    if cpuinfo is not None:
        model, flags = _linux_cpu(cpuinfo)
    else:
        model = _sysctl("machdep.cpu.brand_string")
        features = " ".join(
            _sysctl(n) for n in ("machdep.cpu.features", "machdep.cpu.leaf7_features")
        )
        flags = {f.lower().replace(".", "_") for f in features.split()}
        if platform.machine() == "arm64":
            flags.add("asimd")
    model = model or platform.processor() or platform.machine() or "unknown"
    return model, [f for f in FLOAT_RELEVANT_FLAGS if f in flags]


def library_versions() -> dict[str, str]:
    """Installed versions of the numeric libraries (without importing them)."""
    versions = {}
    for name in NUMERIC_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_description() -> dict[str, object]:
    """What a run's numbers depend on besides its inputs, JSON-ready."""
    model, flags = cpu_description()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "machine": platform.machine(),
        "os": platform.system(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "kernel_pins": {k: os.environ[k] for k in KERNEL_PINS if k in os.environ},
    }


def machine_tags(description: dict[str, object]) -> dict[str, str]:
    """The description as flat MLflow tags (`machine.cpu`, `machine.tensorflow`, ...)."""
    tags = {
        "machine.cpu": str(description["cpu"]),
        "machine.cpu_flags": " ".join(description["cpu_flags"]) or "none",
        "machine.cores": str(description["cores"]),
        "machine.python": str(description["python"]),
    }
    tags.update({f"machine.{k}": v for k, v in description["libraries"].items()})
    tags.update({f"machine.pin.{k}": v for k, v in description["kernel_pins"].items()})
    return tags


def machine_record(description: dict[str, object]) -> dict[str, object]:
    """The description for a metrics file (`machine` in metrics.json): nested strings and
    numbers, the instruction sets joined by spaces, since `dvc metrics show` drops lists."""
    return {**description, "cpu_flags": " ".join(description["cpu_flags"]) or "none"}
