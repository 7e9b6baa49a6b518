import importlib.util
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components import tracking
from components.data.dicom import read_ct
from components.registry.candidate_model import log_candidate
from components.registry.pyfunc import (
    ALLOW_PATHS_ENV,
    MAX_REQUEST_BYTES_ENV,
    RequestRefused,
)
from tests.components.registry.registry_support import THRESHOLDS, keras_p, run_cli
from tests.dicom_factory import write_mr, write_multiframe, write_plain, write_raw_attribute
from tests.model_factory import BACKBONE, Candidate, models_config
from tests.tool_env import project_env

CONTRACT = ["file", "frame", "p_mm", "label", "threshold", "error"]


@pytest.fixture(scope="module")
def pyfunc(logged):
    return mlflow.pyfunc.load_model(logged.model_uri)


def test_the_candidate_is_logged_as_a_pyfunc_in_a_child_run_of_the_study(store, study, logged):
    client = MlflowClient(store.tracking_uri)
    run = client.get_run(logged.run_id)
    assert run.data.tags[tracking.PARENT_TAG] == study
    assert run.data.tags[tracking.KIND_TAG] == "candidate"
    assert run.data.tags[tracking.BACKBONE_TAG] == run.data.tags["candidate"] == BACKBONE
    assert logged.tags["data_version"] == "dv1"
    assert logged.tags["backbones"] == BACKBONE
    assert logged.tags["threshold.slice"] == "0.4"

    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature.inputs.input_names() == ["dicom", "path", "name", "per"]
    assert [t.name for t in info.signature.inputs.input_types()] == ["binary", *["string"] * 3]
    assert not info.signature.inputs.required_input_names()
    assert info.signature.outputs.input_names() == [*CONTRACT, "series", "n_slices", "n_rejected"]
    assert info.flavors["python_function"]["code"] == "code"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(logged.model_uri)).read_text()
    for dist in ("mlflow", "tensorflow", "keras", "pydicom", "pandas"):
        assert f"{dist}==" in requirements
    spec = mlflow.pyfunc.load_model(logged.model_uri).unwrap_python_model().predictor.spec
    assert spec.keras_backend == keras.backend.backend()  # what the members trained on


def test_the_pyfunc_predicts_dicom_bytes_and_paths_like_keras_on_model_input(
    pyfunc, models_dir, ct_files, tmp_path
):
    expected = keras_p(models_dir, [read_ct(f).hu[0] for f in ct_files])
    multi = write_multiframe(tmp_path / "multi.dcm", frames=2)
    mr = write_mr(tmp_path / "mr.dcm").path

    out = pyfunc.predict(
        pd.DataFrame(
            {
                "dicom": [f.read_bytes() for f in ct_files] + [b"garbage", mr.read_bytes()],
                "name": ["a", "b", "c", "junk", None],
            }
        )
    )
    assert list(out.columns) == CONTRACT
    assert list(out["file"]) == ["a", "b", "c", "junk", "dicom[4]"]
    np.testing.assert_allclose(out["p_mm"][:3].astype(float), expected, rtol=1e-5, atol=1e-6)
    assert list(out["label"][:3]) == ["MM" if p >= 0.4 else "OMBT" for p in expected]
    assert list(out["threshold"][:3]) == [0.4] * 3
    assert out["error"][:3].isna().all() and out["frame"][:3].isna().all()
    assert out["error"][3].startswith("not_dicom") and out["error"][4].startswith("modality_not_ct")
    assert out.loc[3:, "p_mm"].isna().all()

    by_path = pyfunc.predict(pd.DataFrame({"path": [str(ct_files[0]), str(multi.path)]}))
    assert list(by_path["file"]) == [str(ct_files[0])] + [str(multi.path)] * 2
    assert list(by_path["frame"]) == [None, 0, 1]
    np.testing.assert_allclose(by_path["p_mm"][0], expected[0], rtol=1e-5)
    json.dumps(by_path.to_dict(orient="records"))  # what the scoring server returns


def test_the_pyfunc_refuses_requests_it_cannot_serve(pyfunc, ct_files, monkeypatch):
    model = pyfunc.unwrap_python_model()

    def refused(frame: pd.DataFrame, match: str) -> None:
        with pytest.raises(RequestRefused, match=match) as caught:
            model.predict(None, frame)
        caught.value.message = "Failed to predict data '<the request>'. \nError: ..."
        assert re.search(match, caught.value.message) and "\n" not in caught.value.message

    refused(pd.DataFrame({"name": ["x"]}), 'send a "dicom" column')
    monkeypatch.setattr(model, "max_request_bytes", 1000)
    refused(pd.DataFrame({"dicom": [ct_files[0].read_bytes()]}), "over the limit of 1000")

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    refused(pd.DataFrame({"path": [str(ct_files[0])]}), "does not read files from its own disk")
    monkeypatch.setenv(ALLOW_PATHS_ENV, "1")
    assert model.predict(None, pd.DataFrame({"path": [str(ct_files[0])]}))["error"].isna().all()


