"""`myelomet pull` against a real Orthanc (tests.orthanc_server), over DICOMweb and DIMSE.

A small cohort of CT files full of planted identifiers (names, IDs, accession numbers,
descriptions, private elements) is uploaded; the pulled tree must ingest to the same
manifest and slices as the original folder, hold none of the identifiers in any byte, and
survive a `kill -9` and reruns without a duplicate or a half file.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from bench.bench_phi_leak import find_leaks
from components.data.ingest import ingest
from myelomet.cli import main
from tests import dicom_factory as factory
from tests.orthanc_server import Orthanc, running_orthanc
from tests.processes import free_port

pytestmark = pytest.mark.slow

KEY = "a secret key for the pull tests, 0123456789"
CLASSES = ("MM", "OMBT")
PARAMS = Path(__file__).parents[3] / "params.yaml"

PATIENTS = {
    "MM/alpha": factory.Phi(
        patient_name="Yamada^Tarou",
        patient_id="MRN-4455667",
        birth_date="19510317",
        accession="ACC55512345",
        institution="Saint Planted Infirmary",
    ),
    "OMBT/beta": factory.Phi(
        patient_name="Novak^Bozena",
        patient_id="MRN-7788990",
        birth_date="19470203",
        accession="ACC66623456",
        referring="Kowalczyk^Marek",
    ),
}
MR_ONLY = factory.Phi(
    patient_name="Lindqvist^Astrid", patient_id="MRN-1112223", accession="ACC77734567"
)
UNKNOWN_ACCESSION = "ACC00000001"


def _plant(ds: pydicom.Dataset, phi: factory.Phi, study: str, series: str) -> None:
    """Put the patient's identifiers where a careless source puts them too."""
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDescription = f"spine CT for {phi.patient_name.replace('^', ' ')}"
    ds.SeriesDescription = f"{phi.patient_id} bone window"
    ds.ProtocolName = f"acc {phi.accession}"
    ds.StationName = phi.institution[:16]
    ds.OtherPatientIDs = phi.other_patient_id
    block = ds.private_block(0x0029, "PLANTED NOTES", create=True)
    block.add_new(0x01, "LO", f"{phi.patient_name} {phi.birth_date}")
    block.add_new(0x02, "LT", f"MRN {phi.patient_id}, accession {phi.accession}")


def _write_patient(folder: Path, phi: factory.Phi, seed: int, modality: str = "CT") -> list[Path]:
    """Two series of one study: three single-frame slices, and one two-frame file."""
    study = generate_uid()
    paths = []
    single, multi = generate_uid(), generate_uid()
    for i in range(3):
        path = folder / f"s{i}.dcm"
        written = factory.write_plain(path, phi=phi, seed=seed + i, modality=modality)
        _plant(written.ds, phi, study, single)
        written.ds.InstanceNumber = i + 1
        written.ds.ImagePositionPatient = [-180.0, -180.0, 40.0 + 1.5 * i]
        written.ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if modality == "CT":
        path = folder / "multi.dcm"
        written = factory.write_multiframe(path, frames=2, phi=phi, seed=seed + 10)
        _plant(written.ds, phi, study, multi)
        written.ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def identifiers() -> set[str]:
    """Every planted value worth searching for."""
    found = set()
    for phi in (*PATIENTS.values(), MR_ONLY):
        found |= {
            phi.patient_name,
            phi.patient_id,
            phi.birth_date,
            phi.institution,
            phi.institution_address,
            phi.accession,
            phi.referring,
            phi.operator,
            phi.other_patient_id,
        }
        found |= {part for part in phi.patient_name.split("^") if len(part) >= 4}
    return found


@pytest.fixture
def original(tmp_path: Path) -> Path:
    """The original folder `<CLASS>/<patient>/...` (the MR-only patient sits apart)."""
    root = tmp_path / "original"
    for seed, (folder, phi) in enumerate(PATIENTS.items()):
        _write_patient(root / folder, phi, seed * 100)
    _write_patient(tmp_path / "mr-only", MR_ONLY, 500, modality="MR")
    return root


