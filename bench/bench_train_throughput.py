"""Which training loop is fastest here: the project's step (`runtime.train_step`: a
tf.function over a GradientTape on TensorFlow, a jax.jit of the stateless step on JAX),
Keras' `Model.train_on_batch`, and `Model.fit` with `steps_per_execution`.

Every loop trains the same freshly built model (same seed, same numpy batches, every layer
training, as from scratch) with Adam and class weights; the first epoch includes tracing
and compilation, the rate is the median of the later ones. Ratios are against the
project's step, measured in the same run. Sizes and batch come from params.yaml unless
given.

    python bench/bench_train_throughput.py [--params params.yaml] [--size 64] [--batch 16]
        [--images 288] [--epochs 2] [--steps-per-execution 8] [--backbone NAME ...]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_BACKBONES = ("MobileNetV2", "EfficientNetB0", "DenseNet121")

Loop = Callable[[Any, Any, int], None]


def _model(name: str, size: int) -> Any:
    import keras

    from components.training import backbones, loop

    keras.utils.set_random_seed(0)
    model = backbones.build_model(name, size, "none")
    loop.compile_model(model, 1e-3)
    return model


def _loop_project(xla: bool) -> Loop:
    """The project's loop: `runtime.train_step`, one compiled step per backend."""
    state: dict[str, Any] = {}

    def run(model: Any, batches: Any, epoch: int) -> None:
        from components.training import loop, runtime

        if "step" not in state:
            state["step"] = runtime.train_step(model, loop.weighted_loss, xla)
        loop.fit_epoch(state["step"], batches, epoch, "", positive=0)

    return run


def _loop_train_on_batch(xla: bool) -> Loop:
    def run(model: Any, batches: Any, epoch: int) -> None:
        if epoch == 0:
            _recompile(model, xla, steps=1)
        for xb, yb, wb in batches.epoch(epoch):
            model.train_on_batch(xb, yb, sample_weight=wb)

    return run


def _loop_fit(xla: bool, steps: int) -> Loop:
    def run(model: Any, batches: Any, epoch: int) -> None:
        if epoch == 0:
            _recompile(model, xla, steps)
        x = np.asarray(batches.x[batches.rows], np.float32)
        y, w = batches.y[batches.rows], batches.w[batches.rows]
        model.fit(x, y, sample_weight=w, batch_size=batches.batch, epochs=1, verbose=0)

    return run


def _recompile(model: Any, xla: bool, steps: int) -> None:
    """Keras' own step: the same optimizer and loss, XLA as the project would use it."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        jit_compile=xla,
        steps_per_execution=steps,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--size", type=int, help="input size (default: training.image_size)")
    parser.add_argument("--batch", type=int, help="batch size (default: training.batch_size)")
    parser.add_argument("--images", type=int, default=288, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the first")
    parser.add_argument("--steps-per-execution", type=int, default=8)
    parser.add_argument("--backbone", action="append", dest="backbones")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    from components.config import load_config
    from components.training import backbones, batches, runtime

    cfg = load_config(args.params)
    rt = runtime.configure_runtime(cfg.training.mixed_precision, cfg.training.xla)
    import_s = time.perf_counter() - started
    batch = args.batch or cfg.training.batch_size
    spe = args.steps_per_execution
    loops: dict[str, Callable[[], Loop]] = {
        "runtime.train_step (the project's)": lambda: _loop_project(rt.xla),
        "Model.train_on_batch": lambda: _loop_train_on_batch(rt.xla),
        f"Model.fit(steps_per_execution={spe})": lambda: _loop_fit(rt.xla, spe),
    }
    print(
        f"Keras on {rt.backend}, {os.cpu_count()} CPUs, {rt.gpus} GPUs, {rt.precision}, "
        f"XLA {rt.xla}; batch {batch}, {args.images} images per epoch; imports {import_s:.1f} s"
    )
    print(f"{'backbone':15s} {'loop':36s} {'1st epoch s':>11s} {'img/s':>8s} {'ratio':>6s}")
    rng = np.random.default_rng(0)
    for name in args.backbones or DEFAULT_BACKBONES:
        size = backbones.get_backbone(name).input_size(args.size or cfg.training.image_size)
        x = rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
        y = rng.integers(0, 2, args.images).astype(np.int32)
        w = batches.class_weights(y, 2)[y]
        data = batches.Batches(x, y, w, np.arange(len(y)), batch, shuffle=True)
        base = None
        for label, make_loop in loops.items():
            model, train = _model(name, size), make_loop()
            start = time.perf_counter()
            train(model, data, 0)
            first_s = time.perf_counter() - start
            rates = []
            for epoch in range(1, args.epochs + 1):
                start = time.perf_counter()
                train(model, data, epoch)
                rates.append(len(data) * batch / (time.perf_counter() - start))
            rate = float(np.median(rates))
            base = base or rate
            print(
                f"{name:15s} {label:36s} {first_s:11.1f} {rate:8.1f} {rate / base:6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
