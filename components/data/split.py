"""Train/validation/test split of the manifest.

`patient` mode keeps every slice of a patient in one split, stratified by label and by the
manifest columns of `split.stratify` (the scanner, say): what a study must do. Within a
stratum assignment is random, so a chance imbalance of scanners between the classes of one
split cannot become a shortcut that flips on the next. `image` mode reproduces the paper's
random split of slices, which puts the same patient in train and test; it exists only to
measure that leakage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts import MANIFEST_FILE
from components.config import Config

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["image_id", "patient", "label", "split"]


class SplitError(ValueError):
    """The manifest cannot be split as asked."""


def _allocate(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Share n items among the splits by largest remainder, at least one each when n allows."""
    raw = {s: n * fractions[s] for s in SPLITS}
    counts = {s: int(np.floor(v)) for s, v in raw.items()}
    for s in sorted(SPLITS, key=lambda s: raw[s] - counts[s], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[s] += 1
    if n >= len(SPLITS):
        for s in SPLITS:
            while counts[s] == 0:
                donor = max(SPLITS, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[s] += 1
    return counts


def _deal(counts: Mapping[str, int]) -> list[str]:
    """The splits of n ordered units, each prefix shared out as close to `counts` as whole
    units allow (the split furthest behind its share takes the next unit); exactly `counts`
    in all."""
    n = sum(counts.values())
    taken = dict.fromkeys(SPLITS, 0)
    order = []
    for i in range(1, n + 1):
        s = max(SPLITS, key=lambda s: i * counts[s] / n - taken[s])
        taken[s] += 1
        order.append(s)
    return order


def _assign(
    units: pd.DataFrame, fractions: Mapping[str, float], seed: int, stratify: Sequence[str]
) -> pd.Series:
    """Assign each unit (row) a split, stratified by its label and its `stratify` columns:
    per label, units in random order within each stratum, strata one after another, dealt
    so that every stratum is shared out in the fractions."""
    rng = np.random.default_rng(seed)
    assigned = pd.Series(index=units.index, dtype=object)
    for label in sorted(units["label"].unique()):
        group = units[units["label"] == label]
        shuffled = group.iloc[rng.permutation(len(group))]
        if stratify:
            strata = shuffled[list(stratify)].astype(str).agg("|".join, axis=1).to_numpy()
            shuffled = shuffled.iloc[np.argsort(strata, kind="stable")]
        assigned.loc[shuffled.index] = _deal(_allocate(len(shuffled), fractions))
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
) -> pd.DataFrame:
    """Assign every manifest row to train, val or test.

    Args:
        manifest: one row per slice with columns image_id, patient, label.
        fractions: share of train, val and test (of patients in patient mode, of slices in
            image mode), summing to 1.
        seed: makes the split reproducible.
        mode: "patient" (stratified, no patient in two splits) or "image".
        stratify: manifest columns to stratify by besides the label (a patient counts
            under its most frequent value; in image mode each slice under its own).

    Returns:
        The columns image_id, patient, label, split, sorted by image_id.

    Raises:
        SplitError: a patient carries two labels, a class has fewer patients than splits,
            a `stratify` column is missing, or (patient mode) a patient ended up in two
            splits.
    """
    missing = [c for c in ("image_id", "patient", "label") if c not in manifest.columns]
    if missing:
        raise SplitError(f"manifest lacks columns {missing}; rerun `myelomet ingest`")
    if mode not in ("patient", "image"):
        raise SplitError(f"split mode {mode!r} unknown; use 'patient' or 'image'")
    labels_per_patient = manifest.groupby("patient")["label"].nunique()
    mixed = labels_per_patient[labels_per_patient > 1].index.tolist()
    if mixed:
        raise SplitError(f"patients {mixed[:5]} carry more than one label; fix the raw layout")

    frame = _frame(manifest, stratify)
    if mode == "image":
        frame["split"] = _assign(frame, fractions, seed, stratify)
    else:
        patients = _per_patient(frame, stratify)
        small = patients["label"].value_counts()
        small = small[small < len(SPLITS)]
        if not small.empty:
            raise SplitError(
                f"classes {small.to_dict()} have fewer than {len(SPLITS)} patients; "
                "a patient-level split needs at least one patient per class in each split"
            )
        by_patient = _assign(patients, fractions, seed, stratify)
        frame["split"] = frame["patient"].map(by_patient)
        check_patient_disjoint(frame)
    return frame[SPLIT_COLUMNS]


def check_patient_disjoint(split: pd.DataFrame) -> None:
    """Raise SplitError if any patient has slices in more than one split."""
    spread = split.groupby("patient")["split"].nunique()
    leaking = spread[spread > 1].index.tolist()
    if leaking:
        raise SplitError(f"patients {leaking[:5]} appear in more than one split")


@dataclass(frozen=True)
class SplitOutcome:
    """Where `write_split` wrote the split, and patients and slices per split and label."""

    path: Path
    mode: str
    table: pd.DataFrame


def write_split(cfg: Config, mode: str | None = None) -> SplitOutcome:
    """Split the ingested manifest (params split) and write the split CSV.

    Args:
        cfg: the configuration.
        mode: `patient` or `image`; params split.mode when None.

    Raises:
        FileNotFoundError: no manifest; ingest first.
    """
    manifest_path = cfg.path(cfg.ingest.out) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest; run `myelomet ingest` first")
    manifest = pd.read_csv(manifest_path)
    mode = mode or cfg.split.mode
    stratify = list(cfg.split.stratify)
    split = split_manifest(manifest, cfg.split.fractions(), cfg.split.seed, mode, stratify)
    out = cfg.path(cfg.split.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(out, index=False)
    table = split.merge(manifest[["image_id", *stratify]], on="image_id")
    table = table.groupby(["split", "label", *stratify]).agg(
        patients=("patient", "nunique"), slices=("image_id", "size")
    )
    return SplitOutcome(out, mode, table)
