"""The training loop of one phase, on any Keras backend.

`train_phase` trains one model with Adam and early stopping on training.monitor, writes a
checkpoint every epoch (model with optimizer state, and the JSON `RunState`) and resumes
from one. Each epoch is a loop over numpy batches of one compiled step per backend
(`runtime.train_step`: a tf.function over a GradientTape, XLA on GPUs; a jax.jit of the
stateless step), which measured faster than `Model.fit` and `train_on_batch`
(bench/bench_train_throughput.py). Also here: `scores`, batched inference at one fixed
batch shape (`predict`) and `PreciseBatchNorm`, which recomputes BatchNorm statistics for
runs from scratch.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from components import atomic

if TYPE_CHECKING:
    import keras

    from components.config import Config
    from components.tracking import BackboneRun
    from components.training.batches import Batches
    from components.training.runtime import Runtime

log = logging.getLogger(__name__)

# Batch for inference passes (features, validation, predictions, BatchNorm statistics).
INFER_BATCH = 64
# The line a training process prints after each epoch, for the scheduler's progress view.
PROGRESS_PREFIX = "myelomet-progress "

Phase = Literal["head", "finetune", "scratch"]


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


# Batch sizes an inference pass is padded to: a few shapes, each compiled once, so that a
# request of two slices costs eight images, not INFER_BATCH.
_BUCKETS = (8, 16, 32, INFER_BATCH)


def _padded_batches(x: np.ndarray) -> Any:
    """x in batches of INFER_BATCH rows, the last one padded to the smallest of _BUCKETS that
    holds it; yields each batch and how many of its rows are real."""
    for start in range(0, len(x), INFER_BATCH):
        chunk = np.asarray(x[start : start + INFER_BATCH], dtype=np.float32)
        real = len(chunk)
        size = next(b for b in _BUCKETS if b >= real)
        if real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        yield chunk, real


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Outputs of a model in inference mode for every row of x, in batches of one shape."""
    from components.training.runtime import to_numpy

    if len(x) == 0:
        return np.zeros((0, *model.output_shape[1:]), dtype=np.float32)
    out = [to_numpy(model.predict_on_batch(chunk))[:real] for chunk, real in _padded_batches(x)]
    return np.concatenate(out).astype(np.float32)


class PreciseBatchNorm:
    """Sets every trainable BatchNorm layer's moving mean and variance to the average, over
    the training images in chunks of INFER_BATCH (the last topped up with the first images,
    so that every chunk has one shape), of the batch statistics the layer normalises with
    in training mode ("precise BN"). Weights do not change.

    Runs from scratch need it: in a few hundred steps the moving averages (momentum 0.99,
    MobileNetV2 0.999) stay near their initial values and inference-mode outputs are
    constant. The training-mode forward pass is a compiled `stateless_call` with momentum
    0, which returns each layer's batch statistics as its new moving statistics.
    """

    def __init__(self, model: keras.Model, xla: bool = False) -> None:
        from components.training.backbones import batch_norm_layers
        from components.training.runtime import compiled

        self.model = model
        self.layers = [bn for bn in batch_norm_layers(model) if bn.trainable]
        where = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        self._slots = [
            (where[id(bn.moving_mean)], where[id(bn.moving_variance)]) for bn in self.layers
        ]

        def forward(trainable: list[Any], non_trainable: list[Any], x: Any) -> list[Any]:
            _, updated = model.stateless_call(trainable, non_trainable, x, training=True)
            return [updated[i] for slot in self._slots for i in slot]

        self._forward = compiled(forward, xla)

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> int:
        """Recompute the statistics on x[rows]; returns the number of layers updated."""
        from components.training.runtime import to_numpy

        if not self.layers or len(rows) == 0:
            return 0
        momenta = [bn.momentum for bn in self.layers]
        for bn in self.layers:
            bn.momentum = 0.0  # moving statistics := this batch's statistics
        try:
            trainable = [v.value for v in self.model.trainable_variables]
            non_trainable = [v.value for v in self.model.non_trainable_variables]
            sums = [np.zeros(bn.moving_mean.shape, np.float64) for bn in self.layers for _ in "mv"]
            size = min(INFER_BATCH, len(rows))
            chunks = -(-len(rows) // size)
            # every chunk of one size (one compilation): the last one is topped up with the
            # first rows, so each chunk's statistics are those of real training images
            wrapped = np.resize(rows, chunks * size)
            for i in range(chunks):
                chunk = np.sort(wrapped[i * size : (i + 1) * size])
                stats = self._forward(trainable, non_trainable, np.asarray(x[chunk], np.float32))
                for acc, value in zip(sums, stats, strict=True):
                    acc += to_numpy(value)
        finally:
            for bn, momentum in zip(self.layers, momenta, strict=True):
                bn.momentum = momentum
        for i, bn in enumerate(self.layers):
            bn.moving_mean.assign(sums[2 * i] / chunks)
            bn.moving_variance.assign(sums[2 * i + 1] / chunks)
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
        atomic.write_text(folder / "state.json", json.dumps(asdict(self), indent=1))

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
    total_epochs: int = 0  # planned, all phases (early stopping may end sooner)
    epochs_this_call: int = 0
    predict: Callable[[np.ndarray], np.ndarray] | None = None  # the last phase's model

    @property
    def paused(self) -> bool:
        return self.epoch_limit is not None and self.epochs_this_call >= self.epoch_limit

    @property
    def positive(self) -> int:
        return self.cfg.classes.index(self.cfg.positive_class)


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Attach Adam and the loss (the loop runs its own step, `runtime.train_step`; under
    mixed float16 Keras wraps the optimizer for loss scaling)."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
    )


