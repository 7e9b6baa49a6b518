"""The Great Expectations suites: a good tiny dataset passes, each planted fault fails
naming its expectation, and the results page lists every suite with its result."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.checks.phi import ExpectNoPhiColumns
from components.checks.results import ValidationReport
from components.checks.runner import run_validation
from components.checks.suites import SUITES, manifest_suite, pixel_suite, split_suite
from components.checks.summaries import (
    failure_message,
    markdown_table,
    success_line,
    summary,
    write_summary,
)
from components.checks.tables import pixel_stats
from components.config import SplitConfig, ValidationConfig
from components.data.deid import pseudonym
from components.data.dicom_attributes import KERNEL_PREFIX, SCANNER_PREFIX
from components.data.split import FOLD_COLUMN, split_manifest
from tests.offline_html import assert_offline, remote_loads

CLASSES = ("MM", "OMBT")
KEY = b"a test key of at least sixteen bytes"
SIZE = 64
PATIENTS_PER_CLASS = 5
SLICES_PER_PATIENT = 3
# Per class: 3 patients in train, 1 in val, 1 in test -> exactly the 0.6/0.2/0.2 fractions.
SPLIT_OF_RANK = ("train", "train", "train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """Paths of a tiny dataset laid out as ingest and split write it."""

    manifest: Path
    split: Path

    @property
    def root(self) -> Path:
        return self.manifest.parent

    def read(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return pd.read_csv(self.manifest), pd.read_csv(self.split)


def ct_slice(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A plausible axial CT slice in HU: air, a soft-tissue body, a vertebra-like bone ring."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    hu = np.full((size, size), -1000.0)
    hu[r < size * 0.42] = 40.0
    hu[(r > size * 0.12) & (r < size * 0.2)] = 700.0
    hu += rng.normal(0, 15, hu.shape)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def write_dataset(root: Path, seed: int = 0) -> Dataset:
    """Write manifest.csv, slices/*.npy and split.csv of a good patient-level dataset.

    Args:
        root: folder to write into; the manifest goes to root/processed, the split to
            root/splits.
        seed: seeds the pixel noise and the pseudonyms.

    Returns:
        The paths of manifest.csv and split.csv.
    """
    rng = np.random.default_rng(seed)
    processed = root / "processed"
    (processed / "slices").mkdir(parents=True, exist_ok=True)
    manifest_rows, split_rows = [], []
    for label in CLASSES:
        for rank in range(PATIENTS_PER_CLASS):
            patient = f"pt-{rng.integers(16**12):012x}"
            for k in range(SLICES_PER_PATIENT):
                image_id = f"im-{rng.integers(16**12):012x}"
                hu = ct_slice(rng)
                file = f"slices/{image_id}.npy"
                np.save(processed / file, hu)
                manifest_rows.append(
                    {
                        "image_id": image_id,
                        "patient": patient,
                        "label": label,
                        "hu_min": int(hu.min()),
                        "hu_max": int(hu.max()),
                        "file": file,
                        "frame": k,
                        "modality": "CT",
                        "rows": SIZE,
                        "columns": SIZE,
                        "pixel_spacing_row": 0.7,
                        "pixel_spacing_col": 0.7,
                        "slice_thickness": 1.25,
                        "manufacturer": "Siemens",
                        "model": pseudonym(KEY, "siemens/scan 64", SCANNER_PREFIX),
                        "kernel": pseudonym(KEY, "b70f", KERNEL_PREFIX),
                        "body_part": "",
                        "kvp": 120,
                        "rescale_slope": 1.0,
                        "rescale_intercept": -1024.0,
                        "transfer_syntax": "1.2.840.10008.1.2.1",
                        "photometric": "MONOCHROME2",
                        "burned_in_annotation": "NO",
                    }
                )
                split_rows.append(
                    {
                        "image_id": image_id,
                        "patient": patient,
                        "label": label,
                        "split": SPLIT_OF_RANK[rank],
                    }
                )
    manifest_path = processed / "manifest.csv"
    pd.DataFrame(manifest_rows).to_csv(manifest_path, index=False)
    split_path = root / "splits" / "split.csv"
    split_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(split_rows).to_csv(split_path, index=False)
    return Dataset(manifest=manifest_path, split=split_path)


def validate(
    manifest: pd.DataFrame,
    split: pd.DataFrame,
    root: Path,
    docs: Path,
    mode: str = "patient",
) -> ValidationReport:
    """Run every suite with the default thresholds and split params."""
    cfg = ValidationConfig()
    pixels = pixel_stats(manifest, root, cfg.bone_hu, progress=False)
    fractions = SplitConfig(mode=mode).fractions()
    return run_validation(manifest, split, pixels, cfg, CLASSES, fractions, mode, docs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def good_report(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> ValidationReport:
    manifest, split = dataset.read()
    return validate(manifest, split, dataset.root, tmp_path_factory.mktemp("docs") / "site")


def test_good_dataset_passes_every_suite(good_report):
    assert [s.name for s in good_report.suites] == list(SUITES)
    assert good_report.success, failure_message(good_report)
    assert all(s.evaluated >= 5 for s in good_report.suites)
    assert failure_message(good_report) == ""
    line = success_line(good_report)
    assert "\n" not in line
    assert "passed" in line


def test_the_results_page_lists_each_suite_and_needs_no_internet(good_report):
    index = good_report.docs_index
    assert index.name == "index.html" and [p.name for p in index.parent.iterdir()] == [index.name]
    page = index.read_text()
    for name in SUITES:
        assert f'<h2 id="{name}">{name}: <span class="passed">passed</span></h2>' in page
    checks = [e.check for s in good_report.suites for e in s.expectations]
    assert all(f"<td>{check}</td>" in page for check in checks)
    assert "FAILED" not in page
    assert_offline(page)


def _patient_in_two_splits(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    first_train = split.index[split["split"] == "train"][0]
    split.loc[first_train, "split"] = "test"


def _unknown_label(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest.loc[0, "label"] = "LYMPHOMA"
    split.loc[split["image_id"] == manifest.loc[0, "image_id"], "label"] = "LYMPHOMA"


def _mr_row(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest.loc[2, "modality"] = "MR"


def _constant_image(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    np.save(root / manifest.loc[4, "file"], np.full((SIZE, SIZE), 40, dtype=np.int16))


def _patient_name_column(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest["PatientName"] = "DOE^JANE"


def _patient_id_column(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest["patient_id"] = "MRN0012345"


def _burned_in_annotation(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest.loc[5, "burned_in_annotation"] = "YES"


def _header_text_as_model(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest.loc[3, "model"] = "Doe Jane 1951-03-12"


def _vendor_out_of_vocabulary(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    manifest.loc[3, "manufacturer"] = "St Example General"


def _split_without_one_class(manifest: pd.DataFrame, split: pd.DataFrame, root: Path) -> None:
    split.loc[(split["split"] == "val") & (split["label"] == "OMBT"), "split"] = "train"


FAULTS: dict[str, tuple[Callable[[pd.DataFrame, pd.DataFrame, Path], None], str]] = {
    "patient in two splits": (_patient_in_two_splits, "split.patient_in_one_split"),
    "unknown label": (_unknown_label, "manifest.label_in_classes"),
    "MR row": (_mr_row, "manifest.modality_ct"),
    "constant image": (_constant_image, "pixels.image_not_constant"),
    "PHI column PatientName": (_patient_name_column, "manifest.no_phi_columns"),
    "PHI column patient_id": (_patient_id_column, "manifest.no_phi_columns"),
    "split without one class": (_split_without_one_class, "split.split_has_all_classes"),
    "burned-in annotation": (_burned_in_annotation, "manifest.no_burned_in_annotation"),
    "header text as model": (_header_text_as_model, "manifest.acquisition_pseudonymised"),
    "vendor out of vocabulary": (_vendor_out_of_vocabulary, "manifest.vendor_in_vocabulary"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_planted_fault_fails_naming_its_expectation(tmp_path, fault, caplog):
    plant, check = FAULTS[fault]
    dataset = write_dataset(tmp_path / "data")
    manifest, split = dataset.read()
    plant(manifest, split, dataset.root)
    with caplog.at_level(logging.ERROR):
        report = validate(manifest, split, dataset.root, tmp_path / "docs")

    assert not report.success
    assert check in report.failed_checks()
    suite_name, check_name = check.split(".")
    assert not report.suite(suite_name).success
    message = failure_message(report)
    assert check in message
    failed = next(e for e in report.suite(suite_name).failed if e.check == check_name)
    if failed.unexpected_count:
        # row-level faults show the offending rows by image_id
        assert f"image_id={failed.examples[0]['image_id']}" in message
    page = report.docs_index.read_text()
    assert '<span class="failed">FAILED</span></h2>' in page and f"<td>{check_name}</td>" in page
    assert not [r for r in caplog.records if "data docs rendering" in r.getMessage()]


def test_failure_message_names_offending_rows(tmp_path):
    dataset = write_dataset(tmp_path / "data")
    manifest, split = dataset.read()
    _mr_row(manifest, split, dataset.root)
    report = validate(manifest, split, dataset.root, tmp_path / "docs")
    message = failure_message(report)
    assert report.failed_checks() == {"manifest.modality_ct"}
    assert len(message.splitlines()) == 2
    assert f"image_id={manifest.loc[2, 'image_id']}" in message
    assert "modality=MR" in message
    assert "1 of 30 rows" in message


def test_missing_slice_file_and_missing_column_are_reported_not_raised(tmp_path):
    dataset = write_dataset(tmp_path / "data")
    manifest, split = dataset.read()
    (dataset.root / manifest.loc[1, "file"]).unlink()
    manifest = manifest.drop(columns="slice_thickness")
    report = validate(manifest, split, dataset.root, tmp_path / "docs")
    failed = report.failed_checks()
    assert "pixels.slice_readable" in failed
    assert "manifest.has_column" in failed
    message = failure_message(report)
    assert "[slice_thickness]" in message
    assert "column missing" in message


def test_image_mode_allows_a_patient_in_two_splits(tmp_path):
    dataset = write_dataset(tmp_path / "data")
    manifest, split = dataset.read()
    _patient_in_two_splits(manifest, split, dataset.root)
    report = validate(manifest, split, dataset.root, tmp_path / "docs", mode="image")
    assert "split.patient_in_one_split" not in report.failed_checks()
    assert "patient_in_one_split" not in {e.check for e in report.suite("split").expectations}


def test_manifest_image_missing_from_split_fails(tmp_path):
    dataset = write_dataset(tmp_path / "data")
    manifest, split = dataset.read()
    missing = split.loc[0, "image_id"]
    report = validate(manifest, split.drop(index=0), dataset.root, tmp_path / "docs")
    assert "split.image_in_split" in report.failed_checks()
    assert f"image_id={missing}" in failure_message(report)


def test_summary_is_flat_numbers_for_dvc_metrics(good_report, tmp_path):
    path = write_summary(good_report, tmp_path / "reports" / "validation.json")
    data = json.loads(path.read_text())
    assert data == summary(good_report)
    assert data["success"] == 1
    assert data["failed"] == 0
    for name in SUITES:
        assert data[name]["success"] == 1
        assert data[name]["failed"] == 0
        assert data[name]["evaluated"] > 0
    assert all(
        isinstance(v, int)
        for section in data.values()
        if isinstance(section, dict)
        for v in section.values()
    )


def test_markdown_table_has_a_row_per_expectation(good_report):
    table = markdown_table(good_report)
    n = sum(s.evaluated for s in good_report.suites)
    assert table.count("| passed |") == n + len(SUITES)
    assert "FAILED" not in table


def test_docs_folder_holding_other_files_is_not_wiped(tmp_path, dataset):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    manifest, split = dataset.read()
    with pytest.raises(FileExistsError, match="docs_out"):
        validate(manifest, split, dataset.root, docs)
    assert (docs / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("mode", "folds"), [("patient", 0), ("image", 0), ("patient", 5)])
def test_every_expectation_is_named_and_described(mode, folds):
    cfg = ValidationConfig()
    fractions = SplitConfig(mode=mode, folds=folds).view_fractions()
    suites = [
        manifest_suite(cfg, CLASSES),
        pixel_suite(cfg),
        split_suite(cfg, CLASSES, fractions, mode, folds),
    ]
    for suite in suites:
        for expectation in suite.expectations:
            assert expectation.meta["check"]
            assert expectation.description
    phi = [e for e in suites[0].expectations if isinstance(e, ExpectNoPhiColumns)]
    assert len(phi) == 1


def test_the_offline_check_sees_what_a_page_would_fetch():
    assert remote_loads('<script src="https://cdn.example/x.js"></script>')
    assert remote_loads("<link rel=stylesheet href='//cdn.example/x.css'>")
    assert remote_loads("<style>@import url(https://fonts.example/f.css);</style>")
    assert not remote_loads('<a href="https://mlflow.org">MLflow</a><img src="data:image/png;x">')


# Cross-validation: the split of write_dataset's manifest into FOLDS patient-grouped folds.
FOLDS = 3


def cv_split(manifest: pd.DataFrame, folds: int = FOLDS) -> pd.DataFrame:
    """A valid cross-validation split of the manifest, as `myelomet split` writes it."""
    return split_manifest(manifest, SplitConfig().fractions(), seed=0, folds=folds)


def validate_cv(
    manifest: pd.DataFrame, split: pd.DataFrame, root: Path, docs: Path, folds: int = FOLDS
) -> ValidationReport:
    """Run every suite with the default thresholds on a `folds`-fold split."""
    cfg = ValidationConfig()
    pixels = pixel_stats(manifest, root, cfg.bone_hu, progress=False)
    fractions = SplitConfig(folds=folds).view_fractions()
    return run_validation(
        manifest, split, pixels, cfg, CLASSES, fractions, "patient", docs, folds=folds
    )


def _rows(split: pd.DataFrame, fold: int, patient: str) -> pd.Series:
    return (split[FOLD_COLUMN] == fold) & (split["patient"] == patient)


def _tested_twice(split: pd.DataFrame) -> pd.DataFrame:
    patient, fold = split.loc[split["split"] == "train", ["patient", FOLD_COLUMN]].iloc[0]
    split.loc[_rows(split, fold, patient), "split"] = "test"
    return split


def _dropped_from_one_fold(split: pd.DataFrame) -> pd.DataFrame:
    return split.drop(index=split.index[split[FOLD_COLUMN] == 1][0])


def _duplicated_in_a_fold(split: pd.DataFrame) -> pd.DataFrame:
    row = split[split[FOLD_COLUMN] == 2].iloc[[0]].assign(split="val")
    return pd.concat([split, row], ignore_index=True)


def _missing_from_every_fold(split: pd.DataFrame) -> pd.DataFrame:
    return split[split["image_id"] != split["image_id"].iloc[0]]


def _two_splits_in_a_fold(split: pd.DataFrame) -> pd.DataFrame:
    first = split.index[(split[FOLD_COLUMN] == 0) & (split["split"] == "train")][0]
    split.loc[first, "split"] = "val"
    return split


def _fold_without_one_class(split: pd.DataFrame) -> pd.DataFrame:
    rows = (split[FOLD_COLUMN] == 1) & (split["split"] == "val") & (split["label"] == "OMBT")
    split.loc[rows, "split"] = "train"
    return split


def _fold_out_of_range(split: pd.DataFrame) -> pd.DataFrame:
    return split.assign(**{FOLD_COLUMN: split[FOLD_COLUMN].replace(2, 7)})


CV_FAULTS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    "patient tested in two folds": (_tested_twice, "split.patient_tested_once"),
    "image dropped from one fold": (_dropped_from_one_fold, "split.image_in_every_fold"),
    "image twice in a fold": (_duplicated_in_a_fold, "split.image_in_one_split"),
    "image in no fold": (_missing_from_every_fold, "split.image_in_split"),
    "patient in two splits of a fold": (_two_splits_in_a_fold, "split.patient_in_one_split"),
    "fold split without one class": (_fold_without_one_class, "split.split_has_all_classes"),
    "fold out of range": (_fold_out_of_range, "split.fold_name"),
}


@pytest.fixture(scope="module")
def cv_report(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> ValidationReport:
    manifest, _ = dataset.read()
    split = cv_split(manifest)
    return validate_cv(manifest, split, dataset.root, tmp_path_factory.mktemp("docs") / "cv")


def test_a_valid_k_fold_split_passes_every_suite(cv_report):
    assert cv_report.success, failure_message(cv_report)
    checks = {e.check for e in cv_report.suite("split").expectations}
    assert {"patient_tested_once", "image_in_every_fold", "fold_name"} <= checks
    per_fold = [
        e for e in cv_report.suite("split").expectations if e.check == "split_has_all_classes"
    ]
    assert len(per_fold) == FOLDS * 3


def test_a_k_fold_split_fails_the_single_split_suite(dataset, tmp_path):
    manifest, _ = dataset.read()
    report = validate(manifest, cv_split(manifest), dataset.root, tmp_path / "docs")
    assert "split.image_in_one_split" in report.failed_checks()


def test_a_single_split_fails_the_k_fold_suite(dataset, tmp_path):
    manifest, split = dataset.read()
    report = validate_cv(manifest, split, dataset.root, tmp_path / "docs")
    assert {"split.has_column", "split.image_in_every_fold"} <= report.failed_checks()
    assert f"[{FOLD_COLUMN}]: expected column {FOLD_COLUMN}" in failure_message(report)


@pytest.mark.parametrize("fault", CV_FAULTS)
def test_each_planted_k_fold_fault_fails_naming_its_expectation(dataset, tmp_path, fault):
    tamper, check = CV_FAULTS[fault]
    manifest, _ = dataset.read()
    split = tamper(cv_split(manifest))
    report = validate_cv(manifest, split, dataset.root, tmp_path / "docs")

    assert check in report.failed_checks()
    message = failure_message(report)
    assert check in message
    failed = next(e for e in report.suite("split").failed if e.check == check.split(".")[1])
    if failed.unexpected_count:
        assert f"image_id={failed.examples[0]['image_id']}" in message


def test_a_patient_tested_twice_is_named_with_its_folds(dataset, tmp_path):
    manifest, _ = dataset.read()
    split = _tested_twice(cv_split(manifest))
    report = validate_cv(manifest, split, dataset.root, tmp_path / "docs")
    assert "split.patient_tested_once" in report.failed_checks()
    patient = split.loc[split["split"] == "test"].groupby("patient")[FOLD_COLUMN].nunique()
    twice = patient[patient == 2].index[0]
    message = failure_message(report)
    assert f"patient={twice}" in message and "fold=" in message
    assert "patient_test_folds" in message


def test_an_image_dropped_from_one_fold_is_named(dataset, tmp_path):
    manifest, _ = dataset.read()
    split = cv_split(manifest)
    dropped = split.loc[split[FOLD_COLUMN] == 1, "image_id"].iloc[0]
    report = validate_cv(manifest, _dropped_from_one_fold(split), dataset.root, tmp_path / "d")
    assert report.failed_checks() == {"split.image_in_every_fold"}
    failed = report.suite("split").failed[0]
    assert failed.unexpected_count == FOLDS - 1  # the image's rows of the two other folds
    assert {x["image_id"] for x in failed.examples} == {dropped}


def test_an_image_twice_in_a_fold_is_named(dataset, tmp_path):
    manifest, _ = dataset.read()
    split = _duplicated_in_a_fold(cv_split(manifest))
    report = validate_cv(manifest, split, dataset.root, tmp_path / "docs")
    assert "split.image_in_one_split" in report.failed_checks()
    failed = next(e for e in report.suite("split").failed if e.check == "image_in_one_split")
    assert failed.column == f"image_id,{FOLD_COLUMN}"
    assert {x["image_id"] for x in failed.examples} == {split["image_id"].iloc[-1]}
