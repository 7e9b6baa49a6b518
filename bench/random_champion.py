"""A champion of random weights registered as evaluation registers one, for the benches that
time predicting with it (latency does not depend on the weights)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from components import tracking
from components.config import Config, EvaluationConfig, TrackingConfig, TrainingConfig
from components.registry import candidate_model, promotion
from components.training.backbones import build_model
from tests.model_factory import Candidate


def register_random_champion(
    root: Path, name: str, members: Mapping[str, str], size: int, onnx: bool, folds: bool = False
) -> str:
    """Save a model of random weights per member (member -> backbone) under `root/models`,
    log them as one candidate in a new SQLite store under `root` (exported to ONNX and
    checked when `onnx`) and register it as the champion of `name`.

    Returns:
        The store's tracking URI.
    """
    models_dir = root / "models"
    for member, backbone in members.items():
        folder = models_dir / member
        folder.mkdir(parents=True)
        build_model(backbone, size, "none").save(folder / "model.keras")
        metrics = {"image_size": size, "data_version": "bench", "weights": "random"}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    cfg = Config(
        root=root,
        training=TrainingConfig(models_out=str(models_dir)),
        evaluation=EvaluationConfig(onnx=onnx),
    )
    store = tracking.resolve_store(TrackingConfig(experiment="bench"), root)
    started = time.perf_counter()
    logged = candidate_model.log_candidate(
        store,
        tracking.start_study(store, "bench"),
        Candidate(name, tuple(members), {"slice": 0.5, "patient": 0.5}),
        cfg,
        data_version="bench" if folds else None,
    )
    print(
        f"  logged {name} ({len(members)} models, onnx: {logged.tags['onnx']}) "
        f"in {time.perf_counter() - started:.0f} s"
    )
    promotion.register_and_promote(
        store, logged.model_uri, name, logged.tags, "patient_auc", 0.5, None, 0.0
    )
    return store.tracking_uri
