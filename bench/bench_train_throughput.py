"""Which training loop is fastest here: `train_on_batch` (what the project runs),
`Model.fit` with `steps_per_execution`, and a hand-written `tf.function` step with
`GradientTape` (the loop before training became backend-agnostic; TensorFlow only).

Every loop trains the same freshly built model (same seed, same numpy batches, every layer
training, as from scratch) with Adam and class weights; the first epoch includes tracing
and compilation, the rate is the median of the later ones. Ratios are against
`train_on_batch`, measured in the same run. Sizes and batch come from params.yaml unless
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


def _model(name: str, size: int, xla: bool) -> Any:
    import keras

    from components import backbones, training_loop

    keras.utils.set_random_seed(0)
    model = backbones.build_model(name, size, "none")
    training_loop.compile_model(model, 1e-3, xla, positive=0)
    return model


def _loop_train_on_batch(model: Any, batches: Any, epoch: int) -> None:
    from components import training_loop

    training_loop.fit_epoch(model, batches, epoch, "")


def _loop_fit(steps: int) -> Callable[[Any, Any, int], None]:
    def run(model: Any, batches: Any, epoch: int) -> None:
        if epoch == 0:  # compiled as the project compiles, with steps_per_execution
            import keras

            from components.backbones import PositiveClassAUC, UnweightedAccuracy

            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss="sparse_categorical_crossentropy",
                metrics=[UnweightedAccuracy(), PositiveClassAUC(0)],
                jit_compile=model.jit_compile,
                steps_per_execution=steps,
            )
        x = np.asarray(batches.x[batches.rows], np.float32)
        y, w = batches.y[batches.rows], batches.w[batches.rows]
        model.fit(x, y, sample_weight=w, batch_size=batches.batch, epochs=1, verbose=0)

    return run


def _loop_gradient_tape() -> Callable[[Any, Any, int], None]:
    """The project's loop before Keras 3 backends: one traced step over a GradientTape."""
    state: dict[str, Any] = {}

    def run(model: Any, batches: Any, epoch: int) -> None:
        import keras
        import tensorflow as tf

        if "step" not in state:
            optimizer = model.optimizer
            optimizer.build(model.trainable_variables)
            spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)

            @tf.function(
                input_signature=[spec, tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,))],
                autograph=False,
            )
            def step(x: Any, y: Any, w: Any) -> Any:
                with tf.GradientTape() as tape:
                    probs = model(x, training=True)
                    ce = keras.losses.sparse_categorical_crossentropy(y, probs)
                    loss = tf.reduce_mean(ce * w)
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply(grads, model.trainable_variables)
                return loss

            state["step"] = step
        for xb, yb, wb in batches.epoch(epoch):
            state["step"](xb, yb, wb)

    return run


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
    from components import backbones, runtime, training_data
    from components.config import load_config

    cfg = load_config(args.params)
    rt = runtime.configure_runtime(cfg.training.mixed_precision, cfg.training.xla)
    import_s = time.perf_counter() - started
    batch = args.batch or cfg.training.batch_size
    loops: dict[str, Callable[[Any, Any, int], None]] = {
        "train_on_batch": _loop_train_on_batch,
        f"fit(steps_per_execution={args.steps_per_execution})": _loop_fit(args.steps_per_execution),
    }
    if rt.backend == "tensorflow":
        loops["tf.function + GradientTape"] = _loop_gradient_tape()
    print(
        f"Keras on {rt.backend}, {os.cpu_count()} CPUs, {rt.gpus} GPUs, {rt.precision}, "
        f"XLA {rt.xla}; batch {batch}, {args.images} images per epoch; imports {import_s:.1f} s"
    )
    print(f"{'backbone':15s} {'loop':32s} {'1st epoch s':>11s} {'img/s':>8s} {'ratio':>6s}")
    rng = np.random.default_rng(0)
    for name in args.backbones or DEFAULT_BACKBONES:
        size = backbones.get_backbone(name).input_size(args.size or cfg.training.image_size)
        x = rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
        y = rng.integers(0, 2, args.images).astype(np.int32)
        w = training_data.class_weights(y, 2)[y]
        data = training_data.Batches(x, y, w, np.arange(len(y)), batch, shuffle=True)
        base = None
        for label, loop in loops.items():
            model = _model(name, size, rt.xla)
            start = time.perf_counter()
            loop(model, data, 0)
            first_s = time.perf_counter() - start
            rates = []
            for epoch in range(1, args.epochs + 1):
                start = time.perf_counter()
                loop(model, data, epoch)
                rates.append(len(data) * batch / (time.perf_counter() - start))
            rate = float(np.median(rates))
            base = base or rate
            print(
                f"{name:15s} {label:32s} {first_s:11.1f} {rate:8.1f} {rate / base:6.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
