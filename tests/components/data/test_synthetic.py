"""Tests for the synthetic CT cohort: DICOM validity, HU content, layout, PHI, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from components.config import SyntheticConfig
from components.data.synthetic.cohort import CohortSummary, synthesize_cohort

CLASSES = ("MM", "OMBT")
TINY = SyntheticConfig(patients_per_class=2, slices_min=2, slices_max=3, size=96, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    out = tmp_path_factory.mktemp("tiny") / "cohort"
    return synthesize_cohort(TINY, CLASSES, out, progress=False)


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)


def test_layout_and_counts(tiny: CohortSummary) -> None:
    files = _files(tiny.out)
    assert tiny.n_patients == 4
    assert tiny.patients_per_class == {"MM": 2, "OMBT": 2}
    assert tiny.n_slices == len(files) == sum(tiny.slices_per_class.values())
    assert sorted(p.name for p in tiny.out.iterdir()) == sorted(CLASSES)
    assert len({f.parent.name for f in files}) == 4, "patient folders are unique across classes"
    for rec in tiny.patients:
        slices = sorted((tiny.out / rec.label / rec.folder).iterdir())
        assert [s.name for s in slices] == [f"{k:04d}.dcm" for k in range(1, rec.n_slices + 1)]
        assert TINY.slices_min <= rec.n_slices <= TINY.slices_max
    assert tiny.counts()["slices_per_class"] == tiny.slices_per_class


def test_files_are_ct_dicom(tiny: CohortSummary) -> None:
    for f in _files(tiny.out):
        ds = pydicom.dcmread(f)
        assert ds.preamble is not None
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CTImageStorage
        assert ds.Modality == "CT"
        assert ds.BitsAllocated == ds.BitsStored == 16 and ds.HighBit == 15
        assert ds.PixelRepresentation == 1, "signed stored values"
        assert ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.pixel_array.dtype == np.int16
        assert ds.pixel_array.shape == (TINY.size, TINY.size)
        assert float(ds.RescaleSlope) == 1.0 and "RescaleIntercept" in ds
        for keyword in (
            "PixelSpacing",
            "SliceThickness",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "InstanceNumber",
            "WindowCenter",
            "WindowWidth",
            "KVP",
            "ConvolutionKernel",
            "ManufacturerModelName",
        ):
            assert keyword in ds, keyword


def test_hu_are_plausible_with_bone_and_air(tiny: CohortSummary) -> None:
    for f in _files(tiny.out):
        ds = pydicom.dcmread(f)
        hu = _hu(ds)
        assert hu.min() >= -1024 and hu.max() <= 3071
        assert hu.max() > 500, f"{f}: no bone"
        assert (hu < -900).mean() > 0.01, f"{f}: no air"
        assert ((hu > -150) & (hu < 100)).mean() > 0.2, f"{f}: too little soft tissue"


def test_both_scanners_with_their_own_rescale(tiny: CohortSummary) -> None:
    by_maker: dict[str, set[float]] = {}
    negative_stored = False
    for f in _files(tiny.out):
        ds = pydicom.dcmread(f)
        by_maker.setdefault(ds.Manufacturer, set()).add(float(ds.RescaleIntercept))
        negative_stored |= bool((ds.pixel_array < 0).any())
    assert set(by_maker) == {"Philips", "SIEMENS"}, "scanners are balanced within each class"
    assert by_maker["Philips"] != by_maker["SIEMENS"], "the modality LUT differs by scanner"
    assert negative_stored, "intercept 0 needs signed stored values"


def test_slices_of_a_patient_share_traits_and_geometry(tiny: CohortSummary) -> None:
    shared = (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "Manufacturer",
        "ManufacturerModelName",
        "ConvolutionKernel",
        "SliceThickness",
        "PixelSpacing",
        "RescaleIntercept",
        "Rows",
        "Columns",
        "BodyPartExamined",
    )
    for rec in tiny.patients:
        dss = [pydicom.dcmread(f) for f in _files(tiny.out / rec.label / rec.folder)]
        for keyword in shared:
            assert len({str(ds.get(keyword)) for ds in dss}) == 1, (rec.folder, keyword)
        assert [int(ds.InstanceNumber) for ds in dss] == list(range(1, len(dss) + 1))
        assert len({ds.SOPInstanceUID for ds in dss}) == len(dss)
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in dss])
        assert np.allclose(np.diff(z), float(dss[0].SliceThickness))
        assert not np.array_equal(dss[0].pixel_array, dss[1].pixel_array)
        assert rec.traits.scanner == f"{dss[0].Manufacturer} {dss[0].ManufacturerModelName}"


def test_phi_is_written_and_reported(tiny: CohortSummary) -> None:
    phi = tiny.phi_strings()
    ids = set()
    for rec in tiny.patients:
        assert rec.folder != rec.patient_id and rec.patient_id not in rec.folder
        ids.add(rec.patient_id)
        for f in _files(tiny.out / rec.label / rec.folder):
            ds = pydicom.dcmread(f)
            assert ds.PatientID == rec.patient_id
            for keyword in (
                "PatientName",
                "PatientID",
                "PatientBirthDate",
                "InstitutionName",
                "AccessionNumber",
                "StudyDate",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
                "ReferringPhysicianName",
            ):
                value = str(ds.data_element(keyword).value)
                assert value, keyword
                assert value in phi, keyword
    assert len(ids) == tiny.n_patients
    assert all(len(s) >= 6 for s in phi), "PHI strings are long enough to search for"


def test_reruns_are_byte_identical(tmp_path: Path) -> None:
    cfg = SyntheticConfig(patients_per_class=1, slices_min=2, slices_max=2, size=64, seed=5)
    a = synthesize_cohort(cfg, CLASSES, tmp_path / "a", progress=False)
    b = synthesize_cohort(cfg, CLASSES, tmp_path / "b", progress=False)
    rel_a = [f.relative_to(a.out) for f in _files(a.out)]
    assert rel_a == [f.relative_to(b.out) for f in _files(b.out)]
    for rel in rel_a:
        assert (a.out / rel).read_bytes() == (b.out / rel).read_bytes(), rel
    assert a.phi_strings() == b.phi_strings()
    other = synthesize_cohort(
        cfg.model_copy(update={"seed": 6}), CLASSES, tmp_path / "c", progress=False
    )
    assert {r.patient_id for r in other.patients}.isdisjoint(r.patient_id for r in a.patients)
    assert _files(other.out)[0].read_bytes() != _files(a.out)[0].read_bytes()


def test_rerun_replaces_a_cohort_but_not_foreign_files(tmp_path: Path) -> None:
    cfg = SyntheticConfig(patients_per_class=1, slices_min=1, slices_max=1, size=64, seed=5)
    out = tmp_path / "cohort"
    synthesize_cohort(cfg, CLASSES, out, progress=False)
    stale = out / "MM" / "P9999" / "0001.dcm"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    synthesize_cohort(cfg, CLASSES, out, progress=False)
    assert not stale.exists()
    assert len(_files(out)) == 2
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        synthesize_cohort(cfg, CLASSES, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_rejects_bad_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        synthesize_cohort(TINY, ("MM", "MM"), tmp_path / "x", progress=False)


def _vertebral_body_features(ds: pydicom.Dataset) -> tuple[float, float]:
    """Lytic components and median bone HU in a central vertebral-body ROI of one slice."""
    hu = _hu(ds)
    ps = float(ds.PixelSpacing[0])
    x0, y0 = (float(v) for v in ds.ImagePositionPatient[:2])
    grid = np.arange(hu.shape[0]) * ps
    x, y = np.meshgrid(grid + x0, grid + y0)
    roi = (x / 12) ** 2 + (y / 9) ** 2 <= 1  # the body centre is near x = y = 0
    smooth = ndimage.gaussian_filter(hu, 0.7 / ps)
    labels, _ = ndimage.label(roi & (smooth < 90))
    areas = np.bincount(labels.ravel())[1:] * ps * ps
    background = np.median(smooth[roi & (smooth >= 90) & (smooth < 500)])
    return float((areas >= 3).sum()), float(background)


def _mm_ombt_score(summary: CohortSummary) -> float:
    """Standardised OMBT-minus-MM gap: fewer lytic foci plus denser bone in OMBT."""
    feats: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    for rec in summary.patients:
        per_slice = [
            _vertebral_body_features(pydicom.dcmread(f))
            for f in _files(summary.out / rec.label / rec.folder)
        ]
        feats[rec.label].append(np.mean(per_slice, axis=0))
    mm, ombt = np.array(feats["MM"]), np.array(feats["OMBT"])
    pooled = np.sqrt((mm.var(axis=0, ddof=1) + ombt.var(axis=0, ddof=1)) / 2)
    gap = (ombt.mean(axis=0) - mm.mean(axis=0)) / pooled
    return float(gap[1] - gap[0])


def test_difficulty_controls_class_separation(tmp_path: Path) -> None:
    cfg = SyntheticConfig(
        patients_per_class=8, slices_min=3, slices_max=3, size=192, difficulty=0.0, seed=4
    )
    easy = synthesize_cohort(cfg, CLASSES, tmp_path / "easy", progress=False)
    hard = synthesize_cohort(
        cfg.model_copy(update={"difficulty": 1.0}), CLASSES, tmp_path / "hard", progress=False
    )
    # Same patients (identity, anatomy, scanner); only the lesion traits move.
    assert [r.patient_id for r in easy.patients] == [r.patient_id for r in hard.patients]
    assert [r.traits.scanner for r in easy.patients] == [r.traits.scanner for r in hard.patients]

    easy_score, hard_score = _mm_ombt_score(easy), _mm_ombt_score(hard)
    assert easy_score > 1.5, easy_score
    assert abs(hard_score) < easy_score / 2, (easy_score, hard_score)
