"""Great Expectations suites that stand between the data and training.

Three suites, each validated against one pandas table with an ephemeral GX context (no GX
project folder):

- `manifest`: one row per slice, the manifest as written by ingest, plus the per-row
  columns `class_fraction` (share of slices of the row's class) and `patient_labels`
  (distinct labels of the row's patient), so that table-wide rules fail on the rows that
  break them.
- `pixels`: one row per slice, statistics computed from the HU slices (`pixel_stats`).
- `split`: the split outer-joined with the manifest on `image_id`, plus `in_manifest`,
  `manifest_patient`, `manifest_label`, `patient_splits` (distinct splits of the row's
  patient) and `split_fraction` (share of patients, or of images in image mode, of the
  row's split).

Every expectation carries a stable check name in `meta["check"]`; results, messages and
tests refer to it. `run_validation` writes the results page (`validation_page`, one
self-contained `index.html`) and returns a `ValidationReport`; the rest turns that report
into a JSON summary, a failure message and a markdown table.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import great_expectations as gx
import great_expectations.expectations as gxe
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
from great_expectations.expectations.expectation import BatchExpectation
from great_expectations.expectations.row_conditions import Column
from tqdm import tqdm

from components import markdown
from components.artifacts import VALIDATION_PAGE
from components.checks.page import format_row, write_page
from components.config import ValidationConfig
from components.data.split import SPLITS

SUITES = ("manifest", "pixels", "split")
MANIFEST_REQUIRED = (
    "image_id",
    "patient",
    "label",
    "hu_min",
    "hu_max",
    "file",
    "modality",
    "rows",
    "columns",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "slice_thickness",
)
SPLIT_REQUIRED = ("image_id", "patient", "label", "split")
# The HU range 12-bit CT pixel data can hold: signed down to -2048, unsigned up to 4095.
HU_FLOOR = -2048.0
HU_CEILING = 4095.0
PSEUDONYM_PATTERN = r"^pt-[0-9a-f]{8,}$"
# Matched against the snake_case form of a column name (PatientBirthDate -> patient_birth_date).
PHI_COLUMN_PATTERN = (
    r"(?:^|_)(?:\w*name|\w*birth\w*|dob|patient_?i_?ds?|mrn|accession\w*|\w*uids?"
    r"|address|\w*phone|e_?mail|ssn)(?:_|$)"
)
EXAMPLE_ROWS = 3


class DataValidationError(RuntimeError):
    """The data broke at least one expectation; the message names each one."""


def snake_case(name: str) -> str:
    """Column name in snake_case: `SOPInstanceUID` -> `sop_instance_uid`."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def phi_columns(columns: Sequence[str], pattern: str = PHI_COLUMN_PATTERN) -> list[str]:
    """The columns whose name suggests protected health information.

    Args:
        columns: column names.
        pattern: regular expression searched in each snake_case name.

    Returns:
        The matching names, in their original spelling and order.
    """
    return [c for c in columns if re.search(pattern, snake_case(str(c)))]


class ExpectNoPhiColumns(BatchExpectation):
    """Expect no column whose name suggests PHI: names, birth dates, patient IDs, UIDs.

    The observed value lists the offending columns.
    """

    pattern: str = PHI_COLUMN_PATTERN

    metric_dependencies = ("table.columns",)
    success_keys = ("pattern",)
    args_keys = ("pattern",)
    library_metadata: ClassVar[dict[str, Any]] = {
        "maturity": "experimental",
        "tags": ["myelomet", "privacy"],
        "contributors": ["myelomet"],
    }

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        found = phi_columns(metrics["table.columns"], self.pattern)
        return {"success": not found, "result": {"observed_value": found}}


def _tag(check: str, description: str) -> dict[str, Any]:
    """Constructor arguments naming an expectation: its check name and what it expects."""
    return {"meta": {"check": check}, "description": description}


