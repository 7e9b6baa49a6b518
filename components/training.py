"""One backbone, start to end: data, training, model, metrics, predictions, MLflow run.

With ImageNet weights training has two phases. Phase 1 trains the head on the frozen
backbone: its pooled features are computed once per image and cached on disk, so an epoch
costs only the head. Phase 2 (training.finetune_epochs > 0) unfreezes the top
training.finetune_fraction of the backbone (BatchNorm stays frozen) and trains on augmented
images at training.finetune_learning_rate.

Without them (training.weights: none, or weights that cannot be had and
training.require_pretrained false) a frozen random backbone carries no signal, so every layer
trains from the first epoch at training.scratch_learning_rate, on augmented images. Short
runs from scratch leave BatchNorm's moving statistics near their initial values, which makes
inference-mode outputs (validation, the saved model) nearly constant; those runs recompute
the statistics on the training set before each validation (`PreciseBatchNorm`).

Every epoch writes a checkpoint (model with optimizer state, and a JSON state) to
`out_dir/checkpoint/`; a run that stops resumes from its last epoch, and a finished run with
the same inputs is skipped. Training is a plain loop over tf.data rather than `Model.fit`:
`fit` traces each training step twice, which on a CPU costs up to a minute per backbone.

Run one backbone in its own process (TensorFlow does not give memory back):
`python -m components.training --backbone NAME [--params params.yaml] [--out DIR]
[--parent-run-id ID]`; see `main` for outputs and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from components.config import Config, load_config

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from matplotlib.figure import Figure

    from components.backbones import WeightsSource
    from components.tracking import BackboneRun, Store

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training_curves.png"
PREDICTIONS_FILE = "predictions.csv"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
CHECKPOINT_DIR = "checkpoint"

# Part of every inputs hash: bump it when a change here changes what training produces.
TRAINING_VERSION = 2
# Batch for inference passes (features, validation, predictions, BatchNorm statistics).
INFER_BATCH = 64

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_DATA = 4

Phase = Literal["head", "finetune", "scratch"]
Status = Literal["trained", "resumed", "skipped", "paused"]


class InputDataError(ValueError):
    """The manifest or split cannot be used for training."""


def probability_column(positive_class: str) -> str:
    """Name of the predicted-probability column in predictions.csv (e.g. p_mm)."""
    return f"p_{positive_class.lower()}"


def _sha256_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _input_key(cfg: Config) -> dict[str, Any]:
    """What of the input config shapes the model inputs (part of cache keys and hashes)."""
    return {
        "windows": [w.model_dump() for w in cfg.input.channel_windows()],
        "crop": cfg.input.crop,
    }


def data_version(manifest: Path, split: Path) -> str:
    """Short hash of the manifest and split contents: the data a model was trained on."""
    return _sha256_files([manifest, split])[:16]


@dataclass(frozen=True)
class TrainResult:
    """What one backbone's training produced; also written to `out_dir/result.json`.

    `status`: trained, resumed (finished after a restart), skipped (already done with the
    same inputs) or paused (stopped by epoch_limit; run again to continue).
    `weights`: imagenet or random (trained from scratch).
    """

    backbone: str
    status: Status
    out_dir: str
    weights: Literal["imagenet", "random"]
    image_size: int
    inputs_hash: str
    data_version: str
    epochs_run: int
    best_epoch: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_auc: float | None = None
    seconds: float = 0.0
    run_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        raw = json.loads(text)
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Data:
    table: pd.DataFrame  # image_id, patient, label, split; row i is x[i]
    x: np.ndarray  # (n, size, size, 3) float32 0..255, maybe memory-mapped
    y: np.ndarray  # class index into cfg.classes
    version: str

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)


def _data_paths(cfg: Config) -> tuple[Path, Path]:
    manifest = cfg.path(cfg.ingest.out) / "manifest.csv"
    split = cfg.path(cfg.split.out)
    for path, stage in ((manifest, "ingest"), (split, "split")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `myelomet {stage}` first")
    return manifest, split


def _read_table(cfg: Config, manifest: Path, split: Path) -> pd.DataFrame:
    rows = pd.read_csv(split)
    files = pd.read_csv(manifest, usecols=["image_id", "file"])
    table = rows.merge(files, on="image_id", how="left", validate="one_to_one")
    missing = table["file"].isna()
    if missing.any():
        raise InputDataError(
            f"{split}: {int(missing.sum())} image_ids are not in {manifest} "
            f"(e.g. {table.loc[missing, 'image_id'].iloc[0]}); rerun `myelomet split`"
        )
    unknown = sorted(set(table["label"]) - set(cfg.classes))
    if unknown:
        raise InputDataError(f"{split}: labels {unknown} are not in classes {list(cfg.classes)}")
    for name in ("train", "val"):
        if not (table["split"] == name).any():
            raise InputDataError(f"{split}: no {name} rows; training needs train and val")
    return table


def load_inputs(cfg: Config, size: int) -> _Data:
    """Every slice of the split as model input at one size, cached under training.cache_dir.

    The cache (`inputs/<size>px-<key>.npy`, memory-mapped when read) is keyed by the data
    version, windows and size, so backbones of the same size share it.

    Raises:
        FileNotFoundError: manifest or split missing.
        InputDataError: they do not fit together.
    """
    from tqdm import tqdm

    from components.dataset import model_input

    manifest, split = _data_paths(cfg)
    version = data_version(manifest, split)
    table = _read_table(cfg, manifest, split)
    windows = cfg.input.channel_windows()
    key = _hash_json([version, size, _input_key(cfg)])[:16]
    path = cfg.path(cfg.training.cache_dir) / "inputs" / f"{size}px-{key}.npy"
    n = len(table)
    x: np.ndarray | None = None
    if path.is_file():
        x = np.load(path, mmap_mode="r")
        if x.shape != (n, size, size, 3):
            x = None
    if x is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, size, size, 3))
        for i, file in enumerate(tqdm(table["file"], desc=f"model inputs {size}px", disable=None)):
            out[i] = model_input(np.load(manifest.parent / file), windows, size, cfg.input.crop)
        out.flush()
        del out
        os.replace(tmp, path)
        x = np.load(path, mmap_mode="r")
    y = table["label"].map({c: i for i, c in enumerate(cfg.classes)}).to_numpy(np.int32)
    return _Data(table[["image_id", "patient", "label", "split"]], x, y, version)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights n / (k * n_c) of the training labels (absent classes get 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(y) / (n_classes * counts), 0.0)
    return weights.astype(np.float32)


# --------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class Runtime:
    """How TensorFlow runs here: GPUs, compute precision, XLA."""

    gpus: int
    precision: Literal["float32", "float16", "bfloat16"]
    xla: bool


def configure_runtime(
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto",
    xla: Literal["auto", "on", "off"] = "auto",
) -> Runtime:
    """Set GPU memory growth, CPU threads, the Keras dtype policy; decide on XLA.

    "auto" turns mixed float16 and XLA on with a GPU and off without one. Without a GPU,
    TensorFlow uses every CPU this process may run on (one op at a time) and skips Grappler.
    Thread and memory settings only take effect before TensorFlow's first operation.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    with contextlib.suppress(RuntimeError):
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if not gpus:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            tf.config.threading.set_intra_op_parallelism_threads(cpus or 0)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    if not gpus:
        # Grappler's graph rewrites cost 2-10 s per traced function on a CPU (DenseNet169's
        # first training step: 15 s with them, 5 s without) and measured no faster steps.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if mixed_precision == "auto":
        precision = "float16" if gpus else "float32"
    elif mixed_precision == "off":
        precision = "float32"
    else:
        precision = mixed_precision
    keras.mixed_precision.set_dtype_policy(
        "float32" if precision == "float32" else f"mixed_{precision}"
    )
    use_xla = bool(gpus) if xla == "auto" else xla == "on"
    return Runtime(len(gpus), precision, use_xla)


# --------------------------------------------------------------------------- tf.data


def _dataset(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    rows: np.ndarray,
    batch: int,
    shuffle: bool,
    augment: Callable[..., Any] | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (x, y, sample weight) gathered from arrays (memory-mapped ones included),
    shuffled with `seed` when `shuffle`."""
    import tensorflow as tf

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.sort(idx)
        return np.asarray(x[idx], dtype=np.float32), y[idx], w[idx]

    ds = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    # whole batches only when there are some: a batch of 1-2 images upsets BatchNorm
    ds = ds.batch(batch, drop_remainder=shuffle and len(rows) > batch)
    shape = (None, *x.shape[1:])

    @tf.autograph.experimental.do_not_convert
    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        xb, yb, wb = tf.numpy_function(gather, [idx], (tf.float32, tf.int32, tf.float32))
        xb.set_shape(shape)
        yb.set_shape((None,))
        wb.set_shape((None,))
        return xb, yb, wb

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augmenter(rotation_deg: float, intensity: float, seed: int) -> Callable[..., Any]:
    """Random left-right flip, rotation within ±rotation_deg, gain and offset within
    ±intensity (of the 0..255 range), on batches of (x, y, w).

    Only left-right flips: an axial slice flipped front to back is not anatomy.
    """
    import keras
    import tensorflow as tf

    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    rotate = (
        keras.layers.RandomRotation(rotation_deg / 360.0, fill_mode="nearest", seed=seed)
        if rotation_deg > 0
        else None
    )

    @tf.autograph.experimental.do_not_convert
    def augment(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = flip(x, training=True)
        if rotate is not None:
            x = rotate(x, training=True)
        if intensity > 0:
            n = tf.shape(x)[0]
            gain = tf.random.uniform((n, 1, 1, 1), 1.0 - intensity, 1.0 + intensity)
            offset = tf.random.uniform((n, 1, 1, 1), -intensity, intensity) * 255.0
            x = tf.clip_by_value(x * gain + offset, 0.0, 255.0)
        return x, y, w

    return augment


# --------------------------------------------------------------------------- the loop


def scores(y: np.ndarray, probs: np.ndarray, positive: int) -> dict[str, float]:
    """Cross-entropy, accuracy and AUC (positive class vs the other) of probabilities."""
    from sklearn.metrics import roc_auc_score

    p_true = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    is_pos = y == positive
    auc = (
        float(roc_auc_score(is_pos, probs[:, positive]))
        if 0 < is_pos.sum() < len(y)
        else float("nan")
    )
    return {
        "loss": float(-np.log(p_true).mean()) + 0.0,  # + 0.0: no "-0.0" for a perfect fit
        "accuracy": float((probs.argmax(axis=1) == y).mean()),
        "auc": auc,
    }


class _Steps:
    """The traced training and inference steps of one model and optimizer (one trace each).

    Every tf.function here has autograph off: nothing in them branches on tensors, and
    autograph re-reads source files, so editing the code under a running job breaks it.
    """

    def __init__(self, model: keras.Model, xla: bool) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        optimizer = model.optimizer
        if not optimizer.built:  # a loaded checkpoint's optimizer is built with its state
            optimizer.build(model.trainable_variables)
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        label = tf.TensorSpec((None,), tf.int32)

        @tf.function(
            input_signature=[spec, label, tf.TensorSpec((None,), tf.float32)],
            jit_compile=xla,
            autograph=False,
        )
        def train_step(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                ce = keras.losses.sparse_categorical_crossentropy(y, probs)
                loss = tf.reduce_mean(ce * w)
                if model.losses:
                    loss += tf.add_n([tf.cast(v, loss.dtype) for v in model.losses])
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss, probs

        @tf.function(input_signature=[spec], jit_compile=xla, autograph=False)
        def predict_step(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        self.train_step = train_step
        self.predict_step = predict_step

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for every row of x in inference mode, with the model's current weights."""
        return _batched(self.predict_step, x)


def _batched(step: Callable[[Any], Any], x: np.ndarray) -> np.ndarray:
    out = [
        step(np.asarray(x[i : i + INFER_BATCH], dtype=np.float32)).numpy()
        for i in range(0, len(x), INFER_BATCH)
    ]
    return np.concatenate(out).astype(np.float32)


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Outputs of a model in inference mode for every row of x, in batches, one trace."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    step = tf.function(lambda t: model(t, training=False), input_signature=[spec], autograph=False)
    return _batched(step, x)


class PreciseBatchNorm:
    """Sets every trainable BatchNorm layer's moving mean and variance to the average, over
    the training images in batches of INFER_BATCH, of the batch statistics the layer
    normalises with in training mode ("precise BN"). Weights do not change.

    Runs from scratch need it: in a few hundred steps the moving averages (momentum 0.99,
    MobileNetV2 0.999) stay near their initial values and inference-mode outputs are
    constant. The forward pass is traced once, so calling it every epoch is cheap.
    """

    def __init__(self, model: keras.Model) -> None:
        import tensorflow as tf

        from components.backbones import batch_norm_layers

        self.layers = [bn for bn in batch_norm_layers(model) if bn.trainable]
        momenta = [bn.momentum for bn in self.layers]
        for bn in self.layers:
            bn.momentum = 0.0  # moving statistics := this batch's statistics
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        forward = tf.function(
            lambda t: model(t, training=True), input_signature=[spec], autograph=False
        )
        try:
            self._forward = forward.get_concrete_function()
        finally:
            for bn, momentum in zip(self.layers, momenta, strict=True):
                bn.momentum = momentum

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> int:
        """Recompute the statistics on x[rows]; returns the number of layers updated."""
        if not self.layers or len(rows) == 0:
            return 0
        sums = [
            [np.zeros(bn.moving_mean.shape), np.zeros(bn.moving_mean.shape)] for bn in self.layers
        ]
        for i in range(0, len(rows), INFER_BATCH):
            chunk = np.sort(rows[i : i + INFER_BATCH])
            self._forward(np.asarray(x[chunk], dtype=np.float32))
            for acc, bn in zip(sums, self.layers, strict=True):
                acc[0] += len(chunk) * np.asarray(bn.moving_mean)
                acc[1] += len(chunk) * np.asarray(bn.moving_variance)
        for (mean, var), bn in zip(sums, self.layers, strict=True):
            bn.moving_mean.assign(mean / len(rows))
            bn.moving_variance.assign(var / len(rows))
        return len(self.layers)


@dataclass
class _State:
    """Progress of a run, saved with every checkpoint (`checkpoint/state.json`)."""

    inputs_hash: str
    run_id: str | None = None
    phase: str = ""
    epoch: int = 0  # epochs finished, all phases
    phase_start: int = 0  # value of epoch when the current phase began
    phase_done: bool = False
    best_loss: float = math.inf
    best_epoch: int = 0
    wait: int = 0
    last_file: str = ""  # checkpoint of the last finished epoch
    best_file: str = ""  # checkpoint of the current phase's best epoch
    resumed: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, folder / "state.json")

    @classmethod
    def load(cls, folder: Path, inputs_hash: str) -> _State | None:
        path = folder / "state.json"
        if not path.is_file():
            return None
        state = cls(**json.loads(path.read_text()))
        return state if state.inputs_hash == inputs_hash else None


@dataclass
class _Context:
    """What a training phase needs besides its model and data."""

    name: str
    cfg: Config
    runtime: Runtime
    ckpt: Path
    state: _State
    run: BackboneRun | None
    epoch_limit: int | None
    epochs_this_call: int = 0
    predict: Callable[[np.ndarray], np.ndarray] | None = None  # the last phase's model

    @property
    def paused(self) -> bool:
        return self.epoch_limit is not None and self.epochs_this_call >= self.epoch_limit

    @property
    def positive(self) -> int:
        return self.cfg.classes.index(self.cfg.positive_class)


def _compile(model: keras.Model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,  # the loop traces its own steps; compile only attaches the optimizer
    )


def _save_checkpoint(model: keras.Model, ctx: _Context, best: bool) -> None:
    """Save the model with its optimizer as `epoch-NNNN.keras`, then the state that names it
    (and the best epoch's file); the state is the commit, files it does not name are removed."""
    state = ctx.state
    name = f"epoch-{state.epoch:04d}.keras"
    model.save(ctx.ckpt / name)
    state.last_file = name
    if best:
        state.best_file = name
    state.save(ctx.ckpt)
    for path in ctx.ckpt.glob("epoch-*.keras"):
        if path.name not in {state.last_file, state.best_file}:
            path.unlink()


def _fit_epoch(steps: _Steps, train: tf.data.Dataset, desc: str, positive: int) -> dict[str, float]:
    """One pass over the training batches; loss is class-weighted (what is minimised),
    accuracy and AUC are of the training-mode predictions."""
    from tqdm import tqdm

    start = time.perf_counter()
    loss_sum, probs, labels = 0.0, [], []
    for xb, yb, wb in tqdm(train, desc=desc, leave=False, disable=None):
        loss, p = steps.train_step(xb, yb, wb)
        loss_sum += float(loss) * len(yb)
        probs.append(p.numpy())
        labels.append(yb.numpy())
    seconds = time.perf_counter() - start
    y = np.concatenate(labels)
    fit = scores(y, np.concatenate(probs).astype(np.float32), positive)
    return {**fit, "loss": loss_sum / len(y), "train_images_per_s": len(y) / seconds}


def _train_phase(
    ctx: _Context,
    phase: Phase,
    make_model: Callable[[], keras.Model],
    learning_rate: float,
    epochs: int,
    train: tf.data.Dataset,
    val_x: np.ndarray,
    val_y: np.ndarray,
    before_validation: Callable[[keras.Model], Callable[[], object]] | None = None,
) -> keras.Model | None:
    """Train one phase: Adam, early stopping on validation loss (training.patience), the
    best epoch's weights restored, a checkpoint every epoch, resumed from one when the state
    says this phase was under way. `before_validation(model)` returns what to run after each
    epoch's training and before its validation.

    Returns:
        The model at its best epoch, or None when epoch_limit paused the run.
    """
    import keras

    from components.backbones import custom_objects

    state = ctx.state
    if state.phase == phase:
        model = keras.saving.load_model(ctx.ckpt / state.last_file, custom_objects=custom_objects())
        log.info("%s: resuming %s after epoch %d", ctx.name, phase, state.epoch)
        state.resumed = True
    else:
        model = make_model()
        _compile(model, learning_rate)
        state.phase, state.phase_start, state.phase_done = phase, state.epoch, False
        state.best_loss, state.best_epoch, state.wait = math.inf, 0, 0
    callback = ctx.run.epoch_callback() if ctx.run is not None else None
    steps = _Steps(model, ctx.runtime.xla)
    prepare = before_validation(model) if before_validation is not None else None
    while not state.phase_done:
        if ctx.paused:
            return None
        start = time.perf_counter()
        fit = _fit_epoch(steps, train, f"{ctx.name} {phase} {state.epoch + 1}", ctx.positive)
        t = time.perf_counter()
        if prepare is not None:
            prepare()
        prepare_s = time.perf_counter() - t
        val = scores(val_y, steps.predict(val_x), ctx.positive)
        state.epoch += 1
        ctx.epochs_this_call += 1
        row = {
            "epoch": state.epoch,
            "phase": phase,
            **{k: fit[k] for k in ("loss", "accuracy", "auc")},
            **{f"val_{k}": val[k] for k in ("loss", "accuracy", "auc")},
            "learning_rate": learning_rate,
            "seconds": time.perf_counter() - start,
            "train_images_per_s": fit["train_images_per_s"],
            "bn_recalibration_s": prepare_s,
        }
        state.history.append(row)
        improved = val["loss"] < state.best_loss
        if improved:
            state.best_loss, state.best_epoch, state.wait = val["loss"], state.epoch, 0
        else:
            state.wait += 1
        stop_early = state.wait >= ctx.cfg.training.patience
        state.phase_done = stop_early or state.epoch - state.phase_start >= epochs
        _save_checkpoint(model, ctx, best=improved)
        if callback is not None:
            logs = {k: v for k, v in row.items() if k not in ("epoch", "phase")}
            callback.on_epoch_end(state.epoch - 1, logs)
        log.info(
            "%s %s epoch %d/%d: loss %.4f acc %.3f auc %.3f | val loss %.4f acc %.3f auc %.3f"
            " | %.1f s, %.0f img/s%s",
            ctx.name, phase, state.epoch - state.phase_start, epochs, fit["loss"],
            fit["accuracy"], fit["auc"], val["loss"], val["accuracy"], val["auc"],
            row["seconds"], row["train_images_per_s"], " | early stop" if stop_early else "",
        )  # fmt: skip
    model.load_weights(ctx.ckpt / state.best_file)
    ctx.predict = steps.predict
    return model


# --------------------------------------------------------------------------- the pipeline


def _weights(name: str, cfg: Config) -> WeightsSource:
    """Resolve the initial weights; fall back to random unless require_pretrained."""
    from components.backbones import (
        WeightsSource,
        WeightsUnavailable,
        resolve_weights,
        weights_dir_from,
    )

    tc = cfg.training
    folder = weights_dir_from(tc.weights_dir, tc.weights_dir_env, cfg.root)
    try:
        return resolve_weights(name, tc.weights, folder)
    except WeightsUnavailable as exc:
        if tc.require_pretrained:
            raise
        return WeightsSource.random(str(exc))


_HASHED_TRAINING = {
    "image_size", "batch_size", "epochs", "seed", "learning_rate", "dropout", "head_units",
    "patience", "finetune_epochs", "finetune_fraction", "finetune_learning_rate",
    "scratch_learning_rate", "augment_rotation_deg", "augment_intensity", "weights",
}  # fmt: skip
_RUNTIME_PARAMS = {"mixed_precision", "xla", "require_pretrained"}


@dataclass(frozen=True)
class _Plan:
    """What one backbone's run is, decided before any training."""

    name: str
    size: int
    runtime: Runtime
    version: str
    source: WeightsSource
    inputs_hash: str


def _plan(name: str, cfg: Config) -> _Plan:
    from components.backbones import get_backbone

    tc = cfg.training
    size = get_backbone(name).input_size(tc.image_size)
    runtime = configure_runtime(tc.mixed_precision, tc.xla)
    version = data_version(*_data_paths(cfg))
    source = _weights(name, cfg)
    inputs_hash = _hash_json(
        {
            "version": TRAINING_VERSION,
            "backbone": name,
            "size": size,
            "data": version,
            "weights": source.sha256 or "random",
            "precision": runtime.precision,
            "training": tc.model_dump(include=_HASHED_TRAINING),
            "input": _input_key(cfg),
            "classes": cfg.classes,
            "positive": cfg.positive_class,
        }
    )[:16]
    return _Plan(name, size, runtime, version, source, inputs_hash)


def _finished(out_dir: Path, inputs_hash: str) -> TrainResult | None:
    path = out_dir / RESULT_FILE
    if not (path.is_file() and (out_dir / MODEL_FILE).is_file()):
        return None
    result = TrainResult.from_json(path.read_text())
    return result if result.inputs_hash == inputs_hash and result.status != "paused" else None


def _features(model: keras.Model, data: _Data, cfg: Config, plan: _Plan) -> tuple[np.ndarray, str]:
    """Pooled backbone features of every image, from the cache or computed once and cached
    under training.cache_dir/features/<backbone>/, keyed by data version, size, windows and
    weights file.

    Returns:
        The features and "hit" or "miss".
    """
    from components.backbones import feature_extractor

    key = _hash_json([data.version, plan.size, plan.source.sha256, _input_key(cfg)])[:16]
    path = cfg.path(cfg.training.cache_dir) / "features" / plan.name / f"{plan.size}px-{key}.npy"
    if path.is_file():
        features = np.load(path)
        if len(features) == len(data.y):
            log.info("%s: backbone features from cache %s", plan.name, path)
            return features, "hit"
    log.info("%s: computing backbone features of %d images (once)", plan.name, len(data.y))
    features = predict(feature_extractor(model), data.x)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, features)
    os.replace(tmp, path)
    return features, "miss"


def _pretrained(
    ctx: _Context, data: _Data, sample_w: np.ndarray, plan: _Plan
) -> tuple[keras.Model | None, np.ndarray]:
    """Phase 1 (head on cached features), then phase 2 (fine-tune the top, augmented).

    Returns:
        The full model (None when paused) and what ctx.predict takes to predict every row as
        the model would: the features when phase 2 did not run, else the images.
    """
    from components import backbones

    tc, state = ctx.cfg.training, ctx.state
    train_rows, val_rows = data.rows("train"), data.rows("val")
    model = _build(ctx.cfg, plan)
    backbones.set_trainable(model, "head")
    if state.phase != "finetune":
        t = time.perf_counter()
        features, cache = _features(model, data, ctx.cfg, plan)
        state.extra.update(feature_cache=cache, features_s=time.perf_counter() - t)
        head = _train_phase(
            ctx,
            "head",
            lambda: backbones.build_head(
                features.shape[1], tc.head_units, tc.dropout, len(ctx.cfg.classes)
            ),
            tc.learning_rate,
            tc.epochs,
            _dataset(features, data.y, sample_w, train_rows, tc.batch_size, True, seed=tc.seed),
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

    augment = augmenter(tc.augment_rotation_deg, tc.augment_intensity, tc.seed)
    tuned = _train_phase(
        ctx,
        "finetune",
        unfreeze,
        tc.finetune_learning_rate,
        tc.finetune_epochs,
        _dataset(data.x, data.y, sample_w, train_rows, tc.batch_size, True, augment, tc.seed),
        np.asarray(data.x[val_rows], dtype=np.float32),
        data.y[val_rows],
    )
    return tuned, data.x


def _scratch(ctx: _Context, data: _Data, sample_w: np.ndarray, plan: _Plan) -> keras.Model | None:
    """Every layer trains from random initialisation, on augmented images (a network that
    learns everything from a few hundred slices memorises them otherwise); BatchNorm
    statistics are recomputed on the training images before each validation, so the
    checkpoints hold them too."""
    from components import backbones

    tc = ctx.cfg.training
    train_rows, val_rows = data.rows("train"), data.rows("val")
    augment = augmenter(tc.augment_rotation_deg, tc.augment_intensity, tc.seed)

    def make() -> keras.Model:
        model = _build(ctx.cfg, plan)
        backbones.set_trainable(model, "all")
        if redrawn := backbones.he_initialise(model, tc.seed):
            log.info("%s: no BatchNorm: %d kernels drawn He-normal", ctx.name, redrawn)
        return model

    def recalibrate(model: keras.Model) -> Callable[[], object]:
        precise = PreciseBatchNorm(model)
        ctx.state.extra["bn_recalibrated_layers"] = len(precise.layers)
        return functools.partial(precise, data.x, train_rows)

    return _train_phase(
        ctx,
        "scratch",
        make,
        tc.scratch_learning_rate,
        tc.epochs,
        _dataset(data.x, data.y, sample_w, train_rows, tc.batch_size, True, augment, tc.seed),
        np.asarray(data.x[val_rows], dtype=np.float32),
        data.y[val_rows],
        recalibrate,
    )


def _build(cfg: Config, plan: _Plan) -> keras.Model:
    from components.backbones import build_model

    tc = cfg.training
    return build_model(
        plan.name, plan.size, plan.source, tc.head_units, tc.dropout, len(cfg.classes)
    )


def _float32_copy(model: keras.Model, cfg: Config, plan: _Plan) -> keras.Model:
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


def _curves(history: pd.DataFrame, name: str, best_epoch: int, path: Path) -> Figure:
    """Loss and accuracy, train vs validation, per epoch (the paper's Figure 4)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, 2)
    phase_starts = history.loc[history["phase"] != history["phase"].shift(), "epoch"].iloc[1:]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(history["epoch"], history[metric], marker=".", label="train")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker=".", label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        for start in phase_starts:
            ax.axvline(start - 0.5, color="black", linewidth=0.8)
        ax.set(title=f"{name}: {metric}", xlabel="epoch", ylabel=metric)
        ax.legend()
    figure.savefig(path, dpi=120)
    return figure


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


@contextlib.contextmanager
def _maybe_run(
    store: Store | None, name: str, parent_run_id: str | None, run_id: str | None
) -> Iterator[BackboneRun | None]:
    if store is None:
        yield None
        return
    from components.tracking import backbone_run

    with backbone_run(store, name, parent_run_id=parent_run_id, run_id=run_id) as run:
        yield run


def _start_logging(run: BackboneRun, cfg: Config, plan: _Plan, data: _Data) -> None:
    from components.tracking import git_commit

    run.set_tags(
        {
            "weights": plan.source.kind,
            "image_size": plan.size,
            "data_version": plan.version,
            "inputs_hash": plan.inputs_hash,
            "git_commit": git_commit(cfg.root) or "none",
            "precision": plan.runtime.precision,
            "xla": plan.runtime.xla,
        }
    )
    run.log_params(
        {
            "backbone": plan.name,
            "image_size": plan.size,
            "weights": plan.source.kind,
            "weights_sha256": plan.source.sha256 or "none",
            "data_version": plan.version,
            "n_train": len(data.rows("train")),
            "n_val": len(data.rows("val")),
            "training": cfg.training.model_dump(include=_HASHED_TRAINING | _RUNTIME_PARAMS),
            "input": cfg.input.model_dump(),
        }
    )


def train_backbone(
    name: str,
    cfg: Config,
    out_dir: Path,
    tracking: Store | None = None,
    parent_run_id: str | None = None,
    *,
    epoch_limit: int | None = None,
) -> TrainResult:
    """Train one backbone and write its model, metrics, history, curves and predictions.

    Args:
        name: backbone name (one of config.BACKBONES).
        cfg: the parsed params.yaml.
        out_dir: folder for the outputs and the checkpoint (created).
        tracking: the MLflow store (tracking.resolve_store), or None to log nothing.
        parent_run_id: the study's parent run.
        epoch_limit: train at most this many epochs in this call, then return status "paused"
            with the checkpoint kept (time-boxed jobs, tests); None trains to the end.

    Returns:
        The result, also written to out_dir/result.json.

    Raises:
        FileNotFoundError: manifest or split missing.
        InputDataError: they do not fit together.
        WeightsUnavailable: ImageNet weights required (require_pretrained) but not to be had.
        WeightsChecksumError: an offline weights file does not match its manifest.
    """
    import keras

    started = time.perf_counter()
    plan = _plan(name, cfg)
    out_dir = Path(out_dir)
    done = _finished(out_dir, plan.inputs_hash)
    if done is not None:
        log.info("%s: already trained with these inputs in %s; skipped", name, out_dir)
        return TrainResult(**{**asdict(done), "status": "skipped", "seconds": 0.0})
    if plan.source.kind == "random":
        log.warning(
            "%s: training ALL layers from random initialisation (weights=random) at lr %g: %s",
            name, cfg.training.scratch_learning_rate, plan.source.reason,
        )  # fmt: skip
    ckpt = out_dir / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    state = _State.load(ckpt, plan.inputs_hash) or _State(plan.inputs_hash)
    keras.utils.set_random_seed(cfg.training.seed)
    timings = {"setup_s": time.perf_counter() - started}
    t = time.perf_counter()
    data = load_inputs(cfg, plan.size)
    timings["inputs_s"] = time.perf_counter() - t
    sample_w = class_weights(data.y[data.rows("train")], len(cfg.classes))[data.y]

    with _maybe_run(tracking, name, parent_run_id, state.run_id) as run:
        if run is not None:
            state.run_id = run.run_id
            _start_logging(run, cfg, plan, data)
        ctx = _Context(name, cfg, plan.runtime, ckpt, state, run, epoch_limit)
        t = time.perf_counter()
        if plan.source.kind == "imagenet":
            model, predict_inputs = _pretrained(ctx, data, sample_w, plan)
        else:
            model, predict_inputs = _scratch(ctx, data, sample_w, plan), data.x
        timings["train_s"] = time.perf_counter() - t
        if model is None:
            if run is not None:
                run.status = "KILLED"
            result = _result(plan, out_dir, state, "paused", started)
            _write_json(out_dir / RESULT_FILE, asdict(result))
            log.info("%s: paused after epoch %d; run again to resume", name, state.epoch)
            return result
        t = time.perf_counter()
        probs = ctx.predict(predict_inputs)
        timings["predict_s"] = time.perf_counter() - t
        if plan.runtime.precision != "float32":
            model = _float32_copy(model, cfg, plan)
        result = _write_outputs(model, probs, data, cfg, plan, out_dir, state, timings, started)
        if run is not None:
            _finish_logging(run, model, out_dir, result, timings, data, probs)
    for path in ckpt.iterdir():
        path.unlink()
    ckpt.rmdir()
    log.info(
        "%s: %s in %.0f s; best epoch %d, val loss %.4f acc %.3f auc %.3f",
        name, result.status, result.seconds, result.best_epoch, result.val_loss,
        result.val_accuracy, result.val_auc,
    )  # fmt: skip
    return result


def _result(
    plan: _Plan, out_dir: Path, state: _State, status: Status, started: float, **metrics: Any
) -> TrainResult:
    return TrainResult(
        backbone=plan.name,
        status=status,
        out_dir=str(out_dir),
        weights=plan.source.kind,
        image_size=plan.size,
        inputs_hash=plan.inputs_hash,
        data_version=plan.version,
        epochs_run=state.epoch,
        seconds=time.perf_counter() - started,
        run_id=state.run_id,
        **metrics,
    )


def _write_outputs(
    model: keras.Model,
    probs: np.ndarray,
    data: _Data,
    cfg: Config,
    plan: _Plan,
    out_dir: Path,
    state: _State,
    timings: dict[str, float],
    started: float,
) -> TrainResult:
    """model.keras, history.csv, the curves, predictions.csv, metrics.json, result.json."""
    positive = cfg.classes.index(cfg.positive_class)
    val_rows = data.rows("val")
    final = scores(data.y[val_rows], probs[val_rows], positive)
    model.save(out_dir / MODEL_FILE)
    history = pd.DataFrame(state.history)
    history.to_csv(out_dir / HISTORY_FILE, index=False)
    _curves(history, plan.name, state.best_epoch, out_dir / CURVES_FILE)
    rows = np.concatenate([val_rows, data.rows("test")])
    column = probability_column(cfg.positive_class)
    data.table.iloc[rows].assign(**{column: probs[rows, positive]}).to_csv(
        out_dir / PREDICTIONS_FILE, index=False
    )
    last_phase = history[history["phase"] == state.phase]["train_images_per_s"]
    timings["total_s"] = time.perf_counter() - started
    result = _result(
        plan,
        out_dir,
        state,
        "resumed" if state.resumed else "trained",
        started,
        best_epoch=state.best_epoch,
        val_loss=final["loss"],
        val_accuracy=final["accuracy"],
        val_auc=final["auc"],
    )
    metrics = {
        **asdict(result),
        "weights_sha256": plan.source.sha256,
        "weights_note": plan.source.reason,
        "n_train": len(data.rows("train")),
        "n_val": len(val_rows),
        "n_test": len(data.rows("test")),
        "precision": plan.runtime.precision,
        "xla": plan.runtime.xla,
        # the phase's first epoch includes tracing; the median of the others is the rate
        "train_images_per_s": float(
            last_phase.iloc[1:].median() if len(last_phase) > 1 else last_phase.median()
        ),
        "timings": timings,
        **state.extra,
    }
    _write_json(out_dir / METRICS_FILE, metrics)
    _write_json(out_dir / RESULT_FILE, asdict(result))
    return result


def _finish_logging(
    run: BackboneRun,
    model: keras.Model,
    out_dir: Path,
    result: TrainResult,
    timings: dict[str, float],
    data: _Data,
    probs: np.ndarray,
) -> None:
    metrics = json.loads((out_dir / METRICS_FILE).read_text())
    run.log_metrics(
        {
            "best_epoch": result.best_epoch,
            "final_val_loss": result.val_loss,
            "final_val_accuracy": result.val_accuracy,
            "final_val_auc": result.val_auc,
            "train_images_per_s": metrics["train_images_per_s"],
            **timings,
        }
    )
    for name in (METRICS_FILE, HISTORY_FILE, PREDICTIONS_FILE, CURVES_FILE):
        run.log_artifact(out_dir / name)
    run.log_model(model, np.asarray(data.x[:2], dtype=np.float32), probs[:2])


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m components.training --backbone NAME ...`: train one backbone.

    Writes out/result.json (TrainResult) and prints it as one JSON line on stdout; on failure
    writes out/error.json ({backbone, error, exit_code}).

    Returns:
        0 done (trained, resumed, skipped or paused), 1 unexpected failure, 2 bad arguments or
        params, 3 ImageNet weights required but unavailable or a checksum mismatch,
        4 input data missing or inconsistent.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from components.config import BACKBONES

    parser = argparse.ArgumentParser(
        prog="python -m components.training", description="Train one backbone."
    )
    parser.add_argument("--backbone", required=True, choices=BACKBONES)
    parser.add_argument("--params", default="params.yaml", help="params file (project root)")
    parser.add_argument("--out", help="output folder (default: training.models_out/BACKBONE)")
    parser.add_argument("--parent-run-id", help="MLflow run id of the study")
    parser.add_argument("--split", help="split CSV to train on (default: params split.out)")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    parser.add_argument("--epoch-limit", type=int, help="stop after this many epochs (resumable)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.params)
        if args.split:
            cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"out": args.split})})
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out) if args.out else cfg.path(cfg.training.models_out) / args.backbone
    from components.backbones import WeightsChecksumError, WeightsUnavailable
    from components.tracking import resolve_store

    store = None if args.no_tracking else resolve_store(cfg.tracking, cfg.root)
    try:
        result = train_backbone(
            args.backbone, cfg, out, store, args.parent_run_id, epoch_limit=args.epoch_limit
        )
    except Exception as exc:
        if isinstance(exc, WeightsUnavailable | WeightsChecksumError):
            code = EXIT_WEIGHTS
        elif isinstance(exc, FileNotFoundError | InputDataError):
            code = EXIT_DATA
        else:
            code = EXIT_FAILED
        if code == EXIT_FAILED:
            log.exception("%s: training failed", args.backbone)
        else:
            log.error("%s: %s", args.backbone, exc)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(
            out / ERROR_FILE, {"backbone": args.backbone, "error": str(exc), "exit_code": code}
        )
        return code
    (out / ERROR_FILE).unlink(missing_ok=True)
    print(json.dumps(asdict(result)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
