"""A serve install (`pip install 'myelomet[serve]'`: no TensorFlow, JAX or Keras) serves the
champion from its ONNX files: `mlflow models serve -m models:/myelomet@champion --env-manager
local` answers DICOM requests as the Keras engine does here.

The venv is built by uv at requirements.lock's versions (from uv's wheel cache: seconds once
`make install` has filled it). The champion is registered in a SQLite store here and reached
through an `mlflow server` of the full install, as a serving box reaches the group's server:
the serve install's mlflow-skinny reads no SQL store itself.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests

from components.registry.engines import ENGINE_ENV
from components.registry.onnx_export import ONNX_TAG
from components.registry.pyfunc import load_predictor
from tests.dicom_factory import write_ct_files
from tests.processes import await_answer, free_port, stop
from tests.serving_server import CHAMPION, register_tiny_champion

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240
ABSENT = ("tensorflow", "jax", "keras", "tf2onnx", "prefect", "dvc", "great_expectations")


def _run(
    command: list[str | Path], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """A venv with only `.[serve]`, at the lock's versions."""
    venv = tmp_path_factory.mktemp("serve-install") / "venv"
    uv = Path(sys.executable).parent / "uv"
    env = {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(ROOT / ".cache/uv"))}
    started = time.monotonic()
    _run([uv, "venv", "-q", venv, "--python", sys.executable], env)
    _run(
        [uv, "pip", "install", "-q", "--native-tls", "--python", venv / "bin/python"]
        + ["-c", ROOT / "requirements.lock", f"{ROOT}[serve]"],
        env,
    )
    print(f"serve venv built in {time.monotonic() - started:.1f} s")
    return venv


@contextmanager
def _server(command: list[str | Path], ping: str, env: Mapping[str, str], log: Path) -> Iterator:
    """Run a server from a folder of its own until `ping` answers 200; stop it after."""
    cwd = log.parent / "cwd"
    cwd.mkdir()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(c) for c in command],
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await_answer(
            " ".join(map(str, command[:3])),
            proc,
            log,
            lambda: requests.get(ping, timeout=2).status_code == 200,
            STARTUP_TIMEOUT_S,
        )
        yield
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> str:
    """The tracking URI of a SQLite store whose champion is the tiny model, ONNX included."""
    return register_tiny_champion(tmp_path_factory.mktemp("champion"), onnx=True)


@pytest.fixture(scope="module")
def tracking(champion, tmp_path_factory) -> Iterator[str]:
    """An `mlflow server` of the full install on the champion's store; yields its URL."""
    port = free_port()
    server = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", champion]
    server += ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    url = f"http://127.0.0.1:{port}"
    with _server(server, f"{url}/health", env, tmp_path_factory.mktemp("tracking") / "log"):
        yield url


def _box(serve_venv: Path, tracking: str, home: Path) -> dict[str, str]:
    """Only what a serving box has: the serve install first on PATH, no engine named
    (without Keras the default is onnx), no project on the path, the group's server."""
    path = f"{serve_venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return {"PATH": path, "HOME": str(home), "MLFLOW_TRACKING_URI": tracking}


@pytest.fixture(scope="module")
def served(serve_venv, tracking, tmp_path_factory) -> Iterator[str]:
    """The champion served by the serve install; yields its URL."""
    logs = tmp_path_factory.mktemp("serve")
    port = free_port()
    serve = [serve_venv / "bin/mlflow", "models", "serve", "-m", CHAMPION]
    serve += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    with _server(serve, f"{url}/ping", _box(serve_venv, tracking, logs), logs / "log"):
        print(f"served in {time.monotonic() - started:.1f} s")
        yield url


@pytest.fixture(scope="module")
def dicom(tmp_path_factory) -> list[Path]:
    return write_ct_files(tmp_path_factory.mktemp("dicom"), 4)


def test_the_serve_install_has_no_framework(serve_venv):
    found = _run(
        [
            serve_venv / "bin/python",
            "-c",
            "import importlib.util as u, onnxruntime, pydicom, mlflow; "
            f"print([m for m in {ABSENT!r} if u.find_spec(m)])",
        ]
    )
    done = subprocess.run(
        [serve_venv / "bin/python", "-c", "import tensorflow"], capture_output=True, text=True
    )
    assert found.strip() == "[]"
    assert done.returncode == 1 and "No module named 'tensorflow'" in done.stderr


def test_the_served_champion_answers_from_onnx_as_keras_does(served, champion, dicom, monkeypatch):
    import mlflow

    data = [[base64.b64encode(f.read_bytes()).decode(), f"scan/{f.name}"] for f in dicom]
    answers = {}
    for per in ("slice", "series"):
        body = {"dataframe_split": {"columns": ["dicom", "name", "per"], "data": []}}
        body["dataframe_split"]["data"] = [[*row, per] for row in data]
        response = requests.post(f"{served}/invocations", json=body, timeout=120)
        assert response.status_code == 200, response.text
        answers[per] = response.json()["predictions"]

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    keras = load_predictor(CHAMPION, champion, engine="keras")
    names = [f"scan/{f.name}" for f in dicom]
    expected = {"slice": keras.predict_sources(dicom, names)}
    expected["series"] = keras.predict_series(dicom, names)  # a series per file
    version = mlflow.MlflowClient(champion).get_model_version_by_alias("myelomet", "champion")

    assert version.tags[ONNX_TAG] == "yes"
    for per, key in (("slice", "file"), ("series", "series")):
        got, want = answers[per], expected[per]
        assert [(r[key], r["label"]) for r in got] == [(r[key], r["label"]) for r in want]
        np.testing.assert_allclose([r["p_mm"] for r in got], [r["p_mm"] for r in want], atol=1e-4)
    assert len({r["label"] for r in answers["slice"]}) == 2  # both labels occur


def test_predict_in_the_serve_install_runs_on_onnx(serve_venv, tracking, champion, dicom, tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    folder = str(dicom[0].parent)
    command = [serve_venv / "bin/myelomet", "predict", "--model", CHAMPION, "--per", "series"]

    out = _run([*command, folder], _box(serve_venv, tracking, tmp_path), tmp_path)
    refused = subprocess.run(
        [str(c) for c in command] + ["--engine", "keras", folder],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_box(serve_venv, tracking, tmp_path),
    )

    keras = load_predictor(CHAMPION, champion, engine="keras").predict_series([folder])
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["series"], r["label"]) for r in rows] == [(r["series"], r["label"]) for r in keras]
    np.testing.assert_allclose([r["p_mm"] for r in rows], [r["p_mm"] for r in keras], atol=1e-4)
    assert refused.returncode == 2 and "use engine onnx" in refused.stderr
