"""No planted identifier, in any form a copy could take, leaves the project: not in ingest's
outputs, not in what ingest, `predict --per series` or the served model print or log.

The DICOM tree holds what a hostile or careless source writes: names with `^`, `=` groups,
non-ASCII letters and apostrophes; IDs in OtherPatientIDsSequence and in a number's field;
birth dates, accession numbers, institutions and physicians typed into other tags
(SeriesDescription, StationName, ProtocolName, the scanner's maker, model and kernel, the
body part) in other formats; leading-zero UIDs. Every output byte and every line printed is
searched for every form of every planted identifier (bench/bench_phi_leak.py's
`fuzzy_forms`: dates in other formats, name parts, transliterations, separators, case).
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bench.bench_phi_leak import find_leaks
from tests import dicom_factory as factory
from tests.serving_server import CHAMPION, mlflow_model_server, register_tiny_champion
from tests.tool_env import project_env

pytestmark = pytest.mark.slow

KEY = "a secret key for this test only, 0123456789"
# Shortest form searched: `Wu^Li` is searched as `WU LI`, `LI, WU`, `wuli` and the like.
MIN_FORM = 4


@dataclass(frozen=True)
class Planted:
    """One patient's identifiers and the other tags they are copied into."""

    folder: str
    label: str
    phi: factory.Phi
    other_id: str
    copies: dict[str, str] = field(default_factory=dict)  # keyword -> value
    instance_number: bytes = b""  # an ID typed into an IS, written as it is

    def identifiers(self) -> set[str]:
        p = self.phi
        return {
            p.patient_name,
            p.patient_id,
            p.birth_date,
            p.institution,
            p.institution_address,
            p.accession,
            p.referring,
            p.operator,
            p.other_patient_id,
            self.other_id,
            *([self.instance_number.decode()] if self.instance_number else []),
        }


PATIENTS = (
    Planted(
        folder="MM/p1",
        label="MM",
        phi=factory.Phi(
            patient_name="Yamada^Tarou=山田^太郎",
            patient_id="MRN-4455667",
            birth_date="19510317",
            accession="ACC55512345",
            referring="Welby^Marcus",
        ),
        other_id="OLD-99887766",
        copies={
            "SeriesDescription": "SPINE 1951-03-17 ACC-55512345",
            "StationName": "17.03.1951",
            "ProtocolName": "acc 555 12345 Marcus Welby",
            "Manufacturer": "GE Healthcare Saint Example General Hospital",
            "ManufacturerModelName": "Dr Marcus Welby",
            "ConvolutionKernel": "OLD 99887766",
            "BodyPartExamined": "Tarou Yamada",
            "StudyDescription": "山田 太郎",
        },
        instance_number=b"MRN4455667x",
    ),
    Planted(
        folder="MM/p2",
        label="MM",
        phi=factory.Phi(
            patient_name="Müller^Jürgen",
            patient_id="MRN-7766554",
            birth_date="19620704",
            accession="ACC66677788",
        ),
        other_id="OLD-11223344",
        copies={
            "StationName": "04/07/1962",
            "Manufacturer": "SIEMENS",
            "ManufacturerModelName": "MUELLER JUERGEN",
            "ConvolutionKernel": "Muller",
            "SeriesDescription": "Juergen Mueller 4 Jul 1962",
        },
    ),
    Planted(
        folder="OMBT/p3",
        label="OMBT",
        phi=factory.Phi(
            patient_name="O'Brien^Sean",
            patient_id="MRN-1122334",
            birth_date="19480229",
            accession="ACC12121212",
        ),
        other_id="OLD-55556666",
        copies={
            "Manufacturer": "Philips",
            "ManufacturerModelName": "OBRIEN",
            "ProtocolName": "Sean O’Brien",
            "BodyPartExamined": "O BRIEN 29.02.1948",
        },
    ),
    Planted(
        folder="OMBT/p4",
        label="OMBT",
        phi=factory.Phi(
            patient_name="Wu^Li",
            patient_id="MRN-5566778",
            birth_date="19700101",
            accession="ACC34343434",
        ),
        other_id="OLD-77778888",
        copies={
            "Manufacturer": "TOSHIBA",
            "ConvolutionKernel": "WU LI",
            "SeriesDescription": "Li, Wu 1970-01-01",
            "StationName": "acc-343-43434",
        },
    ),
)
LABEL_CELL = "MRN9876543200"  # an MRN where the label should be: a shifted column


