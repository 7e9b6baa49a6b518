import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from components.data.deid import pseudonym
from components.data.dicom_attributes import FRAME_COLUMNS
from components.data.ingest import MANIFEST_COLUMNS, REJECT_COLUMNS, NoUsableDataError, ingest
from components.data.output_folder import MARKER, OutputFolderError
from tests import dicom_factory as factory

KEY = bytes.fromhex("5a" * 32)
CLASSES = ("MM", "OMBT")
MM_PHI = factory.Phi()
OMBT_PHI = factory.Phi(
    patient_name="Roe^Richard^Alan",
    patient_id="MRN-5550001",
    birth_date="19470923",
    accession="ACC11223344",
)
MM_FOLDER = "Doe_Jane_MRN8837261"
OMBT_FOLDER = "Roe_Richard_MRN5550001"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _reasons(out: Path) -> dict[str, str]:
    """rejects.csv as {source file pseudonym: reason}."""
    return {
        row["source"].rsplit("/", 1)[-1]: row["reason"] for row in _read_csv(out / "rejects.csv")
    }


def _cohort(root: Path) -> dict[str, factory.Written]:
    """Two patients: every good encoding and every kind of bad file, with PHI in the names."""
    mm = root / "MM" / MM_FOLDER / "CT_SPINE_20240117"
    ombt = root / "OMBT" / OMBT_FOLDER
    written = {
        "plain": factory.write_plain(mm / "IMG_MRN8837261_0001.dcm", phi=MM_PHI, seed=1),
        "rle": factory.write_rle(mm / "IMG_MRN8837261_0002.dcm", phi=MM_PHI, seed=2),
        "j2k": factory.write_jpeg2000(mm / "IMG_MRN8837261_0003", phi=MM_PHI, seed=3),
        "jpeg_lossless": factory.write_jpeg_lossless(mm / "0004.DCM", phi=MM_PHI, seed=4),
        "big_endian": factory.write_big_endian(mm / "sub" / "0005", phi=MM_PHI, seed=5),
        "no_meta": factory.write_no_meta(mm / "sub" / "deeper" / "0006.ima", phi=MM_PHI, seed=6),
        "multiframe": factory.write_multiframe(mm / "0007.dcm", frames=3, phi=MM_PHI, seed=7),
        "mr": factory.write_mr(mm / "0008.dcm", phi=MM_PHI),
        "rgb": factory.write_rgb(mm / "0009.dcm", phi=MM_PHI),
        "no_pixels": factory.write_no_pixel_data(mm / "0010.dcm", phi=MM_PHI),
        "truncated": factory.write_truncated(mm / "0011.dcm", phi=MM_PHI),
        "unsupported": factory.write_unsupported_syntax(mm / "0012.dcm", phi=MM_PHI),
        "ombt_plain": factory.write_plain(ombt / "Roe_0001.dcm", phi=OMBT_PHI, seed=8),
        "ombt_enhanced": factory.write_enhanced_ct(ombt / "Roe_0002.dcm", phi=OMBT_PHI, seed=9),
    }
    if factory.jpegls_source() is not None:
        written["jpegls"] = factory.write_jpegls(ombt / "Roe_0003.dcm", phi=OMBT_PHI)
    factory.write_not_dicom(mm / "Doe_Jane_notes.txt")
    return written


GOOD = ("plain", "rle", "j2k", "jpeg_lossless", "big_endian", "no_meta", "multiframe")
BAD = {
    "mr": "modality_not_ct",
    "rgb": "colour_image",
    "no_pixels": "no_pixel_data",
    "truncated": "truncated",
    "unsupported": "unsupported_transfer_syntax",
}


@pytest.fixture()
def cohort(tmp_path):
    root = tmp_path / "raw"
    written = _cohort(root)
    out = tmp_path / "processed"
    summary = ingest(root, out, CLASSES, KEY, progress=False)
    return root, out, written, summary


