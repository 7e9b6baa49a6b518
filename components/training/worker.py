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
the same inputs is skipped.

This module plans the run (weights, inputs hash), builds the model, runs the phases and
writes the outputs. The inputs, class weights and numpy batches are in
`components.training.batches`; the loop of one phase (checkpoints, resume) and
`PreciseBatchNorm` in `components.training.loop`; the backend's runtime and training step
(KERAS_BACKEND: tensorflow or jax) in `components.training.runtime`.

Run one backbone in its own process (a framework rarely gives GPU memory back):
`python -m components.training.worker --backbone NAME [--params params.yaml] [--out DIR]
[--parent-run-id ID]`; see `main` for outputs and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from components.artifacts import (
    CHECKPOINT_DIR,
    CURVES_FILE,
    ERROR_FILE,
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    probability_column,
)
from components.code_closure import source_digest
from components.config import Config, load_config
from components.training.batches import (
    Augment,
    Batches,
    InputDataError,
    TrainingData,
    class_weights,
    data_paths,
    data_version,
    hash_json,
    input_key,
    load_inputs,
)
from components.training.loop import (
    INFER_BATCH,
    Phase,
    PhaseContext,
    PreciseBatchNorm,
    RunState,
    predict,
    scores,
    train_phase,
)
from components.training.runtime import Runtime, configure_runtime

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from components.tracking import BackboneRun, Store
    from components.training.backbones import WeightsSource

log = logging.getLogger(__name__)

Status = Literal["trained", "resumed", "skipped", "paused"]


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


# --------------------------------------------------------------------------- the pipeline


def _weights(name: str, cfg: Config) -> WeightsSource:
    """Resolve the initial weights; fall back to random unless require_pretrained."""
    from components.training.backbones import (
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


# Training fields that decide where, when and from which folder a backbone trains, not what
# it learns (the weights' own checksum is hashed): the rest of the resolved section is in the
# inputs hash, so a new field retrains until it is listed here.
_PLACEMENT = frozenset({
    "backbones", "overrides", "executor", "ray_address", "max_parallel", "retries",
    "models_out", "cache_dir", "compile_cache", "processes_per_gpu", "weights_dir",
    "weights_dir_env", "require_pretrained",
})  # fmt: skip
# The module a backbone's process runs: the digest of its import closure is in the hash.
_TRAINING_ENTRY = "components.training.worker"


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
    from components.training.backbones import get_backbone

    tc = cfg.training.for_backbone(name)
    size = get_backbone(name).input_size(tc.image_size)
    cache = cfg.path(tc.compile_cache) if tc.compile_cache else None
    runtime = configure_runtime(tc.mixed_precision, tc.xla, cache, tc.cpu_threads)
    version = data_version(*data_paths(cfg))
    source = _weights(name, cfg)
    inputs_hash = hash_json(
        {
            "code": source_digest([_TRAINING_ENTRY]),
            "backbone": name,
            "size": size,
            "data": version,
            "weights": source.sha256 or "random",
            "precision": runtime.precision,
            "backend": runtime.backend,
            "training": tc.model_dump(mode="json", exclude=_PLACEMENT),
            "input": input_key(cfg),
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


def _features(
    model: keras.Model, data: TrainingData, cfg: Config, plan: _Plan
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, features)
    os.replace(tmp, path)
    return features, "miss"


def _pretrained(
    ctx: PhaseContext, data: TrainingData, sample_w: np.ndarray, plan: _Plan
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


def _scratch(
    ctx: PhaseContext, data: TrainingData, sample_w: np.ndarray, plan: _Plan
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


def _build(cfg: Config, plan: _Plan) -> keras.Model:
    from components.training.backbones import build_model

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


def _start_logging(run: BackboneRun, cfg: Config, plan: _Plan, data: TrainingData) -> None:
    from components.tracking import dataset_inputs, git_commit

    manifest, split = data_paths(cfg)
    run.log_inputs(dataset_inputs({"manifest": manifest, "split": split}, plan.version))

    run.set_tags(
        {
            "weights": plan.source.kind,
            "image_size": plan.size,
            "data_version": plan.version,
            "inputs_hash": plan.inputs_hash,
            "git_commit": git_commit(cfg.root) or "none",
            "precision": plan.runtime.precision,
            "xla": plan.runtime.xla,
            "keras_backend": plan.runtime.backend,
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
            "training": cfg.training.model_dump(mode="json", exclude={"backbones", "overrides"}),
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
        cfg: the parsed params.yaml; training.overrides for `name` apply.
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
    cfg = cfg.model_copy(update={"training": cfg.training.for_backbone(name)})
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
    state = RunState.load(ckpt, plan.inputs_hash) or RunState(plan.inputs_hash)
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
        tc = cfg.training
        total = tc.epochs + (tc.finetune_epochs if plan.source.kind == "imagenet" else 0)
        ctx = PhaseContext(name, cfg, plan.runtime, ckpt, state, run, epoch_limit, total)
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
    plan: _Plan, out_dir: Path, state: RunState, status: Status, started: float, **metrics: Any
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
    data: TrainingData,
    cfg: Config,
    plan: _Plan,
    out_dir: Path,
    state: RunState,
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
        "keras_backend": plan.runtime.backend,
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
    data: TrainingData,
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
    """`python -m components.training.worker --backbone NAME ...`: train one backbone.

    Writes out/result.json (TrainResult) and prints it as one JSON line on stdout; on failure
    writes out/error.json ({backbone, error, exit_code}).

    Returns:
        0 done (trained, resumed, skipped or paused), 1 unexpected failure, 2 bad arguments or
        params, 3 ImageNet weights required but unavailable or a checksum mismatch,
        4 input data missing or inconsistent.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from components.config import BACKBONES
    from components.training.devices import pin_to_cpus

    pin_to_cpus()

    parser = argparse.ArgumentParser(
        prog="python -m components.training.worker", description="Train one backbone."
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
    from components.tracking import resolve_store
    from components.training.backbones import WeightsChecksumError, WeightsUnavailable

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