def weighted_loss(y: Any, outputs: Any, w: Any) -> Any:
    """Class-weighted cross-entropy, the mean over the batch (keras.ops, any backend)."""
    import keras

    ce = keras.losses.sparse_categorical_crossentropy(y, keras.ops.cast(outputs, "float32"))
    return keras.ops.mean(ce * w)


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


def fit_epoch(
    step: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, np.ndarray]],
    train: Batches,
    epoch: int,
    desc: str,
    positive: int,
) -> dict[str, float]:
    """One pass over the training batches of epoch `epoch` (0-based) with `step`
    (`runtime.train_step`); loss is class-weighted (what is minimised), accuracy and AUC are
    of the training-mode outputs over the whole epoch."""
    from tqdm import tqdm

    start = time.perf_counter()
    loss_sum, probs, labels = 0.0, [], []
    for xb, yb, wb in tqdm(
        train.epoch(epoch), total=len(train), desc=desc, leave=False, disable=None
    ):
        loss, outputs = step(xb, yb, wb)
        loss_sum += loss * len(yb)
        probs.append(outputs)
        labels.append(yb)
    seconds = time.perf_counter() - start
    y = np.concatenate(labels)
    fit = scores(y, np.concatenate(probs).astype(np.float32), positive)
    return {**fit, "loss": loss_sum / len(y), "train_images_per_s": len(y) / seconds}


def progress_line(ctx: PhaseContext, row: dict[str, Any]) -> str:
    """The line printed after an epoch: what the scheduler shows of a running backbone."""
    done = min(100.0, 100.0 * row["epoch"] / max(1, ctx.total_epochs))
    return PROGRESS_PREFIX + json.dumps(
        {
            "backbone": ctx.name,
            "phase": row["phase"],
            "epoch": row["epoch"],
            "total_epochs": ctx.total_epochs,
            "percent": round(done, 1),
            "val_auc": row["val_auc"],
            "train_images_per_s": round(row["train_images_per_s"], 1),
        }
    )


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
    train: Batches,
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

    from components.training.backbones import custom_objects
    from components.training.runtime import train_step

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
    step = train_step(model, weighted_loss, ctx.runtime.xla)
    prepare = before_validation(model) if before_validation is not None else None
    while not state.phase_done:
        if ctx.paused:
            return None
        start = time.perf_counter()
        fit = fit_epoch(
            step, train, state.epoch, f"{ctx.name} {phase} {state.epoch + 1}", ctx.positive
        )
        t = time.perf_counter()
        if prepare is not None:
            prepare()
        prepare_s = time.perf_counter() - t
        val = scores(val_y, predict(model, val_x), ctx.positive)
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
        if callback is not None:  # before the checkpoint commits the epoch: a run stopped in
            # between trains it again and logs its step again; no step goes missing
            logs = {k: v for k, v in row.items() if k not in ("epoch", "phase")}
            callback.on_epoch_end(state.epoch - 1, logs)
        _save_checkpoint(model, ctx, best=improved)
        print(progress_line(ctx, row), flush=True)
        log.info(
            "%s %s epoch %d/%d: loss %.4f acc %.3f auc %.3f | val loss %.4f acc %.3f auc %.3f"
            " | %.1f s, %.0f img/s%s",
            ctx.name, phase, state.epoch - state.phase_start, epochs, fit["loss"],
            fit["accuracy"], fit["auc"], val["loss"], val["accuracy"], val["auc"],
            row["seconds"], row["train_images_per_s"], " | early stop" if stop_early else "",
        )  # fmt: skip
    model.load_weights(ctx.ckpt / state.best_file)
    ctx.predict = functools.partial(predict, model)
    return model