def test_max_request_bytes_comes_from_the_environment(logged, monkeypatch):
    monkeypatch.setenv(MAX_REQUEST_BYTES_ENV, "12345")
    assert (
        mlflow.pyfunc.load_model(logged.model_uri).unwrap_python_model().max_request_bytes == 12345
    )
    monkeypatch.setenv(MAX_REQUEST_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match="expected a positive integer"):
        mlflow.pyfunc.load_model(logged.model_uri)


def test_the_pyfunc_and_the_cli_answer_per_series(logged, pyfunc, ct_files, params):
    frame = pd.DataFrame(
        {
            "dicom": [f.read_bytes() for f in ct_files],
            "name": [f"scan/{f.name}" for f in ct_files],
            "per": "series",
        }
    )
    out = pyfunc.predict(frame)
    assert list(out.columns) == [
        "series",
        "p_mm",
        "label",
        "threshold",
        "n_slices",
        "n_rejected",
        "error",
    ]
    assert sorted(out["series"]) == [f"scan (series {k})" for k in (1, 2, 3)]  # a UID each
    assert set(out["n_slices"]) == {1} and set(out["threshold"]) == {THRESHOLDS["patient"]}
    with pytest.raises(MlflowException, match="per is"):
        pyfunc.predict(frame.assign(per=["series", "slice", "series"]))

    folder = ct_files[0].parent
    code, stdout, _ = run_cli(
        params, "predict", "--model", logged.model_uri, "--per", "series", str(folder)
    )
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and [line["series"] for line in lines] == [
        f"{folder} (series {k})" for k in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    "damage", ["pickle", "pickle-overflow", "pickle-random", "mlmodel-not-yaml", "keras"]
)
def test_a_damaged_model_is_one_line_naming_the_file(logged, ct_files, params, tmp_path, damage):
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    broken = local / "python_model.pkl"
    if damage == "pickle":
        broken.write_bytes(broken.read_bytes()[:40])
    elif damage == "pickle-overflow":  # a protocol-4 frame longer than any machine holds
        broken.write_bytes(b"\x80\x04\x95" + b"\xff" * 8)
    elif damage == "pickle-random":
        broken.write_bytes(np.random.default_rng(20).bytes(4096))
    elif damage == "mlmodel-not-yaml":
        broken = local / "MLmodel"
        broken.write_text("flavors: [python_function\n  loader: {: x\n")
    else:
        broken = local / "artifacts" / "model.keras"
        broken.write_bytes(broken.read_bytes()[:2000])

    code, _, err = run_cli(params, "predict", "--model", str(local), str(ct_files[0]))

    ours = [line for line in err.splitlines() if line.startswith("myelomet predict: error:")]
    assert code == 2 and len(ours) == 1 and "Traceback" not in err
    assert broken.name in ours[0] and ("myelomet evaluate" in ours[0] or "retrain" in ours[0])


def test_log_candidate_needs_the_training_outputs_of_every_member(store, study, models_dir):
    with pytest.raises(FileNotFoundError, match="run `myelomet train` for MobileNet"):
        log_candidate(
            store,
            study,
            Candidate("ensemble", (BACKBONE, "MobileNet"), THRESHOLDS),
            models_config(models_dir),
        )


def test_one_bad_file_is_one_error_row_and_the_rest_is_answered(pyfunc, ct_files, tmp_path):
    abc = write_raw_attribute(tmp_path / "abc.dcm", "RescaleSlope", b"abc ")
    tiny = write_plain(tmp_path / "tiny.dcm", slope=1e-300).path
    frame = pd.DataFrame(
        {
            "dicom": [
                ct_files[0].read_bytes(),
                abc.read_bytes(),
                "aGVsbG8=",
                None,
                tiny.read_bytes(),
            ],
            "name": ["good.dcm", "abc.dcm", "text", "empty", "tiny.dcm"],
        }
    )

    out = pyfunc.predict(frame)

    assert list(out["file"]) == ["good.dcm", "abc.dcm", "text", "empty", "tiny.dcm"]
    assert out["error"][0] is None and 0 <= out["p_mm"][0] <= 1
    assert out["p_mm"][1:].isna().all()
    assert out["error"][1].startswith("bad_rescale: RescaleSlope is not one number")
    assert out["error"][2].startswith("not_dicom: row 2: dicom holds str, not bytes")
    assert out["error"][3].startswith("not_dicom: row 3 has neither dicom nor path")
    assert out["error"][4].startswith("bad_rescale: RescaleSlope is 1e-300")
    [series] = pyfunc.predict(
        frame.assign(name=[f"scan/{n}" for n in frame["name"]], per="series")
    )[["series", "n_slices", "n_rejected"]].to_dict(orient="records")
    assert series == {"series": "scan", "n_slices": 1, "n_rejected": 4}


