from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.artifacts import MANIFEST_FILE
from components.config import Config, SplitConfig
from components.data.split import (
    FOLD_COLUMN,
    SPLIT_COLUMNS,
    SplitError,
    _frame,
    _per_patient,
    check_patient_disjoint,
    fold_numbers,
    fold_view,
    split_manifest,
    write_split,
)
from myelomet.cli import main

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


def _cv_manifest(seed: int = 0) -> pd.DataFrame:
    """About 30 patients per class, each with a scanner."""
    return _with_scanner(_manifest(31, 29, seed=seed), seed=seed)


def _patients(split: pd.DataFrame) -> pd.DataFrame:
    return split.drop_duplicates([FOLD_COLUMN, "patient"])


@pytest.mark.parametrize("k", [3, 5])
def test_k_fold_tests_and_validates_every_patient_once(k):
    manifest = _cv_manifest()
    split = split_manifest(manifest, FRACTIONS, seed=4, stratify=["manufacturer"], folds=k)
    assert list(split.columns) == [*SPLIT_COLUMNS, FOLD_COLUMN]
    assert len(split) == k * len(manifest)
    assert split[FOLD_COLUMN].dtype.kind == "i"
    ordered = split.sort_values([FOLD_COLUMN, "image_id"], ignore_index=True)
    pd.testing.assert_frame_equal(split, ordered)
    assert fold_numbers(split) == list(range(k))
    check_patient_disjoint(split)
    for _, fold in split.groupby(FOLD_COLUMN):
        assert sorted(fold["image_id"]) == sorted(manifest["image_id"])
        assert fold.groupby("patient")["split"].nunique().max() == 1
    patients = _patients(split)
    per_patient = patients.groupby("patient")["split"].value_counts().unstack(fill_value=0)
    assert len(per_patient) == manifest["patient"].nunique()
    assert (per_patient["test"] == 1).all() and (per_patient["val"] == 1).all()
    assert (per_patient["train"] == k - 2).all()
    # the fold a patient is tested in validates it in the fold before
    test_fold = patients[patients["split"] == "test"].set_index("patient")[FOLD_COLUMN]
    val_fold = patients[patients["split"] == "val"].set_index("patient")[FOLD_COLUMN]
    assert ((val_fold + 1) % k == test_fold.loc[val_fold.index]).all()


@pytest.mark.parametrize("k", [3, 5])
def test_k_fold_is_stratified_by_label_and_scanner(k):
    manifest = _cv_manifest(1)
    split = split_manifest(manifest, FRACTIONS, seed=2, stratify=["manufacturer"], folds=k)
    tested = _patients(split).query("split == 'test'")
    per_label = tested.groupby([FOLD_COLUMN, "label"]).size().unstack()
    assert (per_label.max() - per_label.min()).max() <= 1
    sizes = tested.groupby(FOLD_COLUMN).size()
    assert sizes.max() - sizes.min() <= 1  # the classes' remainders land in different folds
    scanner = manifest.drop_duplicates("patient").set_index("patient")["manufacturer"]
    strata = tested.assign(manufacturer=tested["patient"].map(scanner))
    for key, stratum in strata.groupby(["label", "manufacturer"]):
        counts = stratum[FOLD_COLUMN].value_counts().reindex(range(k), fill_value=0)
        assert counts.max() - counts.min() <= 1, key


