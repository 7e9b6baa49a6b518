"""Training throughput of each backbone on this machine, as the training loop runs it.

For every backbone, from random initialisation with every layer training (what the demo does
without ImageNet weights): the one-off cost of tracing the training step, then training
images per second over whole epochs, and inference images per second. Sizes and batch come
from params.yaml unless given.

    python bench/bench_train_throughput.py [--params params.yaml] [--size 64] [--batch 16]
        [--images 288] [--epochs 2] [--backbone NAME ...]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--size", type=int, help="input size (default: training.image_size)")
    parser.add_argument("--batch", type=int, help="batch size (default: training.batch_size)")
    parser.add_argument("--images", type=int, default=288, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the first")
    parser.add_argument("--backbone", action="append", dest="backbones")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    import keras

    from components import backbones, training_data, training_loop
    from components.config import load_config

    import_s = time.perf_counter() - started
    cfg = load_config(args.params)
    runtime = training_loop.configure_runtime(cfg.training.mixed_precision, cfg.training.xla)
    batch = args.batch or cfg.training.batch_size
    names = args.backbones or list(cfg.training.backbones)
    print(
        f"{os.cpu_count()} CPUs, {runtime.gpus} GPUs, {runtime.precision}, XLA {runtime.xla}; "
        f"batch {batch}, {args.images} images per epoch; TensorFlow import {import_s:.1f} s"
    )
    print(f"{'backbone':15s} {'size':>4s} {'build s':>8s} {'1st epoch s':>11s} "
          f"{'epoch s':>8s} {'train img/s':>11s} {'infer img/s':>11s}")  # fmt: skip
    rng = np.random.default_rng(0)
    for name in names:
        size = backbones.get_backbone(name).input_size(args.size or cfg.training.image_size)
        x = rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
        y = rng.integers(0, 2, args.images).astype(np.int32)
        keras.utils.set_random_seed(0)
        start = time.perf_counter()
        model = backbones.build_model(name, size, "none")
        training_loop.compile_model(model, 1e-3)
        steps = training_loop.Steps(model, runtime.xla)
        build_s = time.perf_counter() - start
        data = training_data.batches(
            x, y, np.ones(len(y), np.float32), np.arange(len(y)), batch, True
        )
        first = training_loop.fit_epoch(steps, data, name, positive=0)
        first_s = args.images / first["train_images_per_s"]
        epochs = [training_loop.fit_epoch(steps, data, name, 0) for _ in range(args.epochs)]
        rate = float(np.median([e["train_images_per_s"] for e in epochs]))
        steps.predict(x[:batch])
        start = time.perf_counter()
        steps.predict(x)
        infer = args.images / (time.perf_counter() - start)
        print(f"{name:15s} {size:4d} {build_s:8.1f} {first_s:11.1f} {args.images / rate:8.1f} "
              f"{rate:11.1f} {infer:11.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
