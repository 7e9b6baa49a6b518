"""Prefect flow `validate`: Great Expectations suites on the manifest, the pixels and the
split, run between `split` and training.

The flow writes a results page and a JSON summary (a DVC metric), publishes the result table as
a markdown artifact, and fails when any expectation fails, so that `dvc repro` stops here
and training never sees bad data. `myelomet validate` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components.artifacts import MANIFEST_FILE
from components.checks import runner, summaries, tables
from components.checks.results import DataValidationError, ValidationReport
from components.config import ValidationConfig, load_config

ARTIFACT_KEY = "data-validation"


# DVC decides when this stage reruns; Prefect must never serve its outputs from a cache.
@task(cache_policy=NO_CACHE, persist_result=False)
def load_tables(manifest_path: Path, split_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the manifest and the split."""
    return tables.read_tables(manifest_path, split_path)


@task(cache_policy=NO_CACHE, persist_result=False)
def compute_pixel_stats(manifest: pd.DataFrame, root: Path, bone_hu: float) -> pd.DataFrame:
    """Per-slice pixel statistics from the HU arrays."""
    return tables.pixel_stats(manifest, root, bone_hu)


@task(cache_policy=NO_CACHE, persist_result=False)
def run_suites(
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    pixels: pd.DataFrame,
    cfg: ValidationConfig,
    classes: Sequence[str],
    fractions: Mapping[str, float],
    mode: str,
    docs_dir: Path,
    folds: int = 0,
) -> ValidationReport:
    """Validate every suite and write the results page."""
    return runner.run_validation(
        manifest, split, pixels, cfg, classes, fractions, mode, docs_dir, folds=folds
    )


@task(cache_policy=NO_CACHE, persist_result=False)
def save_summary(report: ValidationReport, path: Path) -> Path:
    """Write the JSON summary DVC tracks as a metric."""
    return summaries.write_summary(report, path)


@task(cache_policy=NO_CACHE, persist_result=False)
def publish(report: ValidationReport) -> None:
    """Publish the result table as a markdown artifact."""
    create_markdown_artifact(
        markdown=summaries.markdown_table(report),
        key=ARTIFACT_KEY,
        description="Great Expectations results of the manifest, pixel and split suites",
    )


@flow(name="validate")
def validate(params: str = "params.yaml") -> ValidationReport:
    """Validate the processed data and the split; fail on bad data.

    Args:
        params: path to params.yaml (sections validation, split, ingest, classes); with
            split.folds, the split is checked fold by fold.

    Returns:
        The report of every suite.

    Raises:
        DataValidationError: an expectation failed; the message names each one with a few
            offending rows. The results page and the summary are written first.
        FileNotFoundError: the manifest or the split is missing.
    """
    cfg = load_config(params)
    manifest_path = cfg.path(cfg.ingest.out) / MANIFEST_FILE
    manifest, split = load_tables(manifest_path, cfg.path(cfg.split.out))
    pixels = compute_pixel_stats(manifest, manifest_path.parent, cfg.validation.bone_hu)
    report = run_suites(
        manifest,
        split,
        pixels,
        cfg.validation,
        cfg.classes,
        cfg.split.view_fractions(),
        cfg.split.mode,
        cfg.path(cfg.validation.docs_out),
        cfg.split.folds,
    )
    save_summary(report, cfg.path(cfg.validation.summary_out))
    publish(report)
    if not report.success:
        raise DataValidationError(summaries.failure_message(report))
    get_run_logger().info(summaries.success_line(report))
    return report