def test_good_files_are_ingested_with_modality_lut_hu(cohort):
    root, out, written, summary = cohort
    manifest = _read_csv(out / "manifest.csv")
    assert tuple(manifest[0]) == MANIFEST_COLUMNS
    assert set(FRAME_COLUMNS) <= set(manifest[0])
    n_ombt = 1 + 3 + (1 if "jpegls" in written else 0)
    assert summary.n_slices == len(manifest) == 6 + 3 + n_ombt
    assert summary.slices_per_label == {"MM": 9, "OMBT": n_ombt}
    assert summary.n_patients == 2 and summary.patients_per_label == {"MM": 1, "OMBT": 1}

    # Every expected HU slice is in the output exactly once.
    stored = {row["image_id"]: np.load(out / row["file"]) for row in manifest}
    assert sorted(p.name for p in (out / "slices").iterdir()) == sorted(f"{i}.npy" for i in stored)
    expected = [
        hu
        for name, w in written.items()
        if name in GOOD or name.startswith(("ombt", "jpegls"))
        for hu in w.hu
    ]
    assert len(expected) == len(stored)
    for hu in expected:
        assert sum(np.array_equal(hu, got) for got in stored.values()) == 1
    for row in manifest:
        hu = stored[row["image_id"]]
        assert hu.dtype == np.int16
        assert (int(row["hu_min"]), int(row["hu_max"])) == (hu.min(), hu.max())
        assert row["patient"].startswith("pt-") and row["image_id"].startswith("im-")
        assert row["label"] in CLASSES


def test_each_bad_file_lands_in_rejects_with_its_reason(cohort):
    root, out, written, summary = cohort
    rejects = _read_csv(out / "rejects.csv")
    assert tuple(rejects[0]) == REJECT_COLUMNS
    reasons = _reasons(out)
    source_of = summary_sources(summary)
    for name, reason in BAD.items():
        assert reasons[source_of[written[name].path]] == reason, name
    notes = next(p for p in summary.rejected_paths if p[0].name == "Doe_Jane_notes.txt")
    assert notes[1].startswith("not_dicom: ")
    assert len(rejects) == len(BAD) + 1 == summary.n_rejects
    assert all(row["detail"] for row in rejects)
    assert summary.reject_counts["truncated"] == 1


def summary_sources(summary) -> dict[Path, str]:
    return {r.path: r.source.rsplit("/", 1)[-1] for r in summary.rejects}


def test_reject_source_is_pseudonymised_below_the_class_folder(cohort):
    root, out, written, summary = cohort
    for reject in summary.rejects:
        parts = reject.source.split("/")
        real = reject.path.relative_to(root).parts
        assert parts[0] == real[0] == "MM"
        assert len(parts) == len(real)
        assert all(p.startswith("f-") for p in parts[1:])
        assert reject.path.is_file()  # the real path is there for the console


def test_multiframe_splits_into_one_row_per_frame(cohort):
    root, out, written, summary = cohort
    manifest = _read_csv(out / "manifest.csv")
    frames = [r for r in manifest if r["n_frames"] == "3" and r["sop_class"] == "CT Image Storage"]
    assert sorted(r["frame"] for r in frames) == ["0", "1", "2"]
    assert len({r["image_id"] for r in frames}) == 3
    assert len({r["series"] for r in frames}) == 1


def test_no_phi_anywhere_in_the_output(cohort):
    root, out, written, summary = cohort
    phi = factory.phi_strings(*(w.ds for w in written.values()))
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] not in CLASSES:
            continue
        # Short generic names like 0004 are no identifiers, and would match hex by chance.
        phi.update(n for part in rel.parts[1:] for n in (part, Path(part).stem) if len(n) >= 8)
    phi.add(str(root))
    assert "MRN-8837261" in phi and MM_FOLDER in phi and "IMG_MRN8837261_0001.dcm" in phi

    outputs = [p for p in out.rglob("*") if p.is_file()]
    assert len(outputs) > 10
    for path in outputs:
        data = path.read_bytes()
        for value in phi:
            assert value.encode() not in data, f"{value!r} found in {path.relative_to(out)}"


