import numpy as np
import pandas as pd
import pytest

from components.data.split import (
    SplitError,
    _frame,
    _per_patient,
    check_patient_disjoint,
    split_manifest,
)

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


def _with_scanner(manifest: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A scanner per patient, drawn independently of the label."""
    rng = np.random.default_rng(seed)
    patients = manifest["patient"].unique()
    drawn = rng.choice(["Philips", "SIEMENS", "GE"], len(patients))
    scanner = dict(zip(patients, drawn, strict=True))
    return manifest.assign(manufacturer=manifest["patient"].map(scanner))


def _shares_within_one(units: pd.DataFrame, keys: list[str]) -> None:
    """Every stratum is shared out in FRACTIONS to within one unit."""
    for key, stratum in units.groupby(keys):
        counts = stratum["split"].value_counts()
        for name, fraction in FRACTIONS.items():
            assert abs(counts.get(name, 0) - fraction * len(stratum)) < 1, (key, name)


def test_patient_split_shares_out_every_scanner_of_every_class():
    manifest = _with_scanner(_manifest(40, 44))
    split = split_manifest(manifest, FRACTIONS, seed=3, stratify=["manufacturer"])
    assert list(split.columns) == ["image_id", "patient", "label", "split"]
    check_patient_disjoint(split)
    patients = split.drop_duplicates("patient").merge(
        manifest.drop_duplicates("patient")[["patient", "manufacturer"]]
    )
    _shares_within_one(patients, ["label", "manufacturer"])
    _shares_within_one(patients, ["label"])
    unstratified = split_manifest(manifest, FRACTIONS, seed=3)
    assert not unstratified["split"].equals(split["split"])


def test_image_split_shares_out_every_scanner_of_every_class():
    manifest = _with_scanner(_manifest())
    split = split_manifest(manifest, FRACTIONS, seed=1, mode="image", stratify=["manufacturer"])
    slices = split.merge(manifest[["image_id", "manufacturer"]])
    _shares_within_one(slices, ["label", "manufacturer"])


def test_a_patient_counts_under_the_scanner_of_most_of_its_slices():
    manifest = _with_scanner(_manifest(6, 6))
    first = manifest["patient"].iloc[0]
    rows = manifest.index[manifest["patient"] == first]
    manifest.loc[rows, "manufacturer"] = "GE"
    manifest.loc[rows[:1], "manufacturer"] = None  # a slice without the tag, outvoted
    solo = manifest.loc[rows[:1]].assign(patient="pt-solo", image_id="im-solo")
    manifest = pd.concat([manifest, solo], ignore_index=True)  # its only slice lacks the tag
    patients = _per_patient(_frame(manifest, ["manufacturer"]), ["manufacturer"])
    assert patients.loc[first, "manufacturer"] == "GE"
    assert patients.loc["pt-solo", "manufacturer"] == "missing"
    assert len(patients) == manifest["patient"].nunique()
    split = split_manifest(manifest, FRACTIONS, seed=0, stratify=["manufacturer"])
    assert split.set_index("image_id").loc["im-solo", "split"] in FRACTIONS


def test_stratifying_by_a_column_the_manifest_lacks_says_what_to_do():
    hint = r"split.stratify names \['kernel'\].*or set split.stratify: \[\]"
    with pytest.raises(SplitError, match=hint):
        split_manifest(_manifest(), FRACTIONS, seed=0, stratify=["kernel"])
