"""`myelomet predict --per series` sending its answers back: into a real Orthanc by STOW-RS and
by C-STORE (tests.orthanc_server), with the tiny model registered as the champion."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests
import yaml
from dicomweb_client.api import DICOMwebClient

from components.pacs import codes
from components.pacs.send import parse_cstore, targets
from components.pacs.source import PASSWORD_ENV, USER_ENV
from myelomet.cli import main
from tests.components.pacs.answers_support import write_series
from tests.dicom_factory import Phi
from tests.orthanc_server import Orthanc, missing_packages, running_orthanc
from tests.processes import free_port
from tests.serving_server import register_tiny_champion


def test_cstore_peers_parse_and_malformed_ones_say_the_form():
    assert str(parse_cstore("ORTHANC@pacs.example:4242", "MYELOMET")) == (
        "ORTHANC@pacs.example:4242"
    )
    for bad in ("pacs:4242", "ORTHANC@pacs", "ORTHANC@pacs:port", "A" * 17 + "@pacs:104"):
        with pytest.raises(ValueError, match="--cstore"):
            parse_cstore(bad, "MYELOMET")


def test_a_stow_url_with_credentials_in_it_is_refused():
    with pytest.raises(ValueError, match=USER_ENV):
        targets(None, "http://alice:secret@127.0.0.1:8042/dicom-web", None, "MYELOMET")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project root whose store holds the tiny model as the champion; its params file."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        register_tiny_champion(root)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"experiment": "serve-test"}}))
    return params


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, list[Path]]:
    """Two patients' CT series, each in a study of its own: folder name -> files."""
    root = tmp_path_factory.mktemp("scans")
    second = Phi(patient_name="Roe^Richard", patient_id="MRN-2233445", accession="ACC55443322")
    return {
        "alpha": write_series(root / "alpha", 3, seed=1),
        "beta": write_series(root / "beta", 3, seed=20, phi=second),
    }


def _predict(project: Path, monkeypatch, *args: str) -> tuple[int, list[dict], list[str]]:
    """`myelomet predict --per series ARGS...`: exit code, JSON lines, stderr lines."""
    import json

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--params", str(project), "predict", "--per", "series", *args])
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, rows, err.getvalue().splitlines()


def _study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _check_stored(orthanc: Orthanc, scans: dict[str, list[Path]], rows: list[dict]) -> None:
    """One SR and one Secondary Capture, each a series of one instance, in each original
    study; QIDO lists SR and OT among the study's modalities; the SR reads back with the
    JSON line's probability and the champion's version."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    by_folder = {Path(row["series"]).name: row for row in rows}
    for name, files in scans.items():
        study = _study_uid(files)
        [found] = client.search_for_studies(
            search_filters={"StudyInstanceUID": study}, fields=["ModalitiesInStudy"]
        )
        modalities = set(pydicom.Dataset.from_json(found).ModalitiesInStudy)
        assert {"CT", "SR", "OT"} <= modalities
        series = [pydicom.Dataset.from_json(s) for s in client.search_for_series(study)]
        new = {s.Modality: s for s in series if s.Modality in ("SR", "OT")}
        assert sorted(s.Modality for s in series) == ["CT", "OT", "SR"]
        for ds in new.values():
            assert int(ds.NumberOfSeriesRelatedInstances) == 1
        [sr] = client.retrieve_series(study, new["SR"].SeriesInstanceUID)
        report = hd.sr.Comprehensive3DSR.from_dataset(sr)
        [group] = report.content.get_image_measurement_groups()
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values[codes.PROBABILITY.value] == pytest.approx(by_folder[name]["p_mm"], abs=1e-12)
        versions = [
            item.TextValue
            for item in group[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "111003"
        ]
        assert versions == ["1"]


@pytest.mark.slow
def test_stow_stores_an_sr_and_a_secondary_capture_in_each_original_study(
    orthanc, project, scans, monkeypatch
):
    orthanc.upload(f for files in scans.values() for f in files)
    folders = [str(files[0].parent) for files in scans.values()]

    code, rows, err = _predict(project, monkeypatch, *folders, "--stow", orthanc.dicomweb_url)

    assert code == 0, err
    assert len(rows) == 2 and all("error" not in row for row in rows)
    assert orthanc.instance_count() == 6 + 4
    _check_stored(orthanc, scans, rows)
    assert err[-1].startswith("answered 2 series as DICOM") and err[-1].endswith("0 not delivered")


@pytest.mark.slow
def test_cstore_stores_the_same_objects(orthanc, project, scans, monkeypatch):
    orthanc.upload(f for files in scans.values() for f in files)
    folders = [str(files[0].parent) for files in scans.values()]
    peer = f"{orthanc.aet}@{orthanc.host}:{orthanc.dicom_port}"

    code, rows, err = _predict(project, monkeypatch, *folders, "--cstore", peer)

    assert code == 0, err
    assert orthanc.instance_count() == 6 + 4
    _check_stored(orthanc, scans, rows)


@pytest.mark.slow
def test_an_unreachable_destination_is_one_line_per_series_and_exit_1(
    project, scans, monkeypatch, tmp_path
):
    port = free_port()
    folders = [str(files[0].parent) for files in scans.values()]

    code, rows, err = _predict(
        project,
        monkeypatch,
        *folders,
        "--stow",
        f"http://127.0.0.1:{port}/dicom-web",
        "--cstore",
        f"NOBODY@127.0.0.1:{port}",
        "--dicom-out",
        str(tmp_path / "answers"),
    )

    assert code == 1
    assert len(rows) == 2  # the answers are still printed
    failures = [line for line in err if "not stored" in line]
    assert len(failures) == 4  # each series, by STOW and by C-STORE
    assert all("unreachable" in line for line in failures)
    assert len(list((tmp_path / "answers").glob("*.dcm"))) == 4  # the folder still got them
    for identifier in (Phi().patient_id, Phi().patient_name, "MRN-2233445"):
        assert identifier not in "\n".join(err)


@pytest.mark.slow
def test_refused_credentials_say_which_variables_to_set(project, scans, monkeypatch, tmp_path):
    if missing_packages() is not None:
        pytest.skip(missing_packages())
    files = scans["alpha"]
    with running_orthanc(tmp_path / "orthanc", users={"alice": "right"}) as orthanc:
        requests.post(  # the original study, stored with the right password
            f"{orthanc.http_url}/instances",
            data=files[0].read_bytes(),
            auth=("alice", "right"),
            timeout=30,
        ).raise_for_status()
        monkeypatch.setenv(USER_ENV, "alice")
        monkeypatch.setenv(PASSWORD_ENV, "wrong")

        code, _, err = _predict(
            project, monkeypatch, str(files[0].parent), "--stow", orthanc.dicomweb_url
        )

        assert code == 1
        [line] = [line for line in err if "not stored" in line]
        assert "HTTP 401" in line and USER_ENV in line
        assert orthanc.instance_count() == 1


def test_sending_needs_per_series(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"experiment": "none"}}))
    slice_file = write_series(tmp_path / "scan", 1)[0]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "--params",
                str(params),
                "predict",
                str(slice_file),
                "--dicom-out",
                str(tmp_path / "out"),
            ]
        )
    assert code == 2
    assert "add --per series" in err.getvalue()
    assert not (tmp_path / "out").exists()