def test_rerun_is_byte_identical_and_clears_stale_slices(cohort):
    root, out, written, summary = cohort
    stale = out / "slices" / "im-stale.npy"
    stale.write_bytes(b"old")

    def snapshot() -> dict[str, bytes]:
        return {
            p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }

    first = snapshot()
    ingest(root, out, CLASSES, KEY, progress=False)
    second = snapshot()
    assert "slices/im-stale.npy" not in second
    first.pop("slices/im-stale.npy")
    assert first == second

    manifest = _read_csv(out / "manifest.csv")
    keys = [(r["patient"], r["image_id"]) for r in manifest]
    assert keys == sorted(keys)


def test_other_key_gives_other_pseudonyms(cohort, tmp_path):
    root, out, written, summary = cohort
    other = ingest(root, tmp_path / "other", CLASSES, bytes.fromhex("a5" * 32), progress=False)
    assert other.n_slices == summary.n_slices
    first = {r["patient"] for r in _read_csv(out / "manifest.csv")}
    second = {r["patient"] for r in _read_csv(tmp_path / "other" / "manifest.csv")}
    assert first.isdisjoint(second)


def test_files_outside_the_layout_are_rejected_as_unlabelled(tmp_path):
    root = tmp_path / "raw"
    good = factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    loose = factory.write_plain(root / "loose.dcm", seed=3)
    in_class = factory.write_plain(root / "MM" / "direct.dcm", seed=4)
    other = factory.write_plain(root / "LYMPHOMA" / "p3" / "a.dcm", seed=5)
    lower = factory.write_plain(root / "ombt" / "p4" / "a.dcm", seed=6)
    summary = ingest(root, tmp_path / "out", CLASSES, KEY, progress=False)
    by_path = {r.path: r for r in summary.rejects}
    assert by_path[loose.path].reason == "no_label"
    assert by_path[in_class.path].reason == "no_label"
    assert by_path[other.path].reason == "unknown_label"
    assert by_path[lower.path].reason == "unknown_label"
    assert "letter case" in by_path[lower.path].detail
    assert by_path[other.path].source.split("/")[0].startswith("f-")  # not a class: hidden
    assert good.path not in by_path and summary.n_slices == 2


def test_labels_csv_mode_keys_labels_by_patient_id(tmp_path):
    root = tmp_path / "anywhere"
    a = factory.write_plain(root / "x" / "1.dcm", phi=factory.Phi(patient_id="00123"), seed=1)
    b = factory.write_rle(root / "y" / "z" / "2", phi=factory.Phi(patient_id="NA"), seed=2)
    unlabelled = factory.write_plain(root / "3.dcm", phi=factory.Phi(patient_id="999"), seed=3)
    odd = factory.write_plain(root / "4.dcm", phi=factory.Phi(patient_id="777"), seed=4)
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\n00123,MM\nNA , OMBT\n777,LYMPHOMA\n\n")
    out = tmp_path / "out"
    summary = ingest(root, out, CLASSES, KEY, labels_csv=labels, progress=False)
    manifest = _read_csv(out / "manifest.csv")
    assert sorted(r["label"] for r in manifest) == ["MM", "OMBT"]
    by_path = {r.path: r for r in summary.rejects}
    assert by_path[unlabelled.path].reason == "no_label"
    assert by_path[odd.path].reason == "unknown_label"
    assert all(part.startswith("f-") for part in by_path[odd.path].source.split("/"))
    assert {a.path, b.path}.isdisjoint(by_path)