def test_predict_prints_a_line_for_each_file_good_or_bad(logged, ct_files, params, tmp_path):
    abc = write_raw_attribute(tmp_path / "abc.dcm", "RescaleSlope", b"abc ")

    code, out, err = run_cli(
        params, "predict", "--model", logged.model_uri, str(ct_files[0]), str(abc)
    )

    good, bad = (json.loads(line) for line in out.splitlines())
    assert code == 0 and "Traceback" not in err
    assert good["file"] == str(ct_files[0]) and 0 <= good["p_mm"] <= 1
    assert bad == {
        "file": str(abc),
        "error": "bad_rescale: RescaleSlope is not one number; the file's modality LUT is "
        "broken, export the series again",
    }


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_a_keras_backend_that_is_not_installed_is_one_line(logged, ct_files, params):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "myelomet.cli",
            "--params",
            str(params),
            "predict",
            "--model",
            logged.model_uri,
            str(ct_files[0]),
        ],
        env=project_env({"KERAS_BACKEND": "torch"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "myelomet predict: error: KERAS_BACKEND=torch needs torch, which is not installed "
        "here; set KERAS_BACKEND to tensorflow or jax, the backends myelomet installs"
    )


def _damaged_copy(store, tmp_path: Path, damage: str, artifacts: Path | None = None) -> Path:
    """A project whose params point at a copy of the store's database (which must exist: ask
    for the `logged` fixture), damaged as named, and at the store's artifacts (or at
    `artifacts`: a moved project)."""
    database = Path(store.tracking_uri.removeprefix("sqlite:///"))
    copy = tmp_path / "mlruns" / "mlflow.db"
    copy.parent.mkdir()
    data = database.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "corrupt":  # a run of pages overwritten in the middle of the file
        middle = len(data) // 2
        data = data[:middle] + np.random.default_rng(3).bytes(16384) + data[middle + 16384 :]
    elif damage == "not-sqlite":
        data = b"this is not a database\n" * 100
    copy.write_bytes(data)
    params = tmp_path / "params.yaml"
    artifacts = artifacts or Path(store.artifact_location.removeprefix("file://"))
    params.write_text(
        yaml.safe_dump(
            {"tracking": {"uri": f"sqlite:///{copy}", "artifacts": str(artifacts),
                          "experiment": store.experiment}}
        )
    )  # fmt: skip
    return params


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not-sqlite"])
def test_a_damaged_store_is_one_line_in_predict_and_doctor(
    logged, store, ct_files, tmp_path, damage, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _damaged_copy(store, tmp_path, damage)
    for command in (["predict", str(ct_files[0])], ["doctor"]):
        code, out, err = run_cli(params, *command)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith(f"myelomet {command[0]}: error: the MLflow database ")
        assert " is damaged (" in err and "restore it from a backup" in err


def test_a_locked_store_is_one_line_after_the_busy_timeout(
    logged, store, ct_files, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "STORE_BUSY_TIMEOUT_S", 0.5)
    params = _damaged_copy(store, tmp_path, "intact")
    assert run_cli(params, "doctor")[0] == 0
    holder = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for command in (["predict", str(ct_files[0])], ["doctor"]):
            started = time.monotonic()
            code, _, err = run_cli(params, *command)
            assert code == 2 and err.count("\n") == 1 and "stayed locked" in err, err
            assert time.monotonic() - started < 30
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run_cli(params, "doctor")[0] == 0


def test_a_store_another_process_writes_to_is_one_line_in_doctor_relocate(
    logged, store, tmp_path, monkeypatch
):
    """The lock comes after the integrity check here (a writer does not stop readers): the
    rewrite's own sqlite error is the one line."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _damaged_copy(store, tmp_path, "intact", artifacts=tmp_path / "moved-artifacts")
    holder = sqlite3.connect(tmp_path / "mlruns" / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        code, out, err = run_cli(params, "doctor", "--relocate")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("myelomet doctor: error: the MLflow database failed (OperationalError")
    assert "database is locked" in err and "run `myelomet doctor`" in err
    code, out, _ = run_cli(params, "doctor", "--relocate")
    assert code == 0 and "relocated the MLflow store" in out
