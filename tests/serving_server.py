"""`mlflow models serve` on 127.0.0.1 for tests and benchmarks: the tiny test model registered
as the champion, the server started, awaited, stopped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from components import tracking
from components.registry import candidate_model, promotion
from tests.model_factory import (
    BACKBONE,
    Candidate,
    models_config,
    tiny_model,
    write_models_dir,
)
from tests.processes import await_answer, free_port, stop
from tests.tool_env import project_env

CHAMPION = "models:/myelomet@champion"
CHAMPION_THRESHOLD = 0.4
STARTUP_TIMEOUT_S = 120


def register_tiny_champion(root: Path, experiment: str = "serve-test", onnx: bool = False) -> str:
    """Log tests.model_factory's tiny model and register it as CHAMPION (slice threshold
    CHAMPION_THRESHOLD) in a new SQLite store under `root`, whatever MLFLOW_TRACKING_URI says;
    with `onnx`, exported to ONNX and checked as registration does.

    Returns:
        The store's tracking URI, for the server's MLFLOW_TRACKING_URI.
    """
    mlruns = root / "mlruns"
    store = tracking.Store(
        f"sqlite:///{mlruns / 'mlflow.db'}", (mlruns / "artifacts").as_uri(), experiment
    )
    models_dir = write_models_dir(root, tiny_model())
    study = tracking.start_study(store, "serve")
    candidate = Candidate(BACKBONE, (BACKBONE,), {"slice": CHAMPION_THRESHOLD})
    logged = candidate_model.log_candidate(store, study, candidate, models_config(models_dir, onnx))
    promotion.register_and_promote(
        store, logged.model_uri, "myelomet", logged.tags, "patient_auc", 0.8, None, 0.0
    )
    return store.tracking_uri


@contextmanager
def mlflow_model_server(
    model_uri: str,
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path,
    log: Path | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Serve a model with `mlflow models serve --env-manager local` on a free local port.

    The server runs in its own process group from `cwd`, with this environment minus
    PYTHONPATH (the model's own `code_paths` copy is what it serves with), the interpreter's
    folder first on PATH (the server starts `uvicorn` by name) and `env` on top.

    Args:
        model_uri: e.g. models:/myelomet@champion.
        env: extra environment variables, e.g. MLFLOW_TRACKING_URI.
        cwd: the server's working folder.
        log: where its stdout and stderr go; default `<cwd>/server.log`.
        startup_timeout_s: how long to wait for GET /ping to answer 200.

    Yields:
        The base URL, e.g. http://127.0.0.1:54321.

    Raises:
        RuntimeError: the server exited or did not answer in time (with its log's tail).
    """
    port = free_port()
    log = log if log is not None else cwd / "server.log"
    full_env = project_env(env, drop_prefixes=("PYTHONPATH",))
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await_answer(
            "mlflow models serve",
            proc,
            log,
            lambda: requests.get(f"{url}/ping", timeout=2).status_code == 200,
            startup_timeout_s,
        )
        yield url
    finally:
        stop(proc)