def _write(root: Path, planted: Planted, seed: int) -> list[Dataset]:
    """A CT file and a file of another modality for the patient; both planted."""
    written = []
    for name, modality in (("1.dcm", "CT"), ("2.dcm", "Yamada Tarou")):
        ds = factory.ct_dataset(phi=planted.phi, seed=seed, modality=modality)
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the names need it
        other = Dataset()
        other.PatientID = planted.other_id
        other.IssuerOfPatientID = "OLD HOSPITAL"
        ds.OtherPatientIDsSequence = Sequence([other])
        for keyword, value in planted.copies.items():
            setattr(ds, keyword, value)
        # leading-zero UIDs, as some scanners write them
        ds.SeriesInstanceUID = f"1.2.840.113619.2.55.3.00{seed}2.4455"
        ds.SOPInstanceUID = f"1.2.840.113619.2.55.3.00{seed}2.4455.0{len(written)}1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if planted.instance_number:
            del ds.InstanceNumber
            ds[0x00200013] = RawDataElement(
                0x00200013, "IS", len(planted.instance_number), planted.instance_number, 0,
                False, True,
            )  # fmt: skip
        path = root / planted.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(ds)
    return written


def _identifiers(datasets: list[Dataset]) -> set[str]:
    found = {LABEL_CELL, "OLD HOSPITAL", "Yamada Tarou"}
    for planted in PATIENTS:
        found |= planted.identifiers()
    for ds in datasets:
        found |= {
            str(ds.get(k)) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        }
        found.add(str(ds.FrameOfReferenceUID))
    return found


def _run(command: list[str], cwd: Path, logs: Path, name: str, env: dict[str, str]) -> int:
    """Run a myelomet command, its stdout and stderr kept under `logs` for the search."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, timeout=600)
    (logs / f"{name}.stdout").write_bytes(done.stdout)
    (logs / f"{name}.stderr").write_bytes(done.stderr)
    return done.returncode


def test_no_planted_identifier_leaves_ingest_predict_or_the_server(tmp_path):
    project, raw, logs = tmp_path / "project", tmp_path / "project" / "raw", tmp_path / "logs"
    logs.mkdir()
    datasets = [ds for i, p in enumerate(PATIENTS) for ds in _write(raw, p, seed=i + 1)]
    identifiers = _identifiers(datasets)
    params = {"data": {"dicom_root": "raw"}, "ingest": {"out": "processed"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    labels = project / "labels.csv"
    labels.write_text(f"patient_id,label\nMRN-4455667,{LABEL_CELL}\nMRN-1122334,OMBT\n")
    store = register_tiny_champion(tmp_path / "store")
    env = project_env({"MYELOMET_DEID_KEY": KEY, "MLFLOW_TRACKING_URI": store})
    myelomet = ["myelomet", "--params", str(project / "params.yaml")]

    assert _run([*myelomet, "ingest"], project, logs, "ingest", env) == 0
    labelled = [*myelomet, "ingest", "--labels-csv", str(labels), "--out", "by_csv"]
    assert _run(labelled, project, logs, "ingest-labels-csv", env) == 0
    folders = [str(raw / p.folder) for p in PATIENTS]
    predict = [*myelomet, "predict", "--per", "series", "--model", CHAMPION, *folders]
    assert _run(predict, tmp_path, logs, "predict", env) == 0

    manifest = (project / "processed" / "manifest.csv").read_text()
    assert manifest.count("\n") == 1 + len(PATIENTS)  # one CT slice each, the rest rejected
    for label in ("GE", "Siemens", "Philips", "Canon/Toshiba", "scanner-", "kernel-", "bodypart-"):
        assert label in manifest
    rejects = (project / "by_csv" / "rejects.csv").read_text()
    assert "line 2 of the labels CSV" in rejects
    series = [json.loads(line) for line in (logs / "predict.stdout").read_text().splitlines()]
    assert len(series) == len(PATIENTS) and all("p_mm" in row for row in series)

    files = sorted(raw.rglob("*.dcm"))
    body = {
        "dataframe_split": {
            "columns": ["dicom", "name"],
            "data": [
                [base64.b64encode(f.read_bytes()).decode(), f"item{i}.dcm"]
                for i, f in enumerate(files)
            ],
        }
    }
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    server_log = logs / "server.log"
    server_env = {"MLFLOW_TRACKING_URI": store}
    with mlflow_model_server(CHAMPION, server_env, cwd=workdir, log=server_log) as url:
        response = requests.post(f"{url}/invocations", json=body, timeout=120)
        (logs / "response.json").write_bytes(response.content)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert sum(row["error"] is None for row in answers) == len(PATIENTS)

    outputs = [
        p
        for folder in (project / "processed", project / "by_csv", logs)
        for p in folder.rglob("*")
        if p.is_file()
    ]
    assert find_leaks(outputs, identifiers, min_length=MIN_FORM) == {}