def manifest_suite(cfg: ValidationConfig, classes: Sequence[str]) -> gx.ExpectationSuite:
    """The expectations on the manifest (one row per slice, see the module docstring).

    Args:
        cfg: the validation thresholds.
        classes: the class labels, params.yaml `classes`.

    Returns:
        The suite named "manifest".
    """
    classes = list(classes)
    lo_px, hi_px = cfg.pixel_spacing_mm
    lo_st, hi_st = cfg.slice_thickness_mm
    e: list[gxe.Expectation] = []
    for col in MANIFEST_REQUIRED:
        e.append(gxe.ExpectColumnToExist(column=col, **_tag("has_column", f"column {col}")))
    for col in MANIFEST_REQUIRED:
        e.append(gxe.ExpectColumnValuesToNotBeNull(column=col, **_tag("not_null", f"{col} is set")))
    e += [
        ExpectNoPhiColumns(
            **_tag(
                "no_phi_columns",
                "no column that could carry PHI (names, birth dates, PatientID, UIDs)",
            )
        ),
        gxe.ExpectColumnValuesToNotBeInSet(
            column="burned_in_annotation",
            value_set=["YES"],
            **_tag(
                "no_burned_in_annotation",
                "no slice flagged BurnedInAnnotation YES (text in the pixels may be PHI)",
            ),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="patient",
            regex=PSEUDONYM_PATTERN,
            **_tag(
                "patient_pseudonymised",
                f"patient is a pseudonym matching {PSEUDONYM_PATTERN}, never a DICOM PatientID",
            ),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="image_id", **_tag("image_id_unique", "image_id unique")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=classes, **_tag("label_in_classes", f"label in {classes}")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="modality", value_set=["CT"], **_tag("modality_ct", "modality CT")
        ),
    ]
    for col in ("rows", "columns"):
        e.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col,
                min_value=cfg.min_side,
                max_value=cfg.max_side,
                **_tag("image_size", f"{col} in [{cfg.min_side}, {cfg.max_side}] pixels"),
            )
        )
    for col in ("pixel_spacing_row", "pixel_spacing_col"):
        e.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col,
                min_value=lo_px,
                max_value=hi_px,
                **_tag("pixel_spacing", f"{col} in [{lo_px}, {hi_px}] mm"),
            )
        )
    e += [
        gxe.ExpectColumnValuesToBeBetween(
            column="slice_thickness",
            min_value=lo_st,
            max_value=hi_st,
            **_tag("slice_thickness", f"slice_thickness in [{lo_st}, {hi_st}] mm"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="hu_min",
            min_value=HU_FLOOR,
            max_value=HU_CEILING,
            **_tag("hu_range", f"hu_min in [{HU_FLOOR:g}, {HU_CEILING:g}]"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="hu_max",
            min_value=HU_FLOOR,
            max_value=HU_CEILING,
            **_tag("hu_range", f"hu_max in [{HU_FLOOR:g}, {HU_CEILING:g}]"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="hu_max",
            min_value=cfg.bone_hu,
            **_tag("bone_present", f"hu_max at least {cfg.bone_hu:g} HU (bone in the slice)"),
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="hu_max", column_B="hu_min", **_tag("hu_ordered", "hu_max above hu_min")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="patient_labels",
            max_value=1,
            **_tag(
                "patient_one_label", "each patient carries one label (patient_labels at most 1)"
            ),
        ),
    ]
    for c in classes:
        e.append(
            gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="patient",
                min_value=cfg.min_patients_per_class,
                row_condition=Column("label") == c,
                **_tag(
                    "min_patients_per_class",
                    f"class {c} has at least {cfg.min_patients_per_class} patients",
                ),
            )
        )
    e.append(
        gxe.ExpectColumnValuesToBeBetween(
            column="class_fraction",
            min_value=cfg.min_class_fraction,
            max_value=1 - cfg.min_class_fraction,
            **_tag(
                "class_balance",
                f"each class holds between {cfg.min_class_fraction:g} and "
                f"{1 - cfg.min_class_fraction:g} of the slices (class_fraction)",
            ),
        )
    )
    return gx.ExpectationSuite(name="manifest", expectations=e)


def pixel_suite(cfg: ValidationConfig) -> gx.ExpectationSuite:
    """The expectations on the per-slice pixel statistics of `pixel_stats`.

    Args:
        cfg: the validation thresholds.

    Returns:
        The suite named "pixels".
    """
    lo_b, hi_b = cfg.bone_fraction
    e: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeInSet(
            column="readable",
            value_set=[True],
            **_tag("slice_readable", "the slice file loads as a 2-D array (see column error)"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_pixels", min_value=1, **_tag("image_not_empty", "the slice has pixels")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="nan_count", max_value=0, **_tag("no_nan", "no NaN or infinite pixel")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="hu_range",
            min_value=0,
            strict_min=True,
            **_tag("image_not_constant", "the slice is not constant (hu_range above 0)"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="bone_fraction",
            min_value=lo_b,
            max_value=hi_b,
            **_tag(
                "bone_fraction",
                f"share of pixels at or above {cfg.bone_hu:g} HU in [{lo_b:g}, {hi_b:g}]",
            ),
        ),
    ]
    for col in ("height", "width"):
        e.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col,
                min_value=cfg.min_side,
                max_value=cfg.max_side,
                **_tag("image_size", f"array {col} in [{cfg.min_side}, {cfg.max_side}] pixels"),
            )
        )
    return gx.ExpectationSuite(name="pixels", expectations=e)


def split_suite(
    cfg: ValidationConfig,
    classes: Sequence[str],
    fractions: Mapping[str, float],
    mode: str,
) -> gx.ExpectationSuite:
    """The expectations on the split joined with the manifest (see the module docstring).

    Args:
        cfg: the validation thresholds.
        classes: the class labels, params.yaml `classes`.
        fractions: the intended share of each split, `SplitConfig.fractions()`.
        mode: "patient" or "image", the split mode; patient leakage is checked in patient
            mode only.

    Returns:
        The suite named "split".
    """
    classes = list(classes)
    tol = cfg.split_tolerance
    unit = "patients" if mode == "patient" else "images"
    e: list[gxe.Expectation] = [
        gxe.ExpectColumnToExist(column=col, **_tag("has_column", f"column {col}"))
        for col in SPLIT_REQUIRED
    ]
    e += [
        ExpectNoPhiColumns(
            **_tag(
                "no_phi_columns",
                "no column that could carry PHI (names, birth dates, PatientID, UIDs)",
            )
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="split", **_tag("image_in_split", "every manifest image is in a split")
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="image_id",
            **_tag("image_in_one_split", "every image is in exactly one split (image_id unique)"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="in_manifest",
            value_set=[True],
            **_tag("image_in_manifest", "every split image is in the manifest"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS), **_tag("split_name", f"split in {list(SPLITS)}")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=classes, **_tag("label_in_classes", f"label in {classes}")
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="label",
            column_B="manifest_label",
            ignore_row_if="either_value_is_missing",
            **_tag("label_matches_manifest", "label equals the manifest's label"),
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="patient",
            column_B="manifest_patient",
            ignore_row_if="either_value_is_missing",
            **_tag("patient_matches_manifest", "patient equals the manifest's patient"),
        ),
    ]
    if mode == "patient":
        e.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="patient_splits",
                max_value=1,
                **_tag(
                    "patient_in_one_split", "no patient in two splits (patient_splits at most 1)"
                ),
            )
        )
    for s in SPLITS:
        e.append(
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="label",
                value_set=classes,
                row_condition=Column("split") == s,
                **_tag("split_has_all_classes", f"split {s} holds every class {classes}"),
            )
        )
    for s in SPLITS:
        f = fractions[s]
        e.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="split_fraction",
                min_value=max(f - tol, 0.0),
                max_value=min(f + tol, 1.0),
                row_condition=Column("split") == s,
                **_tag(
                    "split_fraction",
                    f"split {s} holds {f:g} ± {tol:g} of the {unit} (split_fraction)",
                ),
            )
        )
    return gx.ExpectationSuite(name="split", expectations=e)


