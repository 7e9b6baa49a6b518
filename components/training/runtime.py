"""The Keras backend this process runs on, and everything that is specific to one backend.

Model code elsewhere is backend-agnostic Keras 3 (`keras.ops`, numpy batches, stateless
calls, `predict_on_batch`). What cannot be said in Keras lives here, each piece behind a
check of `keras.backend.backend()`: thread and GPU-memory settings, the compute
precision, XLA, the persistent compilation cache, the training step, a compiled function,
the gradient of a function with respect to its input, and the framework pins of a logged
model. This is the only module that imports TensorFlow or JAX.

The backend is chosen by KERAS_BACKEND (tensorflow by default, or jax) before Keras is
imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import keras

Precision = Literal["float32", "float16", "bfloat16"]

# Set by the device pool for a process that shares a GPU: its memory cap in MiB (TensorFlow
# reads it here; JAX reads XLA_PYTHON_CLIENT_MEM_FRACTION itself).
GPU_MEMORY_ENV = "MYELOMET_GPU_MEMORY_MB"
# The framework packages of each backend, pinned in a logged model's requirements.
_FRAMEWORK_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib")}


def backend() -> str:
    """The active Keras backend: tensorflow or jax."""
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
    cpu_threads: int | None = None,
) -> Runtime:
    """Set up the backend for training or inference in this process.

    "auto" precision is mixed float16 on TensorFlow GPUs, mixed bfloat16 on JAX GPUs,
    float32 on a CPU. "auto" XLA is on with a GPU; JAX always compiles its steps with
    XLA (on a CPU too: uncompiled JAX runs one operation at a time). TensorFlow without a
    GPU runs deterministic operations on `cpu_threads` threads (the CPUs this process may
    run on when None) and skips Grappler. Thread, memory and cache settings only take
    effect before the backend's first operation.

    Args:
        mixed_precision: as training.mixed_precision.
        xla: as training.xla.
        compile_cache: a folder for compiled programs that later processes reuse, or None.
        cpu_threads: as training.cpu_threads: a fixed number makes results independent of
            the machine's core count.
    """
    import keras

    name = backend()
    if name not in _FRAMEWORK_PACKAGES:
        raise ValueError(f"KERAS_BACKEND is {name!r}; myelomet runs on tensorflow or jax")
    cache = None
    if compile_cache is not None:
        compile_cache.mkdir(parents=True, exist_ok=True)
        cache = str(compile_cache.resolve())
    gpus = {"tensorflow": _tensorflow_gpus, "jax": _jax_gpus}[name]()
    use_xla = name == "jax" or (bool(gpus) if xla == "auto" else xla == "on")
    if name == "tensorflow":
        _configure_tensorflow(gpus, cache if use_xla else None, cpu_threads)
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


def _configure_tensorflow(gpus: int, cache: str | None, cpu_threads: int | None) -> None:
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
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads or cpus or 0)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    if not gpus:
        tf.config.experimental.enable_op_determinism()
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
    a tf.function (XLA when `xla`) or a jax.jit."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=xla, autograph=False, reduce_retracing=True)
    import jax

    return jax.jit(fn)


def train_step(
    model: keras.Model, loss_fn: Callable[[Any, Any, Any], Any], xla: bool = False
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
    """One optimisation step of a compiled `model` with its own optimizer, compiled once.

    The step minimises `loss_fn(y, outputs, w)` (keras.ops on the training-mode outputs)
    plus the model's own losses. TensorFlow: a tf.function with one input signature over a
    GradientTape, XLA when `xla`, traced without autograph (Keras' own `train_on_batch`
    took 2.6 times as long to trace DenseNet121 on a CPU, 40 s against 15 s). JAX: a jax.jit
    of the stateless step; the new values are put back into the model's variables after
    every step, so checkpoints and the next phase see them.

    Returns:
        step(x, y, w) -> (loss, outputs as a numpy array).

    Raises:
        ValueError: the backend is neither tensorflow nor jax.
    """
    optimizer = model.optimizer
    if not optimizer.built:  # a loaded checkpoint's optimizer is built with its state
        optimizer.build(model.trainable_variables)
    name = backend()
    if name == "tensorflow":
        return _tensorflow_step(model, optimizer, loss_fn, xla)
    if name == "jax":
        return _jax_step(model, optimizer, loss_fn)
    raise ValueError(f"training runs on KERAS_BACKEND tensorflow or jax, not {name!r}")


def _tensorflow_step(
    model: keras.Model, optimizer: Any, loss_fn: Callable[[Any, Any, Any], Any], xla: bool
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
    import tensorflow as tf

    signature = [
        tf.TensorSpec((None, *model.input_shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None,), tf.float32),
    ]

    @tf.function(input_signature=signature, jit_compile=xla, autograph=False)
    def step(x: Any, y: Any, w: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            loss = loss_fn(y, outputs, w)
            if model.losses:
                loss += tf.add_n([tf.cast(v, loss.dtype) for v in model.losses])
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss, outputs

    def run(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
        loss, outputs = step(x, y, w)
        return float(loss), outputs.numpy()

    return run


def _jax_step(
    model: keras.Model, optimizer: Any, loss_fn: Callable[[Any, Any, Any], Any]
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
    import jax
    import keras

    if keras.config.dtype_policy().compute_dtype == "float16":
        raise ValueError(
            "mixed float16 needs loss scaling, which runs on TensorFlow; on JAX "
            "set training.mixed_precision: bfloat16 (or auto)"
        )

    def loss_and_state(trainable: Any, non_trainable: Any, x: Any, y: Any, w: Any) -> Any:
        outputs, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True
        )
        loss = loss_fn(y, outputs, w)
        for extra in losses:
            loss = loss + extra
        return loss, (outputs, non_trainable)

    gradient = jax.value_and_grad(loss_and_state, has_aux=True)

    @jax.jit
    def step(trainable: Any, non_trainable: Any, state: Any, x: Any, y: Any, w: Any) -> Any:
        (loss, (outputs, non_trainable)), grads = gradient(trainable, non_trainable, x, y, w)
        trainable, state = optimizer.stateless_apply(state, grads, trainable)
        return loss, outputs, trainable, non_trainable, state

    def run(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
        groups = (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        loss, outputs, *new = step(*([v.value for v in g] for g in groups), x, y, w)
        for variables, values in zip(groups, new, strict=True):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)
        return float(loss), np.asarray(outputs)

    return run


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
    else:
        import jax

        grad = jax.grad(fn)(jax.numpy.asarray(x))
    return np.asarray(to_numpy(grad), dtype=np.float32)


def to_numpy(value: Any) -> np.ndarray:
    """A backend tensor (on any device) as a numpy array."""
    import keras

    return keras.ops.convert_to_numpy(value)


def framework_requirements() -> list[str]:
    """Pinned pip requirements of the active backend and Keras, for a logged model."""
    names = (*_FRAMEWORK_PACKAGES[backend()], "keras")
    return [f"{n}=={metadata.version(n)}" for n in names]
