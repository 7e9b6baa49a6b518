"""The paper's random image-level split, trained on one backbone, to measure leakage.

The same backbone, data and training settings as the study, only split by slice: its test
set holds slices of patients it trained on, so its test result is inflated. The study report
shows it beside the patient-level result.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from components.artifacts import MANIFEST_FILE
from components.config import Config
from components.data.split import SPLIT_COLUMNS, split_manifest
from components.training.launcher import run_backbone_process


def run_leakage(cfg: Config, params: Path, on_line: Callable[[str], None]) -> dict | None:
    """Write the image-level split and train `leakage.backbone` on it (no MLflow run).

    Args:
        cfg: the parsed params.yaml.
        params: its path, for the training process.
        on_line: called with each line the training process prints.

    Returns:
        The training result, or None when `leakage.enabled` is false: the outputs (DVC's)
        are then an empty models folder and a split with its header only, and the report
        says "not run".

    Raises:
        FileNotFoundError: no manifest; run `myelomet ingest` first.
        components.training.launcher.BackboneFailed: training failed.
    """
    out = cfg.path(cfg.leakage.models_out)
    split_out = cfg.path(cfg.leakage.split_out)
    if not cfg.leakage.enabled:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        split_out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=SPLIT_COLUMNS).to_csv(split_out, index=False)
        return None
    manifest_path = cfg.path(cfg.ingest.out) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest; run `myelomet ingest` first")
    manifest = pd.read_csv(manifest_path, dtype=str)
    split = split_manifest(
        manifest, cfg.split.fractions(), cfg.split.seed, "image", cfg.split.stratify
    )
    split_out.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(split_out, index=False)
    backbone = cfg.leakage.backbone
    return run_backbone_process(
        backbone,
        params,
        out / backbone,
        None,
        {},
        on_line,
        extra_args=["--split", str(split_out), "--no-tracking"],
    )
