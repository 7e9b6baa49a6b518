"""Great Expectations suites that stand between the data and training.

Three suites, `manifest`, `pixels` and `split`, each validated against one pandas table of
`components.checks.tables` (the manifest, the pixel statistics, the split joined with the
manifest). The split suite has two forms: a single split, and a cross-validation split
(`split.folds` k >= 3, one row per image and fold), whose checks hold within each fold.
Every expectation carries a stable check name in `meta["check"]`; results, messages and
tests refer to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.row_conditions import Column

from components.checks.phi import ExpectNoPhiColumns
from components.config import ValidationConfig
from components.data.dicom_attributes import (
    BODY_PART_PREFIX,
    BURNED_IN_TERMS,
    GREYSCALE,
    KERNEL_PREFIX,
    OTHER,
    PSEUDONYM_LENGTH,
    SCANNER_PREFIX,
    VENDORS,
)
from components.data.split import FOLD_COLUMN, SPLITS

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
# The acquisition columns hold no header text: keyed pseudonyms, or terms of a vocabulary.
ACQUISITION_PSEUDONYMS = {
    "model": SCANNER_PREFIX,
    "kernel": KERNEL_PREFIX,
    "body_part": BODY_PART_PREFIX,
}


def _tag(check: str, description: str) -> dict[str, Any]:
    """Constructor arguments naming an expectation: its check name and what it expects."""
    return {"meta": {"check": check}, "description": description}


def manifest_suite(cfg: ValidationConfig, classes: Sequence[str]) -> gx.ExpectationSuite:
    """The expectations on the manifest (one row per slice, see `components.checks.tables`).

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
        gxe.ExpectColumnValuesToBeInSet(
            column="manufacturer",
            value_set=list(VENDORS),
            **_tag("vendor_in_vocabulary", f"manufacturer empty or one of {', '.join(VENDORS)}"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="photometric",
            value_set=list(GREYSCALE),
            **_tag("photometric_greyscale", f"photometric one of {', '.join(GREYSCALE)}"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="burned_in_annotation",
            value_set=[*BURNED_IN_TERMS, OTHER],
            **_tag(
                "burned_in_coded",
                f"burned_in_annotation empty or one of {', '.join([*BURNED_IN_TERMS, OTHER])}",
            ),
        ),
    ]
    for col, prefix in ACQUISITION_PSEUDONYMS.items():
        pattern = rf"^{prefix}-[0-9a-f]{{{PSEUDONYM_LENGTH}}}$"
        e.append(
            gxe.ExpectColumnValuesToMatchRegex(
                column=col,
                regex=pattern,
                **_tag(
                    "acquisition_pseudonymised",
                    f"{col} empty or a keyed pseudonym matching {pattern}, never header text",
                ),
            )
        )
    e += [
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
    folds: int = 0,
) -> gx.ExpectationSuite:
    """The expectations on the split joined with the manifest (see `components.checks.tables`).

    Args:
        cfg: the validation thresholds.
        classes: the class labels, params.yaml `classes`.
        fractions: the intended share of each split (of one fold's split with `folds`),
            `SplitConfig.view_fractions()`.
        mode: "patient" or "image", the split mode; patient leakage is checked in patient
            mode only.
        folds: k >= 3 for a cross-validation split of k folds (one row per image and fold),
            0 for a single split.

    Returns:
        The suite named "split".
    """
    classes = list(classes)
    required = [*SPLIT_REQUIRED, FOLD_COLUMN] if folds else SPLIT_REQUIRED
    e: list[gxe.Expectation] = [
        gxe.ExpectColumnToExist(column=col, **_tag("has_column", f"column {col}"))
        for col in required
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
    ]
    e += _fold_membership(folds) if folds else _single_membership()
    e += [
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
    if folds:
        e += _fold_balance(cfg, classes, fractions, folds)
    else:
        e += _single_balance(cfg, classes, fractions, mode)
    return gx.ExpectationSuite(name="split", expectations=e)


def _single_membership() -> list[gxe.Expectation]:
    """A single split: each image in it once."""
    return [
        gxe.ExpectColumnValuesToBeUnique(
            column="image_id",
            **_tag("image_in_one_split", "every image is in exactly one split (image_id unique)"),
        )
    ]


def _fold_membership(folds: int) -> list[gxe.Expectation]:
    """A cross-validation split: each image once in each of the folds, the folds named
    0 to k - 1."""
    return [
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["image_id", FOLD_COLUMN],
            **_tag(
                "image_in_one_split",
                "every image is in exactly one split of each fold ((image_id, fold) unique)",
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="image_folds",
            min_value=folds,
            max_value=folds,
            **_tag(
                "image_in_every_fold",
                f"every manifest image is in each of the {folds} folds (image_folds {folds})",
            ),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=FOLD_COLUMN,
            value_set=list(range(folds)),
            **_tag("fold_name", f"fold in 0..{folds - 1} (split.folds {folds})"),
        ),
    ]


def _single_balance(
    cfg: ValidationConfig, classes: list[str], fractions: Mapping[str, float], mode: str
) -> list[gxe.Expectation]:
    """A single split: no patient leakage (patient mode), every class and the intended
    share of patients (or images) in each split."""
    tol = cfg.split_tolerance
    unit = "patients" if mode == "patient" else "images"
    e: list[gxe.Expectation] = []
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
    return e + _split_fractions(fractions, tol, f"the {unit}")


def _split_fractions(
    fractions: Mapping[str, float], tol: float, of_what: str
) -> list[gxe.Expectation]:
    """Each split's share (`split_fraction`) within `tol` of its fraction of `of_what`."""
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="split_fraction",
            min_value=max(fractions[s] - tol, 0.0),
            max_value=min(fractions[s] + tol, 1.0),
            row_condition=Column("split") == s,
            **_tag(
                "split_fraction",
                f"split {s} holds {fractions[s]:.4g} ± {tol:g} of {of_what} (split_fraction)",
            ),
        )
        for s in SPLITS
    ]


def _fold_balance(
    cfg: ValidationConfig, classes: list[str], fractions: Mapping[str, float], folds: int
) -> list[gxe.Expectation]:
    """A cross-validation split: no patient in two splits of a fold, every patient tested
    in one fold, every class in each split of each fold, and each split's share of its
    fold's patients."""
    tol = cfg.split_tolerance
    e: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(
            column="patient_splits",
            max_value=1,
            **_tag(
                "patient_in_one_split",
                "no patient in two splits of a fold (patient_splits at most 1)",
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="patient_test_folds",
            min_value=1,
            max_value=1,
            **_tag(
                "patient_tested_once",
                "every patient is in test in exactly one fold (patient_test_folds 1)",
            ),
        ),
    ]
    for fold in range(folds):
        for s in SPLITS:
            e.append(
                gxe.ExpectColumnDistinctValuesToContainSet(
                    column="label",
                    value_set=classes,
                    row_condition=(Column(FOLD_COLUMN) == fold) & (Column("split") == s),
                    **_tag(
                        "split_has_all_classes",
                        f"fold {fold} split {s} holds every class {classes}",
                    ),
                )
            )
    return e + _split_fractions(fractions, tol, "each fold's patients")
