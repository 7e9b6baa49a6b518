import numpy as np
import pandas as pd
import pytest

from components.split import SplitError, check_patient_disjoint, split_manifest

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _manifest(n_mm: int = 12, n_ombt: int = 15, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in (("MM", n_mm), ("OMBT", n_ombt)):
        for p in range(n):
            for s in range(rng.integers(3, 9)):
                rows.append(
                    {
                        "image_id": f"im-{label}{p:02d}{s:02d}",
                        "patient": f"pt-{label}{p}",
                        "label": label,
                    }
                )
    return pd.DataFrame(rows)


def test_patient_split_keeps_each_patient_in_one_split():
    split = split_manifest(_manifest(), FRACTIONS, seed=1)
    assert list(split.columns) == ["image_id", "patient", "label", "split"]
    assert split.groupby("patient")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}


def test_patient_split_is_stratified_within_five_points():
    manifest = _manifest(30, 34)
    split = split_manifest(manifest, FRACTIONS, seed=3)
    patients = split.drop_duplicates("patient")
    whole = (patients["label"] == "MM").mean()
    for name, part in patients.groupby("split"):
        assert abs((part["label"] == "MM").mean() - whole) <= 0.05, name
        assert abs(len(part) / len(patients) - FRACTIONS[name]) <= 0.05, name


def test_patient_split_is_deterministic_and_seed_dependent():
    manifest = _manifest()
    a = split_manifest(manifest, FRACTIONS, seed=5)
    b = split_manifest(manifest.sample(frac=1, random_state=2), FRACTIONS, seed=5)
    c = split_manifest(manifest, FRACTIONS, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_image_split_leaks_patients_across_splits():
    split = split_manifest(_manifest(), FRACTIONS, seed=1, mode="image")
    assert split.groupby("patient")["split"].nunique().max() > 1
    with pytest.raises(SplitError, match="more than one split"):
        check_patient_disjoint(split)
    counts = split["split"].value_counts(normalize=True)
    assert abs(counts["train"] - 0.6) < 0.05


def test_too_few_patients_per_class_is_a_clear_error():
    with pytest.raises(SplitError, match="fewer than 3 patients"):
        split_manifest(_manifest(2, 10), FRACTIONS, seed=0)


def test_patient_with_two_labels_is_rejected():
    manifest = _manifest()
    manifest.loc[0, "label"] = "OMBT" if manifest.loc[0, "label"] == "MM" else "MM"
    with pytest.raises(SplitError, match="more than one label"):
        split_manifest(manifest, FRACTIONS, seed=0)
