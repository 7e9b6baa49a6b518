"""What one backbone's MLflow run records: its data inputs, tags and params when it starts;
its final metrics, output files and model when it ends. The per-epoch metrics go through the
run's epoch callback in `components.training.loop`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.artifacts import CURVES_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE
from components.config import Config
from components.training.batches import TrainingData, data_paths
from components.training.runtime import framework_requirements

if TYPE_CHECKING:
    import keras

    from components.tracking import BackboneRun, Store
    from components.training.plan import RunPlan
    from components.training.run_folder import TrainResult


@contextlib.contextmanager
def maybe_run(
    store: Store | None,
    name: str,
    parent_run_id: str | None,
    run_id: str | None,
    fold: int | None = None,
) -> Iterator[BackboneRun | None]:
    """The backbone's MLflow run (run_id resumes one; `fold` tags a cross-validation fold),
    or None when store is None."""
    if store is None:
        yield None
        return
    from components.tracking import backbone_run

    with backbone_run(store, name, parent_run_id=parent_run_id, run_id=run_id, fold=fold) as run:
        yield run


def log_start(run: BackboneRun, cfg: Config, plan: RunPlan, data: TrainingData) -> None:
    """Log the run's data inputs, its tags and its params."""
    from components.tracking import dataset_inputs, git_commit

    manifest, split = data_paths(cfg)
    run.log_inputs(dataset_inputs({"manifest": manifest, "split": split}, plan.version, cfg.root))

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


def log_finish(
    run: BackboneRun,
    model: keras.Model,
    out_dir: Path,
    result: TrainResult,
    timings: dict[str, float],
    data: TrainingData,
    probs: np.ndarray,
) -> None:
    """Log the final metrics and timings, the output files in out_dir and the model."""
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
    run.log_model(
        model, np.asarray(data.x[:2], dtype=np.float32), probs[:2], framework_requirements()
    )