def test_labels_csv_with_two_labels_for_one_patient_is_refused(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nMRN-1,MM\nMRN-1,OMBT\n")
    (tmp_path / "raw").mkdir()
    with pytest.raises(ValueError, match="lines 2 and 3") as caught:
        ingest(tmp_path / "raw", tmp_path / "out", CLASSES, KEY, labels_csv=labels, progress=False)
    assert "MRN-1" not in str(caught.value)


def test_patient_id_falls_back_to_folder_and_duplicates_and_conflicts_are_rejected(tmp_path):
    root = tmp_path / "raw"
    blank = factory.Phi(patient_id="")
    one = factory.write_plain(root / "MM" / "folderA" / "1.dcm", phi=blank, seed=1)
    factory.write_plain(root / "MM" / "folderB" / "1.dcm", phi=blank, seed=2)
    copy = root / "MM" / "folderA" / "1-copy.dcm"
    copy.write_bytes(one.path.read_bytes())
    # The same patient (PatientID) filed under both classes.
    both = factory.Phi(patient_id="MRN-BOTH")
    mm_side = factory.write_plain(root / "MM" / "p9" / "1.dcm", phi=both, seed=3)
    ombt_side = factory.write_plain(root / "OMBT" / "p9" / "1.dcm", phi=both, seed=4)
    factory.write_plain(root / "OMBT" / "p10" / "1.dcm", phi=OMBT_PHI, seed=5)

    out = tmp_path / "out"
    summary = ingest(root, out, CLASSES, KEY, progress=False)
    manifest = _read_csv(out / "manifest.csv")
    assert len({r["patient"] for r in manifest if r["label"] == "MM"}) == 2  # folderA, folderB
    by_path = {r.path: r for r in summary.rejects}
    # Paths are processed in sorted order: "1-copy.dcm" comes first and is kept.
    assert copy not in by_path and by_path[one.path].reason == "duplicate"
    assert by_path[mm_side.path].reason == by_path[ombt_side.path].reason == "conflicting_label"
    assert len(list((out / "slices").iterdir())) == len(manifest) == 3


def test_nothing_usable_raises_and_still_writes_rejects(tmp_path):
    root = tmp_path / "raw"
    factory.write_mr(root / "MM" / "p1" / "a.dcm")
    factory.write_not_dicom(root / "OMBT" / "p2" / "b.txt")
    out = tmp_path / "out"
    (out / "slices").mkdir(parents=True)
    (out / "manifest.csv").write_text("stale\n")
    (out / MARKER).write_text("an earlier ingest's\n")
    with pytest.raises(NoUsableDataError) as caught:
        ingest(root, out, CLASSES, KEY, progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "rejects.csv" in message and "MM, OMBT" in message and str(root) in message
    assert "modality_not_ct" in message
    assert sorted(_reasons(out).values()) == ["modality_not_ct", "not_dicom"]
    assert not (out / "manifest.csv").exists() and not (out / "slices").exists()


def test_empty_root_raises_no_usable_data(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(NoUsableDataError, match="found 0 files"):
        ingest(tmp_path / "raw", tmp_path / "out", CLASSES, KEY, progress=False)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dicom-root"):
        ingest(tmp_path / "nope", tmp_path / "out", CLASSES, KEY, progress=False)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", ["patient slices folder", "class folder", "root", "above root"])
def test_an_output_folder_overlapping_the_dicom_root_is_refused_and_nothing_is_lost(
    tmp_path, where
):
    root = tmp_path / "raw"
    factory.write_plain(root / "MM" / "p1" / "slices" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    before = _tree(tmp_path)
    out = {
        "patient slices folder": root / "MM" / "p1",  # its slices/ holds the raw DICOMs
        "class folder": root / "MM",
        "root": root,
        "above root": tmp_path,
    }[where]
    with pytest.raises(OutputFolderError, match="DICOM root"):
        ingest(root, out, CLASSES, KEY, progress=False)
    assert _tree(tmp_path) == before


def test_a_folder_ingest_did_not_write_is_never_replaced(tmp_path):
    root = tmp_path / "raw"
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    out = tmp_path / "thesis"
    (out / "slices").mkdir(parents=True)
    (out / "slices" / "figure.npy").write_bytes(b"mine")
    (out / "chapter1.docx").write_bytes(b"mine too")
    before = _tree(out)
    with pytest.raises(OutputFolderError, match="nothing was changed"):
        ingest(root, out, CLASSES, KEY, progress=False)
    assert _tree(out) == before
    assert not list(tmp_path.glob(".thesis.*"))  # no partial output left behind


def test_another_tools_output_with_ingests_file_names_is_refused_without_the_marker(tmp_path):
    root = tmp_path / "raw"
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    out = tmp_path / "results"
    (out / "slices").mkdir(parents=True)
    (out / "manifest.csv").write_text("subject,score\nS1,0.4\n")
    (out / "rejects.csv").write_text("subject,why\n")
    np.save(out / "slices" / "S1.npy", np.arange(4))
    before = _tree(out)
    with pytest.raises(OutputFolderError, match=f"no {MARKER} marker") as caught:
        ingest(root, out, CLASSES, KEY, progress=False)
    assert "\n" not in str(caught.value)
    assert _tree(out) == before
    assert not list(tmp_path.glob(".results.*"))
    # an empty folder is fine, and the rerun into it replaces what ingest itself wrote
    empty = tmp_path / "empty"
    empty.mkdir()
    ingest(root, empty, CLASSES, KEY, progress=False)
    ingest(root, empty, CLASSES, KEY, progress=False)
    assert (empty / MARKER).is_file() and len(_read_csv(empty / "manifest.csv")) == 2


def test_a_rerun_replaces_its_own_output_and_the_leftovers_of_a_killed_run(tmp_path):
    root = tmp_path / "raw"
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    out = tmp_path / "processed"
    ingest(root, out, CLASSES, KEY, progress=False)
    first = _tree(out)
    killed = tmp_path / ".processed.partial-999999999"  # no such process
    (killed / "slices").mkdir(parents=True)
    (killed / MARKER).write_text("x")
    (killed / "slices" / "im-x.npy").write_bytes(b"half")
    (root / "MM" / "p1" / "a.dcm").unlink()
    factory.write_plain(root / "MM" / "p3" / "b.dcm", seed=3)
    summary = ingest(root, out, CLASSES, KEY, progress=False)
    assert summary.n_slices == 2 and _tree(out) != first
    assert len(list((out / "slices").iterdir())) == 2  # the removed file's slice is gone
    assert (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw"]


def test_acquisition_text_becomes_a_vendor_and_keyed_pseudonyms(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    planted = factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1).ds
    planted.Manufacturer = "GE Medical Roe^Richard MRN445566"
    planted.ManufacturerModelName = "JANE 9000"  # the patient's own given name
    planted.ConvolutionKernel = "K" * 65
    planted.BodyPartExamined = "19510312"  # the patient's birth date
    planted.save_as(root / "MM" / "p1" / "a.dcm", enforce_file_format=True)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)

    ingest(root, out, CLASSES, KEY, progress=False)
    text = (out / "manifest.csv").read_text()
    for value in ("Roe", "MRN445566", "JANE", "K" * 65, "19510312", "ACME", "Tomo"):
        assert value.upper() not in text.upper()
    rows = {r["patient"]: r for r in _read_csv(out / "manifest.csv")}
    mm = next(r for r in rows.values() if r["label"] == "MM")
    ombt = next(r for r in rows.values() if r["label"] == "OMBT")
    assert (mm["manufacturer"], ombt["manufacturer"]) == ("GE", "other")
    assert mm["model"] == pseudonym(KEY, "ge/jane 9000", "scanner")
    assert ombt["kernel"] == pseudonym(KEY, "b70f", "kernel")
    assert mm["body_part"] == pseudonym(KEY, "19510312", "bodypart")


def test_dangling_and_looping_links_are_rejected_as_unreadable(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    (root / "MM" / "p1" / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (root / "MM" / "p1" / "loop.dcm").symlink_to(root / "MM" / "p1" / "loop.dcm")
    summary = ingest(root, out, CLASSES, KEY, progress=False)
    assert summary.n_slices == 2
    assert sorted(r.reason for r in summary.rejects) == ["unreadable", "unreadable"]
    assert len(_read_csv(out / "rejects.csv")) == 2


def test_a_frame_over_the_limit_is_rejected_and_the_files_beside_it_are_kept(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    big = factory.write_plain(root / "MM" / "p1" / "big.dcm", pixels=np.zeros((80, 80)), seed=1)
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=2)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=3, phi=OMBT_PHI)
    summary = ingest(root, out, CLASSES, KEY, progress=False, max_frame_pixels=64 * 64)
    assert summary.n_slices == 2
    (reject,) = summary.rejects
    assert reject.path == big.path and reject.reason == "frame_too_large"
    assert "80 x 80 = 6400 pixels, over the limit of 4096" in reject.detail
    (row,) = _read_csv(out / "rejects.csv")
    assert row["reason"] == "frame_too_large" and row["detail"] == reject.detail


def test_a_multiframe_file_is_written_frame_by_frame_as_it_decodes(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    written = factory.write_large_multiframe(
        root / "MM" / "p1" / "volume.dcm", frames=5, rows=256, columns=256, seed=1
    )
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    ingest(root, out, CLASSES, KEY, progress=False)
    rows = [r for r in _read_csv(out / "manifest.csv") if r["label"] == "MM"]
    assert sorted(int(r["frame"]) for r in rows) == [0, 1, 2, 3, 4]
    for row in rows:
        hu = np.load(out / row["file"])
        np.testing.assert_array_equal(hu, factory.large_frame(written.ds, int(row["frame"])))
        assert (row["n_frames"], row["rows"], row["columns"]) == ("5", "256", "256")
        assert (int(row["hu_min"]), int(row["hu_max"])) == (hu.min(), hu.max())


def test_a_file_whose_later_frame_fails_leaves_no_slice_and_no_label_behind(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    patient = factory.Phi(patient_id="MRN-TWICE")
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1, phi=patient)
    bad = factory.write_enhanced_ct(
        root / "OMBT" / "p1" / "enh.dcm", intercepts=(-1024.0, -1000.0, 9e4), phi=patient
    )
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    summary = ingest(root, out, CLASSES, KEY, progress=False)
    assert [(r.path, r.reason) for r in summary.rejects] == [(bad.path, "bad_rescale")]
    assert summary.slices_per_label == {"MM": 1, "OMBT": 1}  # no conflicting_label for MM
    assert len(list((out / "slices").iterdir())) == 2


def test_peak_memory_stays_about_one_frame_whatever_the_file_size(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    volume = factory.write_large_multiframe(root / "MM" / "p1" / "volume.dcm", frames=300).path
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    size = volume.stat().st_size
    assert size > 150 * 2**20
    tracemalloc.start()
    try:
        summary = ingest(root, out, CLASSES, KEY, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        shutil.rmtree(root)  # 300 MB with the slices: leave none of it in the pytest temp dirs
        shutil.rmtree(out)
    assert summary.n_slices == 301
    # Reading the whole volume at once peaked at 11 times the file size; a 512x512 frame
    # is 0.5 MiB stored, 2 MiB as float64 HU.
    assert peak < size / 10, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


@pytest.mark.timeout(60)
def test_pipes_sockets_and_links_to_them_get_a_reject_row_and_ingest_finishes(tmp_path):
    root = tmp_path / "raw"
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    os.mkfifo(root / "MM" / "p1" / "pipe")
    os.mkfifo(tmp_path / "outside-pipe")
    (root / "OMBT" / "p2" / "to-pipe.dcm").symlink_to(tmp_path / "outside-pipe")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "MM" / "p1" / "sock"))
        summary = ingest(root, tmp_path / "out", CLASSES, KEY, progress=False)
    assert summary.n_slices == 2 and summary.n_files == 5
    rows = {r["source"].rsplit("/", 1)[0]: r for r in _read_csv(tmp_path / "out" / "rejects.csv")}
    reasons = _reasons(tmp_path / "out")
    assert sorted(reasons.values()) == ["not_regular_file"] * 3
    details = " ".join(r.detail for r in summary.rejects)
    assert "named pipe" in details and "socket" in details and "regular file" in details
    assert all(r["source"].startswith(("MM/f-", "OMBT/f-")) for r in rows.values())


def test_symlinked_class_and_patient_folders_are_followed(tmp_path):
    root, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    factory.write_plain(elsewhere / "patient" / "a.dcm", seed=1)
    factory.write_plain(elsewhere / "ombt" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    (root / "MM").mkdir(parents=True)
    (root / "MM" / "p1").symlink_to(elsewhere / "patient")
    (root / "OMBT").symlink_to(elsewhere / "ombt")
    summary = ingest(root, tmp_path / "out", CLASSES, KEY, progress=False)
    assert summary.n_rejects == 0
    assert summary.patients_per_label == {"MM": 1, "OMBT": 1}


def test_a_folder_link_loop_or_second_link_is_a_reject_row_not_a_hang(tmp_path):
    root = tmp_path / "raw"
    factory.write_plain(root / "MM" / "p1" / "a.dcm", seed=1)
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    (root / "MM" / "p1" / "back").symlink_to(root / "MM")  # a loop
    (root / "OMBT" / "p3").symlink_to(root / "OMBT" / "p2")  # the same folder twice
    (root / "MM" / "p1" / "self").symlink_to(root / "MM" / "p1" / "self")
    summary = ingest(root, tmp_path / "out", CLASSES, KEY, progress=False)
    assert summary.n_slices == 2
    by_name = {r.path.name: r for r in summary.rejects}
    assert set(by_name) == {"back", "self", "p3"} or set(by_name) == {"back", "self", "p2"}
    assert by_name["back"].reason == "not_regular_file" and "loop" in by_name["back"].detail
    assert by_name["self"].reason == "unreadable"


# Reads the bombs in a fresh interpreter: ru_maxrss is the peak of the process, so the growth
# over the peak after the imports is what reading them cost.
_BOMB_READER = """
import json, resource, sys
from pathlib import Path
from components.data.dicom import read_ct
from components.data.ingest import ingest
from components.data.rejects import DicomRejected

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

base = peak()
result = {"read": {}}
for path in sys.argv[3:]:
    try:
        read_ct(path)
        result["read"][Path(path).name] = "read"
    except DicomRejected as exc:
        result["read"][Path(path).name] = str(exc.reason)
summary = ingest(Path(sys.argv[1]), Path(sys.argv[2]), ("MM", "OMBT"), b"k" * 32, progress=False)
result["ingest"] = {r.path.name: str(r.reason) for r in summary.rejects}
result["slices"] = summary.n_slices
result["growth"] = peak() - base
print(json.dumps(result))
"""


@pytest.mark.timeout(300)
def test_deflate_and_rle_bombs_are_refused_before_they_are_decoded(tmp_path):
    root = tmp_path / "raw"
    folder = root / "MM" / "p1"
    bombs = [
        factory.write_deflate_bomb(folder / "deflated-16384.dcm", 16384, 16384).path,
        factory.write_rle_bomb(folder / "rle-60x4096.dcm", 4096, 4096, 60).path,
        # a header that declares one small frame, and 300 MB of zeros after it
        factory.write_deflate_bomb(
            folder / "deflated-trailer.dcm", 64, 64, extra_zero_bytes=300_000_000
        ).path,
    ]
    factory.write_plain(root / "OMBT" / "p2" / "a.dcm", seed=2, phi=OMBT_PHI)
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_READER, str(root), str(tmp_path / "out"), *map(str, bombs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[3],
        timeout=240,
    )
    result = json.loads(done.stdout)
    expected = {
        "deflated-16384.dcm": "frame_too_large",
        "rle-60x4096.dcm": "image_too_large",
        "deflated-trailer.dcm": "image_too_large",
    }
    assert result["read"] == expected and result["ingest"] == expected
    assert result["slices"] == 1
    assert result["growth"] < 300 * 1024 * 1024, result["growth"]