@pytest.fixture
def cohort_csv(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "cohort.csv"
    path.parent.mkdir()
    lines = ["accession_number,label"]
    lines += [f"{phi.accession},{folder.split('/')[0]}" for folder, phi in PATIENTS.items()]
    lines += [f"{MR_ONLY.accession},MM", f"{UNKNOWN_ACCESSION},OMBT"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def filled(orthanc: Orthanc, original: Path) -> Orthanc:
    orthanc.upload_tree(original)
    orthanc.upload_tree(original.parent / "mr-only")
    return orthanc


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYELOMET_DEID_KEY", KEY)
    for name in ("MYELOMET_PACS_USER", "MYELOMET_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _pull(source: str, cohort: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(
        [
            "--params",
            str(PARAMS),
            "pull",
            "--source",
            source,
            "--cohort",
            str(cohort),
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _report(out: Path) -> dict[int, dict[str, str]]:
    path = out.parent / f"{out.name}.pull_report.csv"
    with path.open(newline="") as f:
        return {int(row["line"]): row for row in csv.DictReader(f)}


def _ingested(root: Path, out: Path) -> Path:
    ingest(root, out, CLASSES, KEY.encode(), progress=False)
    return out


def _same_dataset(a: Path, b: Path) -> None:
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    names = sorted(p.name for p in (a / "slices").iterdir())
    assert names == sorted(p.name for p in (b / "slices").iterdir())
    for name in names:
        assert (a / "slices" / name).read_bytes() == (b / "slices" / name).read_bytes()


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_pull_ingests_to_the_same_dataset_and_leaks_nothing(
    protocol: str, filled: Orthanc, original: Path, cohort_csv: Path, tmp_path: Path, capsys
) -> None:
    source = filled.dicomweb_url if protocol == "dicomweb" else filled.dimse_url
    out = tmp_path / "raw" / "pulled"
    code, printed = _pull(source, cohort_csv, out, capsys)
    assert code == 0, printed

    report = _report(out)
    assert [report[line]["status"] for line in (2, 3, 4, 5)] == [
        "complete",
        "complete",
        "no_ct",
        "not_found",
    ]
    assert report[2]["expected"] == report[2]["received"] == "4"
    assert all(f"cohort line {line}:" in printed for line in (4, 5))
    assert "cohort line 2:" not in printed and "cohort line 3:" not in printed

    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 8
    assert all(p.relative_to(out).parts[1].startswith("pt-") for p in files)
    assert all(p.name.startswith("im-") and p.suffix == ".dcm" for p in files)

    expected = _ingested(original, tmp_path / "processed-original")
    pulled = _ingested(out, tmp_path / "processed-pulled")
    _same_dataset(expected, pulled)

    searched = [*files, *out.parent.glob("*pull*.csv"), *pulled.rglob("*.csv")]
    log = tmp_path / "printed.txt"
    log.write_text(printed)
    assert find_leaks([*searched, log], identifiers(), min_length=4) == {}
    planted = find_leaks(sorted(p for p in original.rglob("*.dcm")), identifiers(), min_length=4)
    assert set(planted) >= {phi.accession for phi in PATIENTS.values()}  # the search finds them


def test_rerun_transfers_nothing_and_fetches_only_what_is_missing(
    filled: Orthanc, cohort_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "raw" / "pulled"
    assert _pull(filled.dicomweb_url, cohort_csv, out, capsys)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")}

    code, printed = _pull(filled.dicomweb_url, cohort_csv, out, capsys)
    assert code == 0 and "pulled 0 new instances" in printed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")} == before

    gone = sorted(before)[3]
    gone.unlink()
    code, printed = _pull(filled.dimse_url, cohort_csv, out, capsys)
    assert code == 0 and "pulled 1 new instances" in printed
    assert sorted(out.rglob("*.dcm")) == sorted(before)
    assert _report(out)[2]["status"] == _report(out)[3]["status"] == "complete"


def test_kill_9_mid_pull_then_rerun_completes_without_duplicates(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    phi = PATIENTS["MM/alpha"]
    root = tmp_path / "big"
    for i in range(8):
        _write_patient(
            root / f"MM/p{i}",
            replace(phi, accession=f"ACC1000{i:04d}", patient_id=f"MRN-{i}"),
            i * 10,
        )
    orthanc.upload_tree(root)
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(
        "accession_number,label\n" + "".join(f"ACC1000{i:04d},MM\n" for i in range(8))
    )
    out = tmp_path / "raw" / "pulled"
    command = [
        sys.executable, "-m", "myelomet.cli", "--params", str(PARAMS), "pull",
        "--source", orthanc.dimse_url, "--cohort", str(cohort), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "MYELOMET_DEID_KEY": KEY}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("im-*.dcm"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survivors = list(out.rglob("im-*.dcm"))
    assert 6 <= len(survivors) < 32
    for path in survivors:
        assert pydicom.dcmread(path).pixel_array.size  # whole files only under a final name

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = list(out.rglob("*"))
    assert not [p for p in files if p.name.endswith(".partial")]
    assert len([p for p in files if p.is_file()]) == 32
    report = _report(out)
    assert {row["status"] for row in report.values()} == {"complete"}, report
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "pulled 0 new instances" in again.stdout


def test_unreachable_server_is_one_line_and_exit_1(
    cohort_csv: Path, tmp_path: Path, capsys
) -> None:
    port = free_port()
    for source in (f"http://127.0.0.1:{port}/dicom-web", f"dimse://ORTHANC@127.0.0.1:{port}"):
        out = tmp_path / "raw" / source.split(":")[0]
        code, printed = _pull(source, cohort_csv, out, capsys)
        errors = [line for line in printed.splitlines() if line.startswith("myelomet pull: error")]
        assert code == 1 and len(errors) == 1 and "unreachable" in errors[0], printed
        assert _report(out)[2]["status"] == "error"
        assert _report(out)[3]["status"] == "not_tried"


def test_refused_credentials_are_one_line(
    original: Path, cohort_csv: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    with running_orthanc(tmp_path / "orthanc", users={"reader": "s3cret-pass"}) as server:
        server.upload_tree(original)
        out = tmp_path / "raw" / "pulled"
        code, printed = _pull(server.dicomweb_url, cohort_csv, out, capsys)
        assert code == 1 and len([line for line in printed.splitlines() if "401" in line]) == 1

        monkeypatch.setenv("MYELOMET_PACS_USER", "reader")
        monkeypatch.setenv("MYELOMET_PACS_PASSWORD", "s3cret-pass")
        code, printed = _pull(server.dicomweb_url, cohort_csv, out, capsys)
        assert code == 0 and "s3cret-pass" not in printed
        assert _report(out)[2]["status"] == "complete"


def test_pulled_tree_under_another_key_is_rejected(
    filled: Orthanc, cohort_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "raw" / "pulled"
    assert _pull(filled.dicomweb_url, cohort_csv, out, capsys)[0] == 0
    with pytest.raises(ValueError, match="no usable CT slices"):
        ingest(
            out, tmp_path / "processed", CLASSES, b"another key, 16 bytes at least", progress=False
        )
    rejects = (tmp_path / "processed" / "rejects.csv").read_text()
    assert rejects.count("pulled with another de-identification key") == 8
