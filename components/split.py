"""Train/validation/test split of the manifest.

`patient` mode keeps every slice of a patient in one split, stratified by label: what a
study must do. `image` mode reproduces the paper's random split of slices, which puts the
same patient in train and test; it exists only to measure that leakage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

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


def _assign(units: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """Assign each unit (row) a split, stratified by its label."""
    rng = np.random.default_rng(seed)
    assigned = pd.Series(index=units.index, dtype=object)
    for label in sorted(units["label"].unique()):
        idx = units.index[units["label"] == label].to_numpy()
        idx = idx[rng.permutation(len(idx))]
        counts = _allocate(len(idx), fractions)
        start = 0
        for s in SPLITS:
            assigned.loc[idx[start : start + counts[s]]] = s
            start += counts[s]
    return assigned


def split_manifest(
    manifest: pd.DataFrame, fractions: Mapping[str, float], seed: int, mode: str = "patient"
) -> pd.DataFrame:
    """Assign every manifest row to train, val or test.

    Args:
        manifest: one row per slice with columns image_id, patient, label.
        fractions: share of train, val and test (of patients in patient mode, of slices in
            image mode), summing to 1.
        seed: makes the split reproducible.
        mode: "patient" (stratified by label, no patient in two splits) or "image".

    Returns:
        The columns image_id, patient, label, split, sorted by image_id.

    Raises:
        SplitError: a patient carries two labels, a class has fewer patients than splits,
            or (patient mode) a patient ended up in two splits.
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

    frame = (
        manifest[["image_id", "patient", "label"]].sort_values("image_id").reset_index(drop=True)
    )
    if mode == "image":
        frame["split"] = _assign(frame, fractions, seed)
    else:
        patients = frame.drop_duplicates("patient")[["patient", "label"]].sort_values("patient")
        small = patients["label"].value_counts()
        small = small[small < len(SPLITS)]
        if not small.empty:
            raise SplitError(
                f"classes {small.to_dict()} have fewer than {len(SPLITS)} patients; "
                "a patient-level split needs at least one patient per class in each split"
            )
        patients = patients.set_index("patient")
        by_patient = _assign(patients.reset_index(drop=True), fractions, seed)
        by_patient.index = patients.index
        frame["split"] = frame["patient"].map(by_patient)
        check_patient_disjoint(frame)
    return frame[SPLIT_COLUMNS]


def check_patient_disjoint(split: pd.DataFrame) -> None:
    """Raise SplitError if any patient has slices in more than one split."""
    spread = split.groupby("patient")["split"].nunique()
    leaking = spread[spread > 1].index.tolist()
    if leaking:
        raise SplitError(f"patients {leaking[:5]} appear in more than one split")