def read_tables(manifest_path: Path, split_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read manifest.csv and split.csv.

    Args:
        manifest_path: the manifest written by `myelomet ingest`.
        split_path: the split written by `myelomet split`.

    Returns:
        The manifest and the split.

    Raises:
        FileNotFoundError: a file is missing; the message names the command that writes it.
    """
    for path, command in ((manifest_path, "myelomet ingest"), (split_path, "myelomet split")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not found; run `{command}` first")
    return pd.read_csv(manifest_path), pd.read_csv(split_path)


def prepare_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with the per-row columns `class_fraction` and `patient_labels`.

    Args:
        manifest: the manifest as read from manifest.csv.

    Returns:
        A copy with the derived columns (left out when their inputs are missing).
    """
    frame = manifest.copy()
    if "label" in frame:
        frame["class_fraction"] = frame["label"].map(frame["label"].value_counts(normalize=True))
        if "patient" in frame:
            frame["patient_labels"] = frame.groupby("patient")["label"].transform("nunique")
    return frame


def prepare_split(split: pd.DataFrame, manifest: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The split outer-joined with the manifest, with the per-row check columns.

    Args:
        split: the split as read from split.csv.
        manifest: the manifest as read from manifest.csv.
        mode: "patient" (split_fraction counts patients) or "image" (counts images).

    Returns:
        One row per split row plus one per manifest image missing from the split (with
        `split` empty); see the module docstring for the derived columns.
    """
    if "image_id" not in split or "image_id" not in manifest:
        return split.copy()
    ref = manifest.drop_duplicates("image_id").set_index("image_id")
    ref = pd.DataFrame(
        {
            "manifest_patient": ref.get("patient"),
            "manifest_label": ref.get("label"),
        },
        index=ref.index,
    )
    frame = split.merge(ref, how="outer", left_on="image_id", right_index=True, indicator=True)
    frame["in_manifest"] = frame.pop("_merge") != "left_only"
    for col in ("patient", "label"):
        if col in frame:
            frame[col] = frame[col].fillna(frame[f"manifest_{col}"])
    if {"patient", "split"} <= set(frame.columns):
        frame["patient_splits"] = frame.groupby("patient")["split"].transform("nunique")
        key = "patient" if mode == "patient" else "image_id"
        assigned = frame.dropna(subset=["split"])
        share = assigned.groupby("split")[key].nunique() / max(assigned[key].nunique(), 1)
        frame["split_fraction"] = frame["split"].map(share)
    return frame.reset_index(drop=True)


def _slice_stats(path: Path, bone_hu: float) -> dict[str, Any]:
    try:
        hu = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return {"readable": False, "error": f"{type(exc).__name__}: {exc}"}
    if hu.ndim != 2:
        return {"readable": False, "error": f"expected a 2-D slice, got shape {hu.shape}"}
    stats: dict[str, Any] = {
        "readable": True,
        "error": None,
        "height": hu.shape[0],
        "width": hu.shape[1],
        "n_pixels": int(hu.size),
        "nan_count": 0,
    }
    if np.issubdtype(hu.dtype, np.floating):
        finite = np.isfinite(hu)
        stats["nan_count"] = int(hu.size - np.count_nonzero(finite))
        hu = hu[finite]
    if hu.size:
        lo, hi = float(hu.min()), float(hu.max())
        stats |= {
            "hu_min": lo,
            "hu_max": hi,
            "hu_range": hi - lo,
            "bone_fraction": np.count_nonzero(hu >= bone_hu) / hu.size,
        }
    return stats


def pixel_stats(
    manifest: pd.DataFrame,
    root: Path,
    bone_hu: float,
    workers: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-slice statistics computed from the HU arrays the manifest points at.

    A missing or unreadable file is a row with `readable` False and the reason in `error`,
    not an exception, so that validation reports it with every other fault.

    Args:
        manifest: rows with `image_id` and `file` (relative to `root`).
        root: the manifest's folder.
        bone_hu: HU at or above which a pixel counts as bone.
        workers: threads loading files (numpy releases the GIL while reading and reducing).
        progress: show a progress bar on stderr.

    Returns:
        One row per manifest row: image_id, file, readable, error, height, width, n_pixels,
        nan_count, hu_min, hu_max, hu_range, bone_fraction.

    Raises:
        ValueError: the manifest has no `image_id` or `file` column.
    """
    missing = [c for c in ("image_id", "file") if c not in manifest]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; rerun `myelomet ingest`")
    files = manifest["file"].tolist()
    paths = [root / str(f) for f in files]
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        rows = list(
            tqdm(
                pool.map(lambda p: _slice_stats(p, bone_hu), paths),
                total=len(paths),
                desc="pixel statistics",
                unit="slice",
                disable=not progress,
            )
        )
    columns = [
        "readable",
        "error",
        "height",
        "width",
        "n_pixels",
        "nan_count",
        "hu_min",
        "hu_max",
        "hu_range",
        "bone_fraction",
    ]
    stats = pd.DataFrame(rows, columns=columns)
    stats.insert(0, "file", files)
    stats.insert(0, "image_id", manifest["image_id"].tolist())
    return stats


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result.

    Attributes:
        check: the stable check name (meta["check"]).
        description: what is expected, in words.
        expectation_type: the GX expectation, e.g. expect_column_values_to_be_in_set.
        column: the column it looks at, if any.
        success: whether the data met it.
        observed: GX's observed value (aggregate and table expectations).
        unexpected_count: rows that broke it (column map expectations).
        element_count: rows it looked at (column map expectations).
        examples: a few offending rows, each a dict of column -> value.
        error: why the check could not run (e.g. a missing column).
    """

    check: str
    description: str
    expectation_type: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: tuple[dict[str, Any], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class SuiteOutcome:
    """One suite's result."""

    name: str
    success: bool
    expectations: tuple[ExpectationOutcome, ...]

    @property
    def evaluated(self) -> int:
        return len(self.expectations)

    @property
    def failed(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(e for e in self.expectations if not e.success)


@dataclass(frozen=True)
class ValidationReport:
    """The result of all suites, and where their results page is."""

    suites: tuple[SuiteOutcome, ...]
    docs_index: Path

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites)

    def suite(self, name: str) -> SuiteOutcome:
        """The outcome of the suite called `name`.

        Raises:
            KeyError: no such suite was run.
        """
        for s in self.suites:
            if s.name == name:
                return s
        raise KeyError(f"no suite {name!r}; ran {[s.name for s in self.suites]}")

    def failed_checks(self) -> set[str]:
        """The names of the failed checks, as "suite.check"."""
        return {f"{s.name}.{e.check}" for s in self.suites for e in s.failed}


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
) -> ValidationReport:
    """Validate manifest, pixel statistics and split, and write the results page
    (`validation_page`: self-contained, unlike Data Docs, which need the internet).

    Args:
        manifest: the manifest as read from manifest.csv.
        split: the split as read from split.csv.
        pixels: the output of `pixel_stats` for this manifest.
        cfg: the validation thresholds.
        classes: the class labels, params.yaml `classes`.
        fractions: the intended share of each split, `SplitConfig.fractions()`.
        mode: the split mode, "patient" or "image".
        docs_dir: folder of the results page; emptied first if it holds an earlier one.
        max_examples: offending rows kept per failed expectation.

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
        "split": (prepare_split(split, manifest, mode), split_suite(cfg, classes, fractions, mode)),
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
                    c for c in ("image_id", "patient", "split") if c in frame
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


def summary(report: ValidationReport) -> dict[str, Any]:
    """Flat numbers DVC can show as metrics.

    Returns:
        {"success": 0|1, "evaluated": n, "failed": k, "<suite>": {"success", "evaluated",
        "failed"}} for each suite.
    """
    out: dict[str, Any] = {
        "success": int(report.success),
        "evaluated": sum(s.evaluated for s in report.suites),
        "failed": sum(len(s.failed) for s in report.suites),
    }
    for s in report.suites:
        out[s.name] = {"success": int(s.success), "evaluated": s.evaluated, "failed": len(s.failed)}
    return out


def write_summary(report: ValidationReport, path: Path) -> Path:
    """Write `summary(report)` as JSON (parent folders created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary(report), indent=2) + "\n")
    return path


