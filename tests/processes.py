"""What the tests' real servers (Orthanc, `mlflow models serve`) share: a free loopback port,
the end of a log for an error message, and stopping a process group."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

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


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it does not exit in time."""
    stop_process_group(proc, STOP_TIMEOUT_S)
