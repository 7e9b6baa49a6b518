"""The Keras backend this process runs on, and everything that is specific to one backend.

Model code elsewhere is backend-agnostic Keras 3 (`keras.ops`, numpy batches,
`train_on_batch`, `predict_on_batch`). What cannot be said in Keras lives here, each piece
behind a check of `keras.backend.backend()`: thread and GPU-memory settings, the compute
precision, XLA, the persistent compilation cache, a compiled function, the gradient of a
function with respect to its input, and the framework pins of a logged model. This is the
only module that imports TensorFlow, JAX or PyTorch.

The backend is chosen by KERAS_BACKEND (tensorflow by default) before Keras is imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

Precision = Literal["float32", "float16", "bfloat16"]

# Set by the device pool for a process that shares a GPU: its memory cap in MiB (TensorFlow
# reads it here; JAX reads XLA_PYTHON_CLIENT_MEM_FRACTION itself).
GPU_MEMORY_ENV = "MYELOMET_GPU_MEMORY_MB"
# The framework packages of each backend, pinned in a logged model's requirements.
_FRAMEWORK_PACKAGES = {
    "tensorflow": ("tensorflow",),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}


def backend() -> str:
    """The active Keras backend: tensorflow, jax or torch."""
    import keras

    return keras.backend.backend()


@dataclass(frozen=True)
class Runtime:
    """How this process computes: backend, GPUs, compute precision, XLA, compile cache."""

    backend: str
    gpus: int
    precision: Precision
    xla: bool
    compile_cache: str | None = None


def configure_runtime(
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto",
    xla: Literal["auto", "on", "off"] = "auto",
    compile_cache: Path | None = None,
) -> Runtime:
    """Set up the backend for training or inference in this process.

    "auto" precision is mixed float16 on TensorFlow GPUs, mixed bfloat16 on JAX or PyTorch
    GPUs, float32 on a CPU. "auto" XLA is on with a GPU; JAX always compiles its steps with
    XLA (on a CPU too: uncompiled JAX runs one operation at a time). TensorFlow without a
    GPU uses the CPUs this process may run on and skips Grappler. Thread, memory and cache
    settings only take effect before the backend's first operation.

    Args:
        mixed_precision: as training.mixed_precision.
        xla: as training.xla.
        compile_cache: a folder for compiled programs that later processes reuse, or None.
    """
    import keras

    name = backend()
    cache = None
    if compile_cache is not None:
        compile_cache.mkdir(parents=True, exist_ok=True)
        cache = str(compile_cache.resolve())
    gpus = {"tensorflow": _tensorflow_gpus, "jax": _jax_gpus, "torch": _torch_gpus}[name]()
    use_xla = name == "jax" or (bool(gpus) if xla == "auto" else xla == "on")
    if name == "tensorflow":
        _configure_tensorflow(gpus, cache if use_xla else None)
    elif name == "jax" and cache is not None:
        _configure_jax_cache(cache)
    if mixed_precision == "auto":
        precision: Precision = "float32"
        if gpus:
            precision = "float16" if name == "tensorflow" else "bfloat16"
    elif mixed_precision == "off":
        precision = "float32"
    else:
        precision = mixed_precision
    keras.config.set_dtype_policy("float32" if precision == "float32" else f"mixed_{precision}")
    return Runtime(name, gpus, precision, use_xla, cache)


def _tensorflow_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def _jax_gpus() -> int:
    import jax

    return sum(1 for d in jax.devices() if d.platform == "gpu")


def _torch_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _configure_tensorflow(gpus: int, cache: str | None) -> None:
    import tensorflow as tf

    if cache is not None and "tf_xla_persistent_cache_directory" not in os.environ.get(
        "TF_XLA_FLAGS", ""
    ):
        # read once, when XLA first compiles: XLA-compiled steps (GPUs) are cached on disk
        flags = os.environ.get("TF_XLA_FLAGS", "")
        os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={cache}"
    devices = tf.config.list_physical_devices("GPU")
    cap = os.environ.get(GPU_MEMORY_ENV)
    with contextlib.suppress(RuntimeError):  # already initialised: settings stay as they are
        for gpu in devices:
            if cap:
                config = tf.config.LogicalDeviceConfiguration(memory_limit=int(cap))
                tf.config.set_logical_device_configuration(gpu, [config])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        if not gpus:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            tf.config.threading.set_intra_op_parallelism_threads(cpus or 0)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    if not gpus:
        # Grappler's graph rewrites cost 2-10 s per traced function on a CPU (DenseNet169's
        # first training step: 15 s with them, 5 s without) and measured no faster steps.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def _configure_jax_cache(cache: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    # every program, however quick to compile: the seven backbones' many small ones add up
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def compiled(fn: Callable[..., Any], xla: bool = False) -> Callable[..., Any]:
    """`fn` (of backend tensors, no Python side effects) compiled once per input shape:
    a tf.function (XLA when `xla`), a jax.jit, or `fn` itself on PyTorch."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=xla, autograph=False, reduce_retracing=True)
    if name == "jax":
        import jax

        return jax.jit(fn)
    return fn


def input_gradient(fn: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    """The gradient of a scalar function of a backend tensor, at x.

    Args:
        fn: maps a tensor shaped like x to a scalar tensor, with Keras layers and keras.ops.
        x: where to take the gradient (float32).

    Returns:
        d fn / d x as a float32 array shaped like x.
    """
    name = backend()
    x = np.asarray(x, dtype=np.float32)
    if name == "tensorflow":
        import tensorflow as tf

        tensor = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            value = fn(tensor)
        grad = tape.gradient(value, tensor)
    elif name == "jax":
        import jax

        grad = jax.grad(fn)(jax.numpy.asarray(x))
    else:
        import keras

        tensor = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        fn(tensor).backward()
        grad = tensor.grad
    return np.asarray(to_numpy(grad), dtype=np.float32)


def to_numpy(value: Any) -> np.ndarray:
    """A backend tensor (on any device) as a numpy array."""
    import keras

    return keras.ops.convert_to_numpy(value)


def framework_requirements() -> list[str]:
    """Pinned pip requirements of the active backend and Keras, for a logged model."""
    names = (*_FRAMEWORK_PACKAGES[backend()], "keras")
    return [f"{n}=={metadata.version(n)}" for n in names]
