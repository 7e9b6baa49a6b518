"""Run the suites with an ephemeral Great Expectations context (no GX project folder).

`run_validation` prepares each table, validates it against its suite, turns GX's results
into a `ValidationReport` and writes the results page (`components.checks.page`, one
self-contained `index.html`).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from components.artifacts import VALIDATION_PAGE
from components.checks.page import write_page
from components.checks.results import ExpectationOutcome, SuiteOutcome, ValidationReport
from components.checks.suites import manifest_suite, pixel_suite, split_suite
from components.checks.tables import prepare_manifest, prepare_split
from components.config import ValidationConfig
from components.data.split import FOLD_COLUMN

EXAMPLE_ROWS = 3


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a value from a GX result (numpy scalars, sets, NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _error(exception_info: Mapping[str, Any] | None) -> str | None:
    """The exception message of a GX result, flat or keyed by metric."""
    if not exception_info:
        return None
    infos = [exception_info, *(v for v in exception_info.values() if isinstance(v, Mapping))]
    for info in infos:
        if info.get("raised_exception") and info.get("exception_message"):
            return str(info["exception_message"])
    return None


def _outcome(result: ExpectationValidationResult, max_examples: int) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = config.kwargs
    details = result.result or {}
    column = kwargs.get("column")
    if column is None and "column_A" in kwargs:
        column = f"{kwargs['column_A']},{kwargs['column_B']}"
    if column is None and "column_list" in kwargs:
        column = ",".join(kwargs["column_list"])
    examples = details.get("partial_unexpected_index_list") or [
        {"value": v} for v in details.get("partial_unexpected_list") or []
    ]
    observed = details.get("observed_value")
    if observed is None and details.get("partial_missing_list"):
        observed = {"missing": details["partial_missing_list"]}
    return ExpectationOutcome(
        check=(config.meta or {}).get("check", config.type),
        description=config.description or config.type,
        expectation_type=config.type,
        column=column,
        success=bool(result.success),
        observed=_plain(observed),
        unexpected_count=details.get("unexpected_count"),
        element_count=details.get("element_count"),
        examples=tuple(_plain(dict(x)) for x in examples[:max_examples]),
        error=_error(result.exception_info),
    )


def _reset_docs(docs_dir: Path) -> None:
    """Empty a previous results page (or an older Data Docs site) for this run's."""
    if docs_dir.is_dir() and any(docs_dir.iterdir()):
        if not (docs_dir / VALIDATION_PAGE).is_file():
            raise FileExistsError(
                f"{docs_dir}: not empty and not a validation results folder (no index.html); "
                "point validation.docs_out at an empty or dedicated folder"
            )
        shutil.rmtree(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)


def _context() -> EphemeralDataContext:
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={},
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def run_validation(
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    pixels: pd.DataFrame,
    cfg: ValidationConfig,
    classes: Sequence[str],
    fractions: Mapping[str, float],
    mode: str,
    docs_dir: Path,
    max_examples: int = EXAMPLE_ROWS,
    folds: int = 0,
) -> ValidationReport:
    """Validate manifest, pixel statistics and split, and write the results page
    (`validation_page`: self-contained, unlike Data Docs, which need the internet).

    Args:
        manifest: the manifest as read from manifest.csv.
        split: the split as read from split.csv.
        pixels: the output of `pixel_stats` for this manifest.
        cfg: the validation thresholds.
        classes: the class labels, params.yaml `classes`.
        fractions: the intended share of each split (of each fold's split with `folds`),
            `SplitConfig.view_fractions()`.
        mode: the split mode, "patient" or "image".
        docs_dir: folder of the results page; emptied first if it holds an earlier one.
        max_examples: offending rows kept per failed expectation.
        folds: params split.folds: k >= 3 for a cross-validation split (one row per image
            and fold), 0 for a single split.

    Returns:
        The outcome of each suite, in the order manifest, pixels, split.

    Raises:
        FileExistsError: docs_dir holds other files than a results page.
    """
    docs_dir = Path(docs_dir).resolve()
    _reset_docs(docs_dir)
    context = _context()
    source = context.data_sources.add_pandas(name="myelomet")
    tables = {
        "manifest": (prepare_manifest(manifest), manifest_suite(cfg, classes)),
        "pixels": (pixels, pixel_suite(cfg)),
        "split": (
            prepare_split(split, manifest, mode),
            split_suite(cfg, classes, fractions, mode, folds),
        ),
    }
    run_id = RunIdentifier(run_name="myelomet-validate", run_time=datetime.now(UTC))
    outcomes = []
    for name, (frame, suite) in tables.items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite))
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": [
                    c for c in ("image_id", FOLD_COLUMN, "patient", "split") if c in frame
                ],
            },
            run_id=run_id,
        )
        outcomes.append(
            SuiteOutcome(
                name=name,
                success=bool(result.success),
                expectations=tuple(_outcome(r, max_examples) for r in result.results),
            )
        )
    report = ValidationReport(suites=tuple(outcomes), docs_index=docs_dir / VALIDATION_PAGE)
    write_page(report, report.docs_index)
    return report
