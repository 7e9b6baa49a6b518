"""The Predictor on either engine: onnxruntime answers as Keras does, and the ONNX path
imports neither Keras, TensorFlow nor JAX."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from components.registry import engines
from components.registry.engines import (
    ENGINE_ENV,
    EngineUnavailable,
    OnnxModel,
    choose_engine,
)
from components.registry.pyfunc import load_predictor
from components.training.model_files import ModelFileError
from tests.components.registry.registry_support import THRESHOLDS, run_cli
from tests.dicom_factory import write_ct_files
from tests.model_factory import BACKBONE, tiny_model, write_models_dir
from tests.onnx_files import save_pyfunc, write_onnx

FRAMEWORKS = ("tensorflow", "keras", "jax")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(model.keras, model.onnx) of the tiny model."""
    root = tmp_path_factory.mktemp("engines")
    model = tiny_model()
    keras_file = write_models_dir(root, model) / BACKBONE / "model.keras"
    return keras_file, write_onnx(model, root / "model.onnx")


@pytest.fixture(scope="module")
def folder(files, tmp_path_factory):
    """A pyfunc folder with both files."""
    return save_pyfunc(tmp_path_factory.mktemp("pyfunc") / "model", *files, THRESHOLDS)


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    return write_ct_files(tmp_path_factory.mktemp("dicom") / "scan", 6)


def _python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run code in a fresh interpreter; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_pyfunc_imports_no_framework():
    loaded = _python(
        f"""
        import json, sys
        import components.registry.pyfunc
        print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))
        """
    )
    assert loaded == []


def test_the_onnx_engine_answers_as_keras_per_slice_and_per_series(folder, dicom):
    on_keras = load_predictor(str(folder), engine="keras")
    on_onnx = load_predictor(str(folder), engine="onnx")

    assert (on_keras.engine, on_onnx.engine) == ("keras", "onnx")
    assert isinstance(on_onnx.models[0], OnnxModel)
    for per in ("predict_sources", "predict_series"):
        a, b = getattr(on_keras, per)(dicom), getattr(on_onnx, per)(dicom)
        assert [r["label"] for r in a] == [r["label"] for r in b]
        np.testing.assert_allclose([r["p_mm"] for r in a], [r["p_mm"] for r in b], atol=1e-4)
        assert [{k: v for k, v in r.items() if k != "p_mm"} for r in a] == [
            {k: v for k, v in r.items() if k != "p_mm"} for r in b
        ]
    assert len({r["label"] for r in on_keras.predict_sources(dicom)}) == 2  # both labels occur


def test_predicting_on_onnx_imports_no_framework(folder, dicom, monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "onnx")
    out = _python(
        f"""
        import json, sys
        import mlflow.pyfunc
        import pandas as pd
        model = mlflow.pyfunc.load_model({str(folder)!r})
        rows = model.predict(pd.DataFrame({{"path": {[str(f) for f in dicom]!r}}}))
        loaded = [m for m in {FRAMEWORKS!r} if m in sys.modules]
        engine = model.unwrap_python_model().predictor.engine
        print(json.dumps({{"engine": engine, "p": list(rows["p_mm"]), "loaded": loaded}}))
        """
    )
    on_keras = load_predictor(str(folder), engine="keras").predict_sources(dicom)
    assert out["engine"] == "onnx" and out["loaded"] == []
    np.testing.assert_allclose(out["p"], [r["p_mm"] for r in on_keras], atol=1e-4)


def test_predict_engine_onnx_prints_the_keras_answers(folder, dicom, params):
    answers = {}
    for engine in engines.ENGINES:
        code, out, err = run_cli(
            params, "predict", "--model", str(folder), "--engine", engine, str(dicom[0].parent)
        )
        assert code == 0, err
        answers[engine] = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in answers["keras"]] == [r["label"] for r in answers["onnx"]]
    np.testing.assert_allclose(
        [r["p_mm"] for r in answers["keras"]], [r["p_mm"] for r in answers["onnx"]], atol=1e-4
    )


@pytest.mark.parametrize("before_engines", [False, True])
def test_onnx_asked_of_a_version_without_onnx_files_is_one_line(
    files, dicom, params, tmp_path, before_engines
):
    without = save_pyfunc(
        tmp_path / "model", files[0], None, THRESHOLDS, model_config=not before_engines
    )

    with pytest.raises(EngineUnavailable, match="holds no ONNX files") as caught:
        load_predictor(str(without), engine="onnx")
    code, _, err = run_cli(
        params, "predict", "--model", str(without), "--engine", "onnx", str(dicom[0])
    )

    assert "use engine keras" in str(caught.value) and "\n" not in str(caught.value)
    assert code == 2 and len(err.splitlines()) == 1 and "--engine keras" in err
    assert load_predictor(str(without)).engine == "keras"  # Keras is installed here


def test_a_damaged_onnx_file_is_one_line_naming_it(files, dicom, params, tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(files[1].read_bytes()[:3000])
    with pytest.raises(ModelFileError, match="cannot be loaded by onnxruntime") as caught:
        OnnxModel(broken)
    folder = save_pyfunc(tmp_path / "model", files[0], broken, THRESHOLDS)

    code, _, err = run_cli(
        params, "predict", "--model", str(folder), "--engine", "onnx", str(dicom[0])
    )

    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be loaded by onnxruntime" in err


def test_the_engine_is_the_load_s_choice_else_the_environment_else_keras_if_installed(
    monkeypatch,
):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert choose_engine(None, has_onnx=True) == "keras"
    monkeypatch.setenv(ENGINE_ENV, "onnx")
    assert choose_engine(None, has_onnx=True) == "onnx"
    assert choose_engine("keras", has_onnx=True) == "keras"
    monkeypatch.setenv(ENGINE_ENV, "tflite")
    with pytest.raises(
        ValueError, match=f"{ENGINE_ENV} .tflite.: expected one of keras, onnx, auto"
    ):
        choose_engine(None, has_onnx=True)

    monkeypatch.delenv(ENGINE_ENV)
    monkeypatch.setattr(engines, "keras_installed", lambda: False)  # a serve install
    assert choose_engine(None, has_onnx=True) == "onnx"
    with pytest.raises(EngineUnavailable, match="Keras is not installed"):
        choose_engine(None, has_onnx=False)
    with pytest.raises(EngineUnavailable, match="use engine onnx"):
        choose_engine("keras", has_onnx=True)


def test_answers_as_dicom_need_the_keras_engine(folder, dicom, params, tmp_path):
    code, out, err = run_cli(
        params,
        "predict",
        "--model",
        str(folder),
        "--engine",
        "onnx",
        "--per",
        "series",
        "--dicom-out",
        str(tmp_path / "answers"),
        str(dicom[0]),
    )

    assert code == 2 and out == "" and "use --engine keras" in err
    assert not (tmp_path / "answers").exists() or not any((tmp_path / "answers").iterdir())
