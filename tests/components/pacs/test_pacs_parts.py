"""The parts of `myelomet pull` that need no PACS: the cohort CSV, the source and its
credentials, the de-identification of a received instance, the pulled tree on disk."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from components.data.ingest import ingest
from components.pacs.cohort import read_cohort
from components.pacs.deidentify import deidentify, file_name, patient_pseudonym, series_pseudonym
from components.pacs.source import DicomWebSource, DimseSource, parse_source
from components.pacs.tree import PulledTree
from tests import dicom_factory as factory

KEY = b"a key for these tests, 32 bytes."
CLASSES = ("MM", "OMBT")


def test_cohort_rows_by_accession_or_patient_id(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("accession_number,label\nA1,MM\n\nA2 , OMBT\nA1,MM\n")
    rows = read_cohort(path, CLASSES)
    assert [(r.line, r.key, r.value, r.label) for r in rows] == [
        (2, "accession_number", "A1", "MM"),
        (4, "accession_number", "A2", "OMBT"),
    ]
    path.write_text("patient_id,label\nMRN-1,OMBT\n")
    assert read_cohort(path, CLASSES)[0].key == "patient_id"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accession_number,class\nA1,MM\n", "needs the header"),
        ("accession_number,label\nMRN-55,MRN-55\n", "line 2 has a label that is not one of"),
        ("accession_number,label\n,MM\n", "line 2 has a label but no accession_number"),
    ],
)
def test_a_bad_cohort_is_refused_without_quoting_a_cell(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_cohort(path, CLASSES)
    assert "MRN-55" not in str(info.value)


def test_sources_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MYELOMET_PACS_USER", "MYELOMET_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert parse_source("dimse://PACS@10.0.0.5:104") == DimseSource("PACS", "10.0.0.5", 104)
    web = parse_source("https://pacs.example:8443/dicom-web/", tmp_path / "ca.pem")
    assert web == DicomWebSource("https://pacs.example:8443/dicom-web", None, tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="must not hold credentials"):
        parse_source("http://reader:secret@pacs.example/dicom-web")
    with pytest.raises(ValueError, match="must be"):
        parse_source("ftp://pacs.example")

    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs.example login reader password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert parse_source("http://pacs.example/dicom-web").auth == ("reader", "from-netrc")
    monkeypatch.setenv("MYELOMET_PACS_USER", "env-user")
    monkeypatch.setenv("MYELOMET_PACS_PASSWORD", "env-pass")
    assert parse_source("http://pacs.example/dicom-web").auth == ("env-user", "env-pass")
    monkeypatch.delenv("MYELOMET_PACS_PASSWORD")
    with pytest.raises(ValueError, match="set both"):
        parse_source("http://pacs.example/dicom-web")


def test_a_deidentified_instance_ingests_like_the_original_and_holds_no_identifier(
    tmp_path: Path,
) -> None:
    original = tmp_path / "original" / "MM" / "patient-folder" / "x.dcm"
    written = factory.write_multiframe(original, frames=3)
    ds = written.ds
    ds.SeriesDescription = f"{factory.Phi().patient_name} spine"
    ds.private_block(0x0029, "NOTES", create=True).add_new(0x01, "LO", factory.Phi().accession)
    ds.save_as(original, enforce_file_format=True)

    received = pydicom.dcmread(original)
    patient = patient_pseudonym(KEY, str(received.PatientID))
    series = series_pseudonym(KEY, str(received.SeriesInstanceUID))
    clean = deidentify(received, ExplicitVRLittleEndian, KEY, patient, series)
    tree = PulledTree(tmp_path / "pulled")
    tree.prepare()
    path = tree.write("MM", patient, series, file_name(KEY, str(received.SOPInstanceUID)), clean)
    assert not list(tree.out.rglob("*.partial"))

    data = path.read_bytes()
    for value in factory.phi_strings(ds) | {"spine"}:
        assert value.encode() not in data, value
    a = ingest(original.parents[2], tmp_path / "a", CLASSES, KEY, progress=False)
    b = ingest(tree.out, tmp_path / "b", CLASSES, KEY, progress=False)
    assert a.manifest_path.read_bytes() == b.manifest_path.read_bytes()
    assert a.n_slices == 3


def test_prepare_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    tree = PulledTree(tmp_path / "pulled")
    stale = tree.series_folder("MM", "pt-1", "se-1") / ".im-1.dcm.x.partial"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    tree.prepare()
    assert not stale.exists() and tree.count("MM", "pt-1", "se-1") == 0
