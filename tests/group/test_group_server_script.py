"""`python -m myelomet.group_server` (`make group-server`): a throwaway group server in the
foreground that prints what to export, answers with those credentials, and on Ctrl-C stops
and deletes what it made: its folders and, as root, the system user PostgreSQL ran as. It
runs with the base PATH of a newcomer's shell (`/usr/bin:/bin`, no sbin folders), as
`env -i ... make group-server` does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from myelomet.group_server import missing_postgres
from tests.processes import free_port, stop
from tests.tool_env import SCRIPTS, project_env

pytestmark = [pytest.mark.group, pytest.mark.slow]

STARTUP_TIMEOUT_S = 300


def _system_users() -> set[str]:
    return {line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()}


def test_the_script_prints_working_exports_and_cleans_up_on_ctrl_c(tmp_path):
    problem = missing_postgres()
    if problem is not None:
        pytest.skip(problem)
    log = tmp_path / "group_server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "myelomet.group_server", "--port", str(free_port())],
            env=project_env({"PATH": f"{SCRIPTS}:/usr/bin:/bin"}, drop_prefixes=("MLFLOW_",)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while "export MLFLOW_TRACKING_PASSWORD=" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        exports = dict(re.findall(r"export (MLFLOW_TRACKING_\w+)=(\S+)", text))
        artifacts = Path(re.search(r"artifacts go to (\S+);", text).group(1))
        auth = (exports["MLFLOW_TRACKING_USERNAME"], exports["MLFLOW_TRACKING_PASSWORD"])
        search = f"{exports['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"

        signed_in = requests.post(search, json={"max_results": 1}, auth=auth, timeout=30)
        anonymous = requests.post(search, json={"max_results": 1}, timeout=30)

        assert (signed_in.status_code, anonymous.status_code) == (200, 401)
        assert artifacts.is_dir()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        stop(proc)
    assert not artifacts.parent.exists()
    runs_as = re.search(r"runs as system user (\S+)\)", text)
    assert (runs_as is not None) == (os.geteuid() == 0)
    if runs_as is not None:
        assert runs_as.group(1) not in _system_users()
