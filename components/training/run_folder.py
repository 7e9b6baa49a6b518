"""What one backbone's run leaves in its folder: the `TrainResult` (result.json), the model,
history, training curves, predictions and metrics, and the result of an earlier run that a
run with the same inputs skips to.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from components import atomic
from components.artifacts import (
    CURVES_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    probability_column,
)
from components.config import Config
from components.machine import machine_description, machine_record
from components.training.batches import TrainingData
from components.training.loop import RunState, scores

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from components.training.plan import RunPlan

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


def finished_result(out_dir: Path, inputs_hash: str) -> TrainResult | None:
    """The result of a run in out_dir that finished with these inputs, else None."""
    path = out_dir / RESULT_FILE
    if not (path.is_file() and (out_dir / MODEL_FILE).is_file()):
        return None
    result = TrainResult.from_json(path.read_text())
    return result if result.inputs_hash == inputs_hash and result.status != "paused" else None


def run_result(
    plan: RunPlan, out_dir: Path, state: RunState, status: Status, started: float, **metrics: Any
) -> TrainResult:
    """The result of the planned run as it stands, timed from `started` (perf_counter)."""
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


def write_json(path: Path, value: Any) -> None:
    """Write value as indented JSON, atomically (a temporary file, then a rename)."""
    atomic.write_text(path, json.dumps(value, indent=2, default=str))


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


def write_outputs(
    model: keras.Model,
    probs: np.ndarray,
    data: TrainingData,
    cfg: Config,
    plan: RunPlan,
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
    result = run_result(
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
        "machine": machine_record(machine_description()),
    }
    write_json(out_dir / METRICS_FILE, metrics)
    write_json(out_dir / RESULT_FILE, asdict(result))
    return result
