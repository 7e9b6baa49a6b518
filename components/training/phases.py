"""The training phases of one backbone, with ImageNet weights or from scratch.

With ImageNet weights training has two phases (`train_pretrained`). Phase 1 trains the head
on the frozen backbone: its pooled features are computed once per image and cached on disk,
so an epoch costs only the head. Phase 2 (training.finetune_epochs > 0) unfreezes the top
training.finetune_fraction of the backbone (BatchNorm stays frozen) and trains on augmented
images at training.finetune_learning_rate.

Without them (training.weights: none, or weights that cannot be had and
training.require_pretrained false) a frozen random backbone carries no signal, so every layer
trains from the first epoch at training.scratch_learning_rate, on augmented images
(`train_from_scratch`). Short runs from scratch leave BatchNorm's moving statistics near their
initial values, which makes inference-mode outputs (validation, the saved model) nearly
constant; those runs recompute the statistics on the training set before each validation
(`PreciseBatchNorm`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from components.atomic import atomic_path
from components.config import Config
from components.training.batches import Augment, Batches, TrainingData, hash_json, input_key
from components.training.loop import (
    INFER_BATCH,
    Phase,
    PhaseContext,
    PreciseBatchNorm,
    predict,
    train_phase,
)

if TYPE_CHECKING:
    import keras

    from components.training.plan import RunPlan

log = logging.getLogger(__name__)


def _features(
    model: keras.Model, data: TrainingData, cfg: Config, plan: RunPlan
) -> tuple[np.ndarray, str]:
    """Pooled backbone features of every image, from the cache or computed once and cached
    under training.cache_dir/features/<backbone>/, keyed by data version, size, windows and
    weights file.

    Returns:
        The features and "hit" or "miss".
    """
    from components.training.backbones import feature_extractor

    key = hash_json([data.version, plan.size, plan.source.sha256, input_key(cfg)])[:16]
    path = cfg.path(cfg.training.cache_dir) / "features" / plan.name / f"{plan.size}px-{key}.npy"
    if path.is_file():
        features = np.load(path)
        if len(features) == len(data.y):
            log.info("%s: backbone features from cache %s", plan.name, path)
            return features, "hit"
    log.info("%s: computing backbone features of %d images (once)", plan.name, len(data.y))
    features = predict(feature_extractor(model), data.x)
    with atomic_path(path) as tmp:
        np.save(tmp, features)
    return features, "miss"


def train_pretrained(
    ctx: PhaseContext, data: TrainingData, sample_w: np.ndarray, plan: RunPlan
) -> tuple[keras.Model | None, np.ndarray]:
    """Phase 1 (head on cached features), then phase 2 (fine-tune the top, augmented).

    Returns:
        The full model (None when paused) and what ctx.predict takes to predict every row as
        the model would: the features when phase 2 did not run, else the images.
    """
    from components.training import backbones

    tc, state = ctx.cfg.training, ctx.state
    train_rows, val_rows = data.rows("train"), data.rows("val")
    model = _build(ctx.cfg, plan)
    backbones.set_trainable(model, "head")
    if state.phase != "finetune":
        t = time.perf_counter()
        features, cache = _features(model, data, ctx.cfg, plan)
        state.extra.update(feature_cache=cache, features_s=time.perf_counter() - t)
        head = train_phase(
            ctx,
            "head",
            lambda: backbones.build_head(
                features.shape[1], tc.head_units, tc.dropout, len(ctx.cfg.classes)
            ),
            tc.learning_rate,
            tc.epochs,
            Batches(features, data.y, sample_w, train_rows, tc.batch_size, True, seed=tc.seed),
            features[val_rows],
            data.y[val_rows],
        )
        if head is None:
            return None, features
        backbones.copy_head(head, model)
        if tc.finetune_epochs == 0:
            return model, features

    def unfreeze() -> keras.Model:
        n = backbones.set_trainable(model, "top", tc.finetune_fraction)
        log.info("%s: fine-tuning the top %d backbone layers", ctx.name, n)
        return model

    tuned = _image_phase(
        ctx, data, sample_w, "finetune", unfreeze, tc.finetune_learning_rate, tc.finetune_epochs
    )
    return tuned, data.x


def train_from_scratch(
    ctx: PhaseContext, data: TrainingData, sample_w: np.ndarray, plan: RunPlan
) -> keras.Model | None:
    """Every layer trains from random initialisation, on augmented images (a network that
    learns everything from a few hundred slices memorises them otherwise); BatchNorm
    statistics are recomputed on the training images before each validation, so the
    checkpoints hold them too."""
    from components.training import backbones

    tc = ctx.cfg.training
    train_rows = data.rows("train")

    def make() -> keras.Model:
        model = _build(ctx.cfg, plan)
        backbones.set_trainable(model, "all")
        sample = np.asarray(data.x[np.sort(train_rows[:INFER_BATCH])], dtype=np.float32)
        if redrawn := backbones.scratch_initialise(model, sample, tc.seed):
            log.info("%s: no BatchNorm: %d kernels redrawn to unit variance", ctx.name, redrawn)
        return model

    def recalibrate(model: keras.Model) -> Callable[[], object]:
        precise = PreciseBatchNorm(model, ctx.runtime.xla)
        ctx.state.extra["bn_recalibrated_layers"] = len(precise.layers)
        return functools.partial(precise, data.x, train_rows)

    return _image_phase(
        ctx, data, sample_w, "scratch", make, tc.scratch_learning_rate, tc.epochs, recalibrate
    )


def _image_phase(
    ctx: PhaseContext,
    data: TrainingData,
    sample_w: np.ndarray,
    phase: Phase,
    make_model: Callable[[], keras.Model],
    learning_rate: float,
    epochs: int,
    before_validation: Callable[[keras.Model], Callable[[], object]] | None = None,
) -> keras.Model | None:
    """A phase on whole images (fine-tuning, from scratch): augmented training batches,
    validated on the validation images; see `train_phase`."""
    tc = ctx.cfg.training
    train_rows, val_rows = data.rows("train"), data.rows("val")
    augment = Augment(tc.augment_rotation_deg, tc.augment_intensity)
    return train_phase(
        ctx,
        phase,
        make_model,
        learning_rate,
        epochs,
        Batches(data.x, data.y, sample_w, train_rows, tc.batch_size, True, augment, tc.seed),
        np.asarray(data.x[val_rows], dtype=np.float32),
        data.y[val_rows],
        before_validation,
    )


def _build(cfg: Config, plan: RunPlan) -> keras.Model:
    from components.training.backbones import build_model

    tc = cfg.training
    return build_model(
        plan.name, plan.size, plan.source, tc.head_units, tc.dropout, len(cfg.classes)
    )


def float32_copy(model: keras.Model, cfg: Config, plan: RunPlan) -> keras.Model:
    """The trained model rebuilt under float32, so a saved model runs anywhere (CPU serving)."""
    import keras

    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        copy = _build(cfg, plan)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    for layer in copy.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy
