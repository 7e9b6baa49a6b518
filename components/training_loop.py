"""The training loop of one phase, and the TensorFlow runtime it runs on.

`train_phase` trains one model with Adam and early stopping on validation loss, writes a
checkpoint every epoch (model with optimizer state, and the JSON `RunState`) and resumes
from one. It is a plain loop over tf.data (`fit_epoch`, the traced `Steps`) rather than
`Model.fit`: `fit` traces each training step twice, which on a CPU costs up to a minute per
backbone. Also here: `configure_runtime` (GPUs, precision, XLA), `scores`, batched
inference (`predict`) and `PreciseBatchNorm`, which recomputes BatchNorm statistics for
runs from scratch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from components.config import Config
    from components.tracking import BackboneRun

log = logging.getLogger(__name__)

# Batch for inference passes (features, validation, predictions, BatchNorm statistics).
INFER_BATCH = 64

Phase = Literal["head", "finetune", "scratch"]


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


class Steps:
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
class RunState:
    """Progress of a run, saved with every checkpoint (`checkpoint/state.json`)."""

    inputs_hash: str
    run_id: str | None = None
    phase: str = ""
    epoch: int = 0  # epochs finished, all phases
    phase_start: int = 0  # value of epoch when the current phase began
    phase_done: bool = False
    best_score: float = math.inf  # of training.monitor, lower is better
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
    def load(cls, folder: Path, inputs_hash: str) -> RunState | None:
        path = folder / "state.json"
        if not path.is_file():
            return None
        state = cls(**json.loads(path.read_text()))
        return state if state.inputs_hash == inputs_hash else None


@dataclass
class PhaseContext:
    """What a training phase needs besides its model and data."""

    name: str
    cfg: Config
    runtime: Runtime
    ckpt: Path
    state: RunState
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


def compile_model(model: keras.Model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,  # the loop traces its own steps; compile only attaches the optimizer
    )


def _save_checkpoint(model: keras.Model, ctx: PhaseContext, best: bool) -> None:
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


def fit_epoch(steps: Steps, train: tf.data.Dataset, desc: str, positive: int) -> dict[str, float]:
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


def _monitored(val: dict[str, float], monitor: str) -> float:
    """The validation score that selects the best epoch, lower is better: the loss, or the
    AUC negated (an AUC that cannot be computed never improves)."""
    if monitor == "val_loss":
        return val["loss"]
    return -val["auc"] if math.isfinite(val["auc"]) else math.inf


def train_phase(
    ctx: PhaseContext,
    phase: Phase,
    make_model: Callable[[], keras.Model],
    learning_rate: float,
    epochs: int,
    train: tf.data.Dataset,
    val_x: np.ndarray,
    val_y: np.ndarray,
    before_validation: Callable[[keras.Model], Callable[[], object]] | None = None,
) -> keras.Model | None:
    """Train one phase: Adam, early stopping on training.monitor (validation loss, or AUC)
    after training.patience epochs without improvement, the best epoch's weights restored, a
    checkpoint every epoch, resumed from one when the state says this phase was under way.
    `before_validation(model)` returns what to run after each epoch's training and before
    its validation.

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
        compile_model(model, learning_rate)
        state.phase, state.phase_start, state.phase_done = phase, state.epoch, False
        state.best_score, state.best_epoch, state.wait = math.inf, 0, 0
    callback = ctx.run.epoch_callback() if ctx.run is not None else None
    steps = Steps(model, ctx.runtime.xla)
    prepare = before_validation(model) if before_validation is not None else None
    while not state.phase_done:
        if ctx.paused:
            return None
        start = time.perf_counter()
        fit = fit_epoch(steps, train, f"{ctx.name} {phase} {state.epoch + 1}", ctx.positive)
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
        score = _monitored(val, ctx.cfg.training.monitor)
        improved = score < state.best_score or state.best_epoch == 0
        if improved:
            state.best_score, state.best_epoch, state.wait = score, state.epoch, 0
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
