"""What the tests' real servers (Orthanc, `mlflow models serve`) share: a free loopback port,
waiting until one answers, the end of a log for an error message, and stopping a process
group."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from myelomet.group_server import stop_process_group

STOP_TIMEOUT_S = 20


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, chars: int = 4000) -> str:
    """The end of a server's log, for a failure message."""
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def await_answer(
    name: str,
    proc: subprocess.Popen,
    log: Path,
    answers: Callable[[], bool],
    timeout_s: float,
    pause_s: float = 0.5,
) -> None:
    """Ask `answers` every `pause_s` until it says yes; a refused connection or a timeout
    counts as not yet (not listening yet, or busy loading).

    Raises:
        RuntimeError: the server exited first or did not answer within `timeout_s`, with
            its log's tail.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{log_tail(log)}")
        try:
            if answers():
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(pause_s)
    raise RuntimeError(f"{name} did not answer within {timeout_s:g} s:\n{log_tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it does not exit in time."""
    stop_process_group(proc, STOP_TIMEOUT_S)
