"""One backbone, start to end, in its own process: plan, data, training, outputs, MLflow run.

`train_backbone` plans the run (`components.training.plan`: weights, inputs hash) and skips it
when a finished run with the same inputs is in its folder; else it loads the data
(`components.training.batches`), trains (`components.training.phases`: head and fine-tuning
with ImageNet weights, else every layer from scratch), writes the outputs
(`components.training.run_folder`) and logs the MLflow run (`components.training.run_logging`).

Every epoch writes a checkpoint (model with optimizer state, and a JSON state) to
`out_dir/checkpoint/`; a run that stops resumes from its last epoch. The loop of one phase
(checkpoints, resume) is in `components.training.loop`; the backend's runtime and training
step (KERAS_BACKEND: tensorflow or jax) in `components.training.runtime`.

Run one backbone in its own process (a framework rarely gives GPU memory back):
`python -m components.training.worker --backbone NAME [--params params.yaml] [--out DIR]
[--parent-run-id ID]`; see `main` for outputs and exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from components.artifacts import (
    CHECKPOINT_DIR,
    ERROR_FILE,
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    RESULT_FILE,
)
from components.config import Config, load_config
from components.training.batches import InputDataError, class_weights, load_inputs
from components.training.loop import PhaseContext, RunState
from components.training.phases import float32_copy, train_from_scratch, train_pretrained
from components.training.plan import plan_run
from components.training.run_folder import (
    TrainResult,
    finished_result,
    run_result,
    write_json,
    write_outputs,
)
from components.training.run_logging import log_finish, log_start, maybe_run

if TYPE_CHECKING:
    from components.tracking import Store

log = logging.getLogger(__name__)


def train_backbone(
    name: str,
    cfg: Config,
    out_dir: Path,
    tracking: Store | None = None,
    parent_run_id: str | None = None,
    *,
    epoch_limit: int | None = None,
    fold: int | None = None,
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
        fold: the cross-validation fold `cfg`'s split is (`components.training.folds`), for
            the MLflow run's tag and name.

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
    plan = plan_run(name, cfg)
    out_dir = Path(out_dir)
    done = finished_result(out_dir, plan.inputs_hash)
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

    with maybe_run(tracking, name, parent_run_id, state.run_id, fold) as run:
        if run is not None:
            state.run_id = run.run_id
            log_start(run, cfg, plan, data)
        tc = cfg.training
        total = tc.epochs + (tc.finetune_epochs if plan.source.kind == "imagenet" else 0)
        ctx = PhaseContext(name, cfg, plan.runtime, ckpt, state, run, epoch_limit, total)
        t = time.perf_counter()
        if plan.source.kind == "imagenet":
            model, predict_inputs = train_pretrained(ctx, data, sample_w, plan)
        else:
            model, predict_inputs = train_from_scratch(ctx, data, sample_w, plan), data.x
        timings["train_s"] = time.perf_counter() - t
        if model is None:
            if run is not None:
                run.status = "KILLED"
            result = run_result(plan, out_dir, state, "paused", started)
            write_json(out_dir / RESULT_FILE, asdict(result))
            log.info("%s: paused after epoch %d; run again to resume", name, state.epoch)
            return result
        t = time.perf_counter()
        probs = ctx.predict(predict_inputs)
        timings["predict_s"] = time.perf_counter() - t
        if plan.runtime.precision != "float32":
            model = float32_copy(model, cfg, plan)
        result = write_outputs(model, probs, data, cfg, plan, out_dir, state, timings, started)
        if run is not None:
            log_finish(run, model, out_dir, result, timings, data, probs)
    for path in ckpt.iterdir():
        path.unlink()
    ckpt.rmdir()
    log.info(
        "%s: %s in %.0f s; best epoch %d, val loss %.4f acc %.3f auc %.3f",
        name, result.status, result.seconds, result.best_epoch, result.val_loss,
        result.val_accuracy, result.val_auc,
    )  # fmt: skip
    return result


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
    if hasattr(signal, "SIGUSR2"):
        # Slurm's warning before a time limit (or a preemption) is for the task running this
        # process (components.training.slurm): it requeues, and Slurm then ends this process
        # with SIGTERM; the epochs finished so far are checkpointed.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
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
    parser.add_argument("--fold", type=int, help="the cross-validation fold --split holds")
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
            args.backbone,
            cfg,
            out,
            store,
            args.parent_run_id,
            epoch_limit=args.epoch_limit,
            fold=args.fold,
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
        write_json(
            out / ERROR_FILE, {"backbone": args.backbone, "error": str(exc), "exit_code": code}
        )
        return code
    (out / ERROR_FILE).unlink(missing_ok=True)
    print(json.dumps(asdict(result)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