def test_k_fold_is_deterministic_and_seed_dependent():
    manifest = _cv_manifest()
    a = split_manifest(manifest, FRACTIONS, seed=5, stratify=["manufacturer"], folds=3)
    shuffled = manifest.sample(frac=1, random_state=2)
    b = split_manifest(shuffled, FRACTIONS, seed=5, stratify=["manufacturer"], folds=3)
    c = split_manifest(manifest, FRACTIONS, seed=6, stratify=["manufacturer"], folds=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_a_fold_view_is_an_ordinary_single_split():
    manifest = _cv_manifest()
    split = split_manifest(manifest, FRACTIONS, seed=1, folds=5)
    view = fold_view(split, 2)
    assert list(view.columns) == SPLIT_COLUMNS
    assert list(view.index) == list(range(len(manifest)))
    assert sorted(view["image_id"]) == sorted(manifest["image_id"])
    check_patient_disjoint(view)
    shares = view.drop_duplicates("patient")["split"].value_counts(normalize=True)
    for name, fraction in SplitConfig(folds=5).view_fractions().items():
        assert abs(shares[name] - fraction) < 0.05, name
    for name, part in view.groupby("split"):
        assert set(part["label"]) == {"MM", "OMBT"}, name


def test_fold_view_and_fold_numbers_of_a_single_split():
    split = split_manifest(_manifest(), FRACTIONS, seed=1)
    assert fold_numbers(split) == []
    with pytest.raises(ValueError, match="single split.*split.folds >= 3"):
        fold_view(split, 0)
    cv = split_manifest(_manifest(), FRACTIONS, seed=1, folds=3)
    with pytest.raises(ValueError, match=r"fold 3 is not in the split; its folds are \[0, 1, 2\]"):
        fold_view(cv, 3)


def test_no_folds_is_the_single_split():
    manifest = _with_scanner(_manifest())
    for stratify in ([], ["manufacturer"]):
        pd.testing.assert_frame_equal(
            split_manifest(manifest, FRACTIONS, seed=3, stratify=stratify, folds=0),
            split_manifest(manifest, FRACTIONS, seed=3, stratify=stratify),
        )


# The split of test_a_single_split_is_pinned's manifest by the code before k-fold existed.
PINNED = {
    **dict.fromkeys(["pt-MM0", "pt-MM1", "pt-MM2", "pt-MM4", "pt-OMBT1", "pt-OMBT2"], "train"),
    **dict.fromkeys(["pt-OMBT4", "pt-OMBT5"], "train"),
    **dict.fromkeys(["pt-MM5", "pt-OMBT3", "pt-OMBT6"], "val"),
    **dict.fromkeys(["pt-MM3", "pt-OMBT0"], "test"),
}


def test_a_single_split_is_pinned():
    """Generalising the allocation to folds changed no single split."""
    split = split_manifest(_with_scanner(_manifest(6, 7)), FRACTIONS, 3, stratify=["manufacturer"])
    by_patient = split.drop_duplicates("patient").set_index("patient")["split"]
    assert by_patient.to_dict() == PINNED


def test_too_few_patients_per_class_for_the_folds_says_what_to_do():
    with pytest.raises(SplitError, match=r"\{'MM': 4\} have fewer than 5 patients.*folds lower"):
        split_manifest(_manifest(4, 10), FRACTIONS, seed=0, folds=5)
    assert fold_numbers(split_manifest(_manifest(3, 3), FRACTIONS, seed=0, folds=3)) == [0, 1, 2]


@pytest.mark.parametrize(("folds", "mode"), [(1, "patient"), (2, "patient"), (-3, "patient"),
                                             (3, "image")])  # fmt: skip
def test_folds_below_three_or_of_image_mode_are_rejected(folds, mode):
    with pytest.raises(SplitError, match="at least 3 folds and split.mode patient"):
        split_manifest(_manifest(), FRACTIONS, seed=0, mode=mode, folds=folds)


def _config(tmp_path: Path, **split: object) -> Config:
    """A config whose ingest output holds a manifest of 31 and 29 patients with scanners."""
    (tmp_path / "processed").mkdir(parents=True)
    _cv_manifest().to_csv(tmp_path / "processed" / MANIFEST_FILE, index=False)
    return Config(
        root=tmp_path,
        ingest={"out": "processed"},
        split={"out": "splits/split.csv", "stratify": ["manufacturer"], **split},
    )


def test_write_split_writes_the_folds_and_tabulates_each(tmp_path):
    outcome = write_split(_config(tmp_path, folds=5))
    split = pd.read_csv(outcome.path)
    assert (outcome.mode, outcome.folds) == ("patient", 5)
    assert fold_numbers(split) == list(range(5))
    assert list(split.columns) == [*SPLIT_COLUMNS, FOLD_COLUMN]
    assert outcome.table.index.names == [FOLD_COLUMN, "split", "label", "manufacturer"]
    patients = outcome.table.groupby([FOLD_COLUMN, "split"])["patients"].sum().unstack()
    assert (patients["test"] == 12).all() and (patients["val"] == 12).all()
    image = _config(tmp_path / "image", folds=3)
    with pytest.raises(SplitError, match="split.mode patient"):
        write_split(image, "image")
    assert not image.path(image.split.out).exists()


def test_write_split_without_folds_writes_the_single_split(tmp_path):
    outcome = write_split(_config(tmp_path))
    assert outcome.folds == 0
    assert list(pd.read_csv(outcome.path).columns) == SPLIT_COLUMNS
    assert outcome.table.index.names == ["split", "label", "manufacturer"]


def test_a_manifest_row_without_a_label_is_one_line_from_the_split_command(tmp_path, capsys):
    manifest = _cv_manifest()
    manifest.loc[[3, 10], "label"] = np.nan
    (tmp_path / "processed").mkdir()
    manifest.to_csv(tmp_path / "processed" / MANIFEST_FILE, index=False)
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  out: processed\nsplit:\n  out: splits/split.csv\n")

    code = main(["--params", str(params), "split"])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "rows [4, 11] (counted from 1) have no label (2 rows)" in err
    assert not (tmp_path / "splits" / "split.csv").exists()
