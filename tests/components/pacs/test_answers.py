"""The DICOM answers of a series: an SR (TID 1500) and a Grad-CAM Secondary Capture, built
from real pydicom CT files with the tiny test model, validated with dciodvfy and read back
with highdicom."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from components.data.dataset import apply_window
from components.pacs import codes
from components.pacs.answers import (
    ModelIdentity,
    SeriesAnswer,
    answer_series,
    most_suspicious,
    parse_model_uri,
    patient_orientation,
)
from components.pacs.send import FolderTarget, write_folder
from components.registry.serving import MemberSpec, Predictor, ServingSpec
from tests.components.pacs.answers_support import sop_uids, write_series
from tests.dicom_factory import Phi, write_enhanced_ct, write_multiframe
from tests.model_factory import BACKBONE, CLASSES, POSITIVE, SIZE, WINDOWS, tiny_model

MODEL = ModelIdentity("myelomet", "7", "champion")
THRESHOLDS = {"slice": 0.4, "patient": 0.45}


# ------------------------------------------------------------------------------ fast checks


@pytest.mark.parametrize(
    ("ours", "scheme", "name"),
    [
        (codes.MULTIPLE_MYELOMA, "SCT", "MultipleMyeloma"),
        (codes.BONE_METASTASIS, "SCT", "SecondaryMalignantNeoplasmOfBone"),
        (codes.BONE_METASTASIS, "SCT", "BonyMetastasis"),
        (codes.MEASUREMENT_REPORT, "DCM", "ImagingMeasurementReport"),
        (codes.CT_PROCEDURE, "LN", "CTUnspecifiedBodyRegion"),
        (codes.SPINE, "SCT", "Spine"),
        (codes.IMPRESSION, "DCM", "Impression"),
        (codes.PROBABILITY, "DCM", "Probability"),
        (codes.THRESHOLD, "DCM", "ThresholdValue"),
        (codes.NO_UNITS, "UCUM", "NoUnits"),
        (codes.DEVICE, "DCM", "Device"),
    ],
)
def test_each_code_is_the_one_dicom_ps3_16_lists(ours, scheme, name):
    listed = getattr(getattr(pydicom_codes, scheme), name)
    assert (ours.value, ours.scheme_designator) == (listed.value, listed.scheme_designator)


def test_a_class_without_a_code_is_one_line_saying_where_to_add_it():
    with pytest.raises(ValueError, match="components/pacs/codes.py"):
        codes.class_code("Lymphoma")


def test_model_uris_give_name_alias_and_version():
    assert parse_model_uri("models:/myelomet@champion") == ("myelomet", "champion", "")
    assert parse_model_uri("models:/myelomet/12") == ("myelomet", "", "12")
    assert parse_model_uri("runs:/abc/model") is None


def test_patient_orientation_follows_the_direction_cosines():
    axial, coronal = Dataset(), Dataset()
    axial.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    coronal.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    oblique = Dataset()
    oblique.ImageOrientationPatient = [0.8, 0.6, 0, 0, 0, -1]
    assert patient_orientation(axial) == ("L", "P")
    assert patient_orientation(coronal) == ("L", "F")
    assert patient_orientation(oblique) == ("LP", "F")
    assert patient_orientation(Dataset()) is None


def test_the_most_suspicious_slice_leans_furthest_toward_the_answer():
    slices = [{"file": f"s{i}", "p_mm": p} for i, p in enumerate([0.3, 0.9, 0.1, 0.9])]
    assert most_suspicious(slices, "p_mm", positive=True)["file"] == "s1"
    assert most_suspicious(slices, "p_mm", positive=False)["file"] == "s2"


# ------------------------------------------------------------------ built from a real model


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    spec = ServingSpec(
        candidate=BACKBONE,
        members=(MemberSpec(backbone=BACKBONE, image_size=SIZE, windows=WINDOWS),),
        classes=CLASSES,
        positive_class=POSITIVE,
        thresholds=THRESHOLDS,
    )
    return Predictor(spec, [tiny_model()])


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    return write_series(tmp_path_factory.mktemp("scan") / "patient7", 4, seed=3)


@pytest.fixture(scope="module")
def answered(predictor, series) -> tuple[dict, list[dict], SeriesAnswer]:
    [(row, slices)] = predictor.series_with_slices([str(series[0].parent)])
    return row, slices, answer_series(row, slices, predictor, MODEL)


@pytest.fixture(scope="module")
def written(answered, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("answers")
    assert write_folder([answered[2]], FolderTarget(folder)) == []
    return {pydicom.dcmread(p).Modality: p for p in folder.iterdir()}


def _content_items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _text(ds: Dataset, code_value: str) -> list[str]:
    return [
        str(item.TextValue)
        for item in _content_items(ds)
        if item.ConceptNameCodeSequence[0].CodeValue == code_value and "TextValue" in item
    ]


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not on the PATH: apt-get install dicom3tools (Debian/Ubuntu)")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.slow
def test_folder_gets_one_sr_and_one_secondary_capture_and_no_partial_file(written):
    assert set(written) == {"SR", "OT"}
    assert not list(written["SR"].parent.glob("*.partial"))
    assert all(p.name == f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in written.values())


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["SR", "OT"])
def test_dciodvfy_finds_no_error(written, modality):
    assert dciodvfy_errors(written[modality]) == []


@pytest.mark.slow
def test_highdicom_reads_the_report_back_with_the_answer(answered, written, series):
    row, _, _ = answered
    sr = hd.sr.srread(written["SR"])
    [group] = sr.content.get_image_measurement_groups()
    values = {m.name.value: m.value for m in group.get_measurements()}
    [impression] = group.get_qualitative_evaluations()

    assert values[codes.PROBABILITY.value] == pytest.approx(row["p_mm"], abs=1e-12)
    assert values[codes.THRESHOLD.value] == pytest.approx(THRESHOLDS["patient"])
    assert group.finding_type.value == codes.MULTIPLE_MYELOMA.value
    assert impression.value.value == codes.class_code(row["label"]).value
    assert _text(sr, "111001") == ["myelomet"]  # Algorithm Name
    assert _text(sr, "111003") == ["7"]  # Algorithm Version
    parameters = _text(sr, "111002")
    assert "alias: champion" in parameters
    assert any("research use only" in p for p in parameters)
    assert {str(s.referenced_sop_instance_uid) for s in group.source_images} == sop_uids(series)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["SR", "OT"])
def test_each_object_is_a_new_series_of_the_original_study(written, series, modality):
    original = pydicom.dcmread(series[0], stop_before_pixels=True)
    ds = pydicom.dcmread(written[modality])
    assert ds.StudyInstanceUID == original.StudyInstanceUID
    assert ds.SeriesInstanceUID != original.SeriesInstanceUID
    assert ds.SOPInstanceUID not in sop_uids(series)
    # on purpose: the answer goes back into the patient's own study
    assert (ds.PatientID, str(ds.PatientName)) == (Phi().patient_id, Phi().patient_name)
    assert "research use only" in ds.SeriesDescription


@pytest.mark.slow
def test_the_secondary_capture_shows_the_heat_over_the_most_suspicious_slice(
    answered, written, series, predictor
):
    _, slices, _ = answered
    chosen = most_suspicious(slices, "p_mm", answered[0]["label"] == POSITIVE)
    ds = pydicom.dcmread(written["OT"])
    original = pydicom.dcmread(chosen["file"])
    hu = np.rint(original.pixel_array * original.RescaleSlope + original.RescaleIntercept)
    grey = np.rint(apply_window(hu, WINDOWS[0])).astype(np.int16)

    assert ds.PhotometricInterpretation == "RGB"
    assert ds.pixel_array.shape == (*hu.shape, 3)
    assert tuple(ds.PatientOrientation) == ("L", "P")
    below_caption = ds.pixel_array[16:].astype(np.int16)
    tinted = np.abs(below_caption - grey[16:, :, None]).max(axis=-1) > 8
    assert tinted.mean() > 0.05  # the Grad-CAM colours a visible part of the slice
    assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in original.PixelSpacing]


@pytest.mark.slow
def test_a_series_without_orientation_gets_an_empty_patient_orientation(predictor, tmp_path):
    folder = tmp_path / "no-orientation"
    write_series(folder, 2, orientation=None)
    [(row, slices)] = predictor.series_with_slices([str(folder)])
    answer = answer_series(row, slices, predictor, MODEL)
    assert answer.overlay.PatientOrientation == ""
    assert write_folder([answer], FolderTarget(tmp_path / "out")) == []
    for path in (tmp_path / "out").iterdir():
        assert dciodvfy_errors(path) == []


@pytest.mark.slow
def test_a_folder_that_cannot_be_written_is_one_line_per_series(answered, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    [line] = write_folder([answered[2]], FolderTarget(blocker))
    assert line.startswith(f"{answered[0]['series']}: not written to {blocker}")
    assert "\n" not in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("write", "frames"),
    [(write_enhanced_ct, [1, 2, 3]), (write_multiframe, None)],  # a CT Image has no frame list
    ids=["enhanced-ct", "ct-image-with-frames"],
)
def test_a_multi_frame_image_is_referenced_by_the_frames_used(predictor, tmp_path, write, frames):
    written = write(tmp_path / "scan" / "mf.dcm")
    [(row, slices)] = predictor.series_with_slices([str(written.path.parent)])
    answer = answer_series(row, slices, predictor, MODEL)
    assert write_folder([answer], FolderTarget(tmp_path / "out")) == []

    report = hd.sr.Comprehensive3DSR.from_dataset(answer.report)
    [group] = report.content.get_image_measurement_groups()
    [source] = group.source_images
    assert source.referenced_sop_instance_uid == written.ds.SOPInstanceUID
    assert source.referenced_frame_numbers == frames
    for path in (tmp_path / "out").iterdir():
        assert dciodvfy_errors(path) == []
