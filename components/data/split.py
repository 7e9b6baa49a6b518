"""Train/validation/test split of the manifest.

`patient` mode keeps every slice of a patient in one split, stratified by label and by the
manifest columns of `split.stratify` (the scanner, say): what a study must do. Within a
stratum assignment is random, so a chance imbalance of scanners between the classes of one
split cannot become a shortcut that flips on the next. `image` mode reproduces the paper's
random split of slices, which puts the same patient in train and test; it exists only to
measure that leakage.

With `split.folds` k >= 3 the patients are dealt, stratified the same way, into k folds,
and the split becomes k splits: in split f the patients of fold f are the test set, those
of fold f + 1 (mod k) the validation set, the rest train, so that every patient is tested
once and validated once. The table is then long: one row per slice and fold, with the
column `fold`; `fold_view` gives one fold's split as an ordinary single split.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import MANIFEST_FILE
from components.config import MIN_FOLDS, Config

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["image_id", "patient", "label", "split"]
FOLD_COLUMN = "fold"


class SplitError(ValueError):
    """The manifest cannot be split as asked."""


def _allocate(n: int, fractions: Mapping[Hashable, float]) -> dict[Hashable, int]:
    """Share n items among the buckets (the keys of `fractions`: splits or folds) by largest
    remainder, ties to the earlier key, at least one each when n allows."""
    names = list(fractions)
    raw = {s: n * fractions[s] for s in names}
    counts = {s: int(np.floor(v)) for s, v in raw.items()}
    for s in sorted(names, key=lambda s: raw[s] - counts[s], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[s] += 1
    if n >= len(names):
        for s in names:
            while counts[s] == 0:
                donor = max(names, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[s] += 1
    return counts


def _deal(counts: Mapping[Hashable, int]) -> list[Hashable]:
    """The buckets of n ordered units, each prefix shared out as close to `counts` as whole
    units allow (the bucket furthest behind its share takes the next unit, ties to the
    earlier key); exactly `counts` in all."""
    names = list(counts)
    n = sum(counts.values())
    taken = dict.fromkeys(names, 0)
    order = []
    for i in range(1, n + 1):
        s = max(names, key=lambda s: i * counts[s] / n - taken[s])
        taken[s] += 1
        order.append(s)
    return order


def _assign(
    units: pd.DataFrame,
    fractions: Mapping[Hashable, float],
    seed: int,
    stratify: Sequence[str],
    balance: bool = False,
) -> pd.Series:
    """Assign each unit (row) a bucket (a key of `fractions`), stratified by its label and
    its `stratify` columns: per label, units in random order within each stratum, strata
    one after another, dealt so that every stratum is shared out in the fractions.

    With `balance`, the remainder units of each label go first to the buckets that hold
    the fewest units so far, so that equal buckets (folds) end up equal in size across the
    labels too, not each one unit larger in the first buckets."""
    rng = np.random.default_rng(seed)
    assigned = pd.Series(index=units.index, dtype=object)
    held = dict.fromkeys(fractions, 0)
    for label in sorted(units["label"].unique()):
        group = units[units["label"] == label]
        shuffled = group.iloc[rng.permutation(len(group))]
        if stratify:
            strata = shuffled[list(stratify)].astype(str).agg("|".join, axis=1).to_numpy()
            shuffled = shuffled.iloc[np.argsort(strata, kind="stable")]
        shares = fractions
        if balance:
            shares = {b: fractions[b] for b in sorted(fractions, key=held.__getitem__)}
        counts = _allocate(len(shuffled), shares)
        for b, c in counts.items():
            held[b] += c
        assigned.loc[shuffled.index] = _deal(counts)
    return assigned


def _frame(manifest: pd.DataFrame, stratify: Sequence[str]) -> pd.DataFrame:
    """The manifest's image_id, patient and label, and its `stratify` columns as strings
    (missing values as "missing"), sorted by image_id.

    Raises:
        SplitError: a `stratify` column is not in the manifest.
    """
    absent = [c for c in stratify if c not in manifest.columns]
    if absent:
        raise SplitError(
            f"split.stratify names {absent}, which the manifest lacks; choose from "
            f"{sorted(set(manifest.columns) - set(SPLIT_COLUMNS))} or set split.stratify: []"
        )
    frame = manifest[["image_id", "patient", "label", *stratify]].sort_values("image_id")
    frame = frame.reset_index(drop=True)
    for c in stratify:
        frame[c] = frame[c].fillna("missing").astype(str)
    return frame


def _per_patient(frame: pd.DataFrame, stratify: Sequence[str]) -> pd.DataFrame:
    """One row per patient: its label and, for each `stratify` column, its most frequent
    value over its slices (ties to the first in sort order)."""
    patients = frame.drop_duplicates("patient").set_index("patient")[["label"]]
    for c in stratify:
        counts = frame.groupby(["patient", c]).size().reset_index(name="n")
        counts = counts.sort_values(["patient", "n", c], ascending=[True, False, True])
        patients[c] = counts.drop_duplicates("patient").set_index("patient")[c]
    return patients.sort_index()


def split_manifest(
    manifest: pd.DataFrame,
    fractions: Mapping[str, float],
    seed: int,
    mode: str = "patient",
    stratify: Sequence[str] = (),
    folds: int = 0,
) -> pd.DataFrame:
    """Assign every manifest row to train, val or test, or with `folds` to a test fold.

    Args:
        manifest: one row per slice with columns image_id, patient, label.
        fractions: share of train, val and test (of patients in patient mode, of slices in
            image mode), summing to 1; unused with `folds`.
        seed: makes the split reproducible.
        mode: "patient" (stratified, no patient in two splits) or "image".
        stratify: manifest columns to stratify by besides the label (a patient counts
            under its most frequent value; in image mode each slice under its own).
        folds: 0 for one split; k >= 3 (patient mode) for patient-grouped k-fold
            cross-validation, the patients dealt into k folds stratified as above.

    Returns:
        The columns image_id, patient, label, split, sorted by image_id; with `folds`, one
        row per slice and fold and the column `fold` (0 to k - 1) after them, sorted by
        fold, then image_id.

    Raises:
        SplitError: a row lacks its image_id, patient or label, a patient carries two
            labels, a class has fewer patients than splits (or than folds), a `stratify`
            column is missing, `folds` is 1, 2, negative or asked of image mode, or
            (patient mode) a patient ended up in two splits.
    """
    missing = [c for c in ("image_id", "patient", "label") if c not in manifest.columns]
    if missing:
        raise SplitError(f"manifest lacks columns {missing}; rerun `myelomet ingest`")
    for column in ("image_id", "patient", "label"):
        empty = [i + 1 for i, blank in enumerate(manifest[column].isna()) if blank]
        if empty:
            raise SplitError(
                f"manifest data rows {empty[:5]} (counted from 1) have no {column} "
                f"({len(empty)} rows); the manifest was edited or damaged: rerun `myelomet ingest`"
            )
    if mode not in ("patient", "image"):
        raise SplitError(f"split mode {mode!r} unknown; use 'patient' or 'image'")
    if folds and (folds < MIN_FOLDS or mode != "patient"):
        raise SplitError(
            f"split.folds {folds}: cross-validation needs at least {MIN_FOLDS} folds and "
            "split.mode patient; set split.folds: 0 for one split"
        )
    labels_per_patient = manifest.groupby("patient")["label"].nunique()
    mixed = labels_per_patient[labels_per_patient > 1].index.tolist()
    if mixed:
        raise SplitError(f"patients {mixed[:5]} carry more than one label; fix the raw layout")

    frame = _frame(manifest, stratify)
    if mode == "image":
        frame["split"] = _assign(frame, {s: fractions[s] for s in SPLITS}, seed, stratify)
        return frame[SPLIT_COLUMNS]
    patients = _per_patient(frame, stratify)
    need = folds or len(SPLITS)
    small = patients["label"].value_counts()
    small = small[small < need]
    if not small.empty:
        if folds:
            raise SplitError(
                f"classes {small.to_dict()} have fewer than {folds} patients; {folds}-fold "
                "cross-validation tests every patient once and needs a patient per class in "
                f"each fold: set split.folds lower (at least {MIN_FOLDS}) or add patients"
            )
        raise SplitError(
            f"classes {small.to_dict()} have fewer than {len(SPLITS)} patients; "
            "a patient-level split needs at least one patient per class in each split"
        )
    if not folds:
        by_patient = _assign(patients, {s: fractions[s] for s in SPLITS}, seed, stratify)
        frame["split"] = frame["patient"].map(by_patient)
        check_patient_disjoint(frame)
        return frame[SPLIT_COLUMNS]
    test_fold = _assign(patients, dict.fromkeys(range(folds), 1 / folds), seed, stratify, True)
    test_fold = test_fold.astype(int)
    views = []
    for f in range(folds):
        by_patient = pd.Series("train", index=test_fold.index)
        by_patient[test_fold == f] = "test"
        by_patient[test_fold == (f + 1) % folds] = "val"
        view = frame.assign(split=frame["patient"].map(by_patient), **{FOLD_COLUMN: f})
        views.append(view[[*SPLIT_COLUMNS, FOLD_COLUMN]])
    split = pd.concat(views, ignore_index=True)
    check_patient_disjoint(split)
    return split


def check_patient_disjoint(split: pd.DataFrame) -> None:
    """Raise SplitError if any patient has slices in more than one split (of one fold, when
    the split has a `fold` column)."""
    if FOLD_COLUMN in split.columns:
        spread = split.groupby([FOLD_COLUMN, "patient"])["split"].nunique()
        leaking = spread[spread > 1].index.tolist()
        if leaking:
            raise SplitError(
                f"(fold, patient) {leaking[:5]}: patients in more than one split of a fold"
            )
        return
    spread = split.groupby("patient")["split"].nunique()
    leaking = spread[spread > 1].index.tolist()
    if leaking:
        raise SplitError(f"patients {leaking[:5]} appear in more than one split")


def fold_numbers(split: pd.DataFrame) -> list[int]:
    """The folds of a split table, sorted; [] for a single split (no `fold` column)."""
    if FOLD_COLUMN not in split.columns:
        return []
    return sorted(int(f) for f in split[FOLD_COLUMN].dropna().unique())


def fold_view(split: pd.DataFrame, fold: int) -> pd.DataFrame:
    """One fold of a cross-validation split as an ordinary single split.

    Args:
        split: a split table with a `fold` column (`split_manifest` with folds).
        fold: the fold, 0 to k - 1.

    Returns:
        That fold's rows with the columns image_id, patient, label, split, index reset.

    Raises:
        ValueError: the split has no `fold` column, or not this fold.
    """
    if FOLD_COLUMN not in split.columns:
        raise ValueError(
            f"fold {fold} asked of a single split (no {FOLD_COLUMN!r} column); write a "
            "cross-validation split with split.folds >= 3 and `myelomet split`"
        )
    folds = fold_numbers(split)
    if fold not in folds:
        raise ValueError(f"fold {fold} is not in the split; its folds are {folds}")
    return split.loc[split[FOLD_COLUMN] == fold, SPLIT_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class SplitOutcome:
    """Where `write_split` wrote the split, and patients and slices per split and label
    (and per fold first, with cross-validation folds)."""

    path: Path
    mode: str
    table: pd.DataFrame
    folds: int = 0


def write_split(cfg: Config, mode: str | None = None) -> SplitOutcome:
    """Split the ingested manifest (params split) and write the split CSV.

    Args:
        cfg: the configuration.
        mode: `patient` or `image`; params split.mode when None.

    Raises:
        FileNotFoundError: no manifest; ingest first.
        SplitError: the manifest cannot be split as asked (e.g. split.folds with image mode).
    """
    manifest_path = cfg.path(cfg.ingest.out) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest; run `myelomet ingest` first")
    manifest = pd.read_csv(manifest_path)
    mode = mode or cfg.split.mode
    stratify = list(cfg.split.stratify)
    folds = cfg.split.folds
    split = split_manifest(
        manifest, cfg.split.fractions(), cfg.split.seed, mode, stratify, folds=folds
    )
    out = cfg.path(cfg.split.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(out, index=False)
    table = split.merge(manifest[["image_id", *stratify]], on="image_id")
    keys = [FOLD_COLUMN] if folds else []
    table = table.groupby([*keys, "split", "label", *stratify]).agg(
        patients=("patient", "nunique"), slices=("image_id", "size")
    )
    return SplitOutcome(out, mode, table, folds)
