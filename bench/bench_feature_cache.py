"""Phase-1 head training with the feature cache vs the frozen backbone run every epoch.

Both train the same head (same initial weights, same batches, no dropout so the two agree)
on the same frozen MobileNetV2 for the same epochs and must reach the same validation loss;
the cached way computes the pooled features once and then trains only the head. The
backbone is randomly initialised (no ImageNet weights offline): frozen random features
carry a weaker signal, but the cost, which is what this measures, is the same.

    python bench/bench_feature_cache.py [--epochs 30] [--size 64] [--train 290] [--val 95]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _phantoms(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """0..255 images: a bright disk (class 0) or a dark hole (class 1) on noisy tissue."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    yy, xx = np.mgrid[:size, :size]
    x = rng.normal(110, 20, (n, size, size, 1))
    for i in range(n):
        cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < (rng.uniform(0.1, 0.18) * size) ** 2
        x[i, disk, 0] = 230 if y[i] == 0 else 20
    return np.clip(np.repeat(x, 3, axis=-1), 0, 255).astype(np.float32), y


def _train(
    model, x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray, epochs: int, batch: int
) -> float:
    """Train with the training loop's own steps and batches; returns the final val loss."""
    from components.training import batches, loop, runtime

    loop.compile_model(model, 1e-3)
    step = runtime.train_step(model, loop.weighted_loss)
    weights = np.ones(len(y), np.float32)
    data = batches.Batches(x, y, weights, np.arange(len(y)), batch, shuffle=True)
    for epoch in range(epochs):
        loop.fit_epoch(step, data, epoch, "", positive=0)
        val = loop.scores(vy, loop.predict(model, vx), positive=0)
    return val["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=290)
    parser.add_argument("--val", type=int, default=95)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from components.training import backbones, loop, runtime

    runtime.configure_runtime("off", "off")
    x, y = _phantoms(args.train + args.val, args.size, seed=0)
    tx, ty, vx, vy = x[: args.train], y[: args.train], x[args.train :], y[args.train :]

    keras.utils.set_random_seed(0)
    model = backbones.build_model("MobileNetV2", args.size, "none", dropout=0.0)
    backbones.set_trainable(model, "head")
    n_features = model.get_layer(backbones.POOL_LAYER).output.shape[-1]
    head = backbones.build_head(n_features, (512, 256), 0.0)
    backbones.copy_head(model, head)  # both start from the same head weights

    start = time.perf_counter()
    features = loop.predict(backbones.feature_extractor(model), x)
    features_s = time.perf_counter() - start
    keras.utils.set_random_seed(1)
    train_f, val_f = features[: args.train], features[args.train :]
    cached_loss = _train(head, train_f, ty, val_f, vy, args.epochs, args.batch)
    cached_s = time.perf_counter() - start

    start = time.perf_counter()
    keras.utils.set_random_seed(1)
    frozen_loss = _train(model, tx, ty, vx, vy, args.epochs, args.batch)
    frozen_s = time.perf_counter() - start

    print(
        f"MobileNetV2 (random init, frozen), {args.size} px, {args.train} train / {args.val} val "
        f"images, {args.epochs} epochs, batch {args.batch}, {os.cpu_count()} CPUs"
    )
    print(
        f"  feature cache: {cached_s:7.1f} s (features once {features_s:.1f} s); "
        f"val loss {cached_loss:.4f}"
    )
    print(f"  frozen backbone every epoch: {frozen_s:7.1f} s; val loss {frozen_loss:.4f}")
    print(
        f"  speed-up {frozen_s / cached_s:.1f}x; "
        f"|val loss difference| {abs(cached_loss - frozen_loss):.2e}"
    )


if __name__ == "__main__":
    main()
