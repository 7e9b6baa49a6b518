import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components import tracking
from components.data.dicom import read_ct
from components.registry.pyfunc import ALLOW_PATHS_ENV, MAX_REQUEST_BYTES_ENV, log_candidate
from tests.components.registry.registry_support import THRESHOLDS, keras_p, run_cli
from tests.dicom_factory import write_mr, write_multiframe
from tests.model_factory import BACKBONE, CLASSES, POSITIVE, WINDOWS

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
    with pytest.raises(MlflowException, match='send a "dicom" column'):
        model.predict(None, pd.DataFrame({"name": ["x"]}))
    with pytest.raises(MlflowException, match="dicom holds str, not bytes"):
        model.predict(None, pd.DataFrame({"dicom": ["aGVsbG8="]}))
    with pytest.raises(MlflowException, match="row 0 has neither dicom nor path"):
        model.predict(None, pd.DataFrame({"dicom": [None], "path": [None]}))

    monkeypatch.setattr(model, "max_request_bytes", 1000)
    with pytest.raises(MlflowException, match="over the limit of 1000"):
        model.predict(None, pd.DataFrame({"dicom": [ct_files[0].read_bytes()]}))

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    with pytest.raises(MlflowException, match="does not read files from its own disk"):
        model.predict(None, pd.DataFrame({"path": [str(ct_files[0])]}))
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


@pytest.mark.parametrize("damage", ["pickle", "keras"])
def test_a_damaged_model_is_one_line_naming_the_file(logged, ct_files, params, tmp_path, damage):
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(tmp_path)))
    if damage == "pickle":
        broken = local / "python_model.pkl"
        broken.write_bytes(broken.read_bytes()[:40])
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
            store, study, "ensemble", [BACKBONE, "MobileNet"], models_dir, WINDOWS, CLASSES,
            POSITIVE, THRESHOLDS,
        )  # fmt: skip
