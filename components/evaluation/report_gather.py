"""Gathers what the study page shows from the files the pipeline wrote."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from components.artifacts import (
    METRICS_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    REJECTS_FILE,
    VALIDATION_PAGE,
)
from components.config import Config
from components.evaluation.candidates import (
    ENSEMBLE,
    EvaluationResults,
    load_predictions,
    score_candidates,
)
from components.evaluation.crossval import cross_validate
from components.evaluation.figures import save_png
from components.evaluation.metrics import BootstrapOptions
from components.evaluation.report_content import (
    DataSummary,
    LeakageComparison,
    StudyInputs,
    load_histories,
    load_weights_info,
)
from components.training.folds import existing_folds, fold_config

if TYPE_CHECKING:
    from components.registry_outcome import RegistryOutcome


def _score(cfg: Config, predictions: Mapping[str, pd.DataFrame], top_k: int) -> EvaluationResults:
    return score_candidates(
        predictions,
        cfg.classes,
        cfg.positive_class,
        options=BootstrapOptions.from_config(cfg.evaluation),
        select_metric=cfg.evaluation.select_metric,
        ensemble_top_k=top_k,
    )


def score_study(cfg: Config, backbones: list[str]) -> EvaluationResults:
    """Score every trained backbone and the ensemble on validation and test; with
    cross-validation, in every fold, then pooled out of fold (`crossval.cross_validate`)."""
    folds = existing_folds(cfg)
    if folds:
        return cross_validate(
            [score_study(fold.cfg, backbones) for fold in folds],
            BootstrapOptions.from_config(cfg.evaluation),
        )
    models = cfg.path(cfg.training.models_out)
    predictions = load_predictions(models, backbones, cfg.positive_class)
    return _score(cfg, predictions, cfg.evaluation.ensemble_top_k)


def _first_fold(cfg: Config, results: EvaluationResults) -> tuple[Config, EvaluationResults]:
    """With cross-validation, the configuration and results of fold 0, whose models the
    report shows (Grad-CAM, weights, training curves); else both unchanged."""
    if not results.fold_results:
        return cfg, results
    return fold_config(cfg, 0), results.fold_results[0]


def leakage_comparison(cfg: Config, results: EvaluationResults) -> LeakageComparison | None:
    """The leakage backbone on the image-level split beside the same on the patient split.

    Returns:
        None when the leakage stage is off or has not produced predictions.
    """
    backbone = cfg.leakage.backbone
    models = cfg.path(cfg.leakage.models_out)
    if not cfg.leakage.enabled or not (models / backbone / PREDICTIONS_FILE).is_file():
        return None
    if backbone not in results.candidates:
        return None
    image = _score(cfg, load_predictions(models, [backbone], cfg.positive_class), 0)
    return LeakageComparison.from_results(backbone, results, image)


def gradcam_png(cfg: Config, results: EvaluationResults, out: Path) -> Path | None:
    """Grad-CAM of the selected model (an ensemble's first member) on test slices."""
    from components.evaluation.gradcam import gradcam_figure, load_examples, pick_examples
    from components.training.backbones import load_model

    if cfg.evaluation.gradcam_per_class == 0:
        return None
    selected, fold = results.selected, " (fold 0)" if results.fold_results else ""
    cfg, results = _first_fold(cfg, results)
    name = selected if selected != ENSEMBLE else results.ensemble_members[0]
    folder = cfg.path(cfg.training.models_out) / name
    size = json.loads((folder / METRICS_FILE).read_text())["image_size"]
    predictions = pd.read_csv(folder / PREDICTIONS_FILE, dtype={"image_id": str})
    rows = pick_examples(
        predictions[predictions["split"] == "test"],
        cfg.classes,
        cfg.evaluation.gradcam_per_class,
        seed=cfg.evaluation.seed,
    )
    figure = gradcam_figure(
        load_model(folder / MODEL_FILE),
        load_examples(rows, cfg.path(cfg.ingest.out) / "slices"),
        windows=cfg.input.channel_windows(),
        size=size,
        display_window=cfg.input.channel_windows()[0],
        classes=cfg.classes,
        positive_class=cfg.positive_class,
        title=f"Grad-CAM: {name}{fold}",
        crop=cfg.input.crop,
    )
    return save_png(figure, out)


def study_inputs(
    cfg: Config,
    results: EvaluationResults,
    backbones: list[str],
    registry: RegistryOutcome | None,
    gradcam: Path | None,
    run_info: Mapping[str, str],
) -> StudyInputs:
    """Everything the study page needs, read from the pipeline's outputs (with
    cross-validation the data table, weights and curves are fold 0's)."""
    shown, _ = _first_fold(cfg, results)
    models = shown.path(shown.training.models_out)
    split = pd.read_csv(shown.path(shown.split.out), dtype=str)
    rejects_path = cfg.path(cfg.ingest.out) / REJECTS_FILE
    rejects = pd.read_csv(rejects_path, dtype=str) if rejects_path.is_file() else None
    return StudyInputs(
        results=results,
        data=DataSummary.from_frames(split, cfg.classes, rejects),
        weights=load_weights_info(models, backbones, cfg.training.weights),
        histories=load_histories(models, backbones),
        leakage=leakage_comparison(cfg, results),
        registry=registry,
        gradcam_png=gradcam,
        run_info=dict(run_info),
        validation_page=_relative(
            cfg.path(cfg.validation.docs_out) / VALIDATION_PAGE,
            cfg.path(cfg.evaluation.reports_out),
        ),
    )


def _relative(page: Path, folder: Path) -> str | None:
    """`page` as a link from a page in `folder`; None when it was not written."""
    return Path(os.path.relpath(page, folder)).as_posix() if page.is_file() else None