def _evidence(e: ExpectationOutcome) -> str:
    """What went wrong, in one line: the error, the offending rows or the observed value."""
    if e.error:
        return f"could not run: {e.error}"
    if e.unexpected_count:
        rows = "; ".join(format_row(x) for x in e.examples)
        return f"{e.unexpected_count} of {e.element_count} rows" + (
            f", e.g. {rows}" if rows else ""
        )
    if e.expectation_type == "expect_column_to_exist":
        return "column missing"
    if isinstance(e.observed, Mapping):
        return f"observed {format_row(e.observed)}"
    return f"observed {e.observed}"


def failure_message(report: ValidationReport) -> str:
    """Name each failed expectation with a few offending rows.

    Returns:
        A multi-line message, or "" when every suite passed.
    """
    if report.success:
        return ""
    failed = [(s.name, e) for s in report.suites for e in s.failed]
    suites = sorted({name for name, _ in failed})
    lines = [
        f"data validation failed: {len(failed)} expectation(s) in {', '.join(suites)}; "
        f"training must not start. Results page: {report.docs_index}"
    ]
    for name, e in failed:
        column = f" [{e.column}]" if e.column else ""
        lines.append(
            f"  {name}.{e.check}{column}: expected {e.description} ({e.expectation_type}); "
            f"{_evidence(e)}"
        )
    return "\n".join(lines)


def success_line(report: ValidationReport) -> str:
    """The one line printed when every suite passed."""
    counts = ", ".join(f"{s.name} {s.evaluated}" for s in report.suites)
    return (
        f"data validation passed: all {sum(s.evaluated for s in report.suites)} expectations "
        f"met ({counts}); results page: {report.docs_index}"
    )


def markdown_table(report: ValidationReport) -> str:
    """The result as markdown: one table of suites, one of every expectation."""
    status = {True: "passed", False: "**FAILED**"}
    lines = [
        f"Data validation {status[report.success]}. Results page: `{report.docs_index}`",
        "",
        markdown.table(
            ("suite", "result", "evaluated", "failed"),
            [(s.name, status[s.success], s.evaluated, len(s.failed)) for s in report.suites],
        ),
        "",
        markdown.table(
            ("suite", "check", "column", "expected", "result", "evidence"),
            [
                (
                    s.name,
                    e.check,
                    e.column or "",
                    e.description,
                    status[e.success],
                    "" if e.success else _evidence(e),
                )
                for s in report.suites
                for e in s.expectations
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
