"""Train one backbone in a fresh OS process and read back what it produced.

TensorFlow keeps the memory it took until its process ends, so each backbone gets a process
of its own (`python -m components.training.worker`); its output is streamed line by line to the
caller; its result is the JSON line it prints last (else its result file), its error the
error file it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from components.artifacts import ERROR_FILE, EXIT_DATA, EXIT_USAGE, EXIT_WEIGHTS, RESULT_FILE
from components.training.loop import PROGRESS_PREFIX

# Exit codes of components.training.worker that another try cannot fix.
PERMANENT_EXIT_CODES = frozenset({EXIT_USAGE, EXIT_WEIGHTS, EXIT_DATA})


class BackboneFailed(RuntimeError):
    """A backbone's training process ended with an error."""

    def __init__(self, backbone: str, exit_code: int, detail: str) -> None:
        super().__init__(f"{backbone}: training failed (exit {exit_code}): {detail}")
        self.backbone = backbone
        self.exit_code = exit_code
        self.detail = detail

    @property
    def permanent(self) -> bool:
        """True when retrying cannot help (bad params, missing weights or data)."""
        return self.exit_code in PERMANENT_EXIT_CODES

    @property
    def killed(self) -> bool:
        """True when a signal ended the process (a scheduler's cancel or requeue, say)."""
        return self.exit_code < 0


def training_command(
    backbone: str,
    params: Path,
    out_dir: Path,
    parent_run_id: str | None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line that trains one backbone in a new Python process."""
    command = [sys.executable, "-m", "components.training.worker", "--backbone", backbone]
    command += ["--params", str(params), "--out", str(out_dir)]
    if parent_run_id:
        command += ["--parent-run-id", parent_run_id]
    return [*command, *extra_args]


def run_backbone_process(
    backbone: str,
    params: Path,
    out_dir: Path,
    parent_run_id: str | None,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    extra_args: Sequence[str] = (),
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Run one backbone's training to the end in a child process.

    Args:
        backbone: backbone name.
        params: params.yaml of the project (its folder is the working directory).
        out_dir: the backbone's output folder.
        parent_run_id: the MLflow study run, or None.
        env: variables added to this process' environment (GPU pinning, say).
        on_line: called with each line the process prints, but its progress lines.
        extra_args: more arguments for `python -m components.training.worker` (e.g. --split).
        on_progress: called with each epoch's progress (training_loop.progress_line).

    Returns:
        The training result (components.training.run_folder.TrainResult as a dict).

    Raises:
        BackboneFailed: the process exited non-zero; the error it recorded, or the end of its
            output, is the detail.
    """
    params = Path(params).resolve()
    (out_dir / ERROR_FILE).unlink(missing_ok=True)
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(
        training_command(backbone, params, Path(out_dir).resolve(), parent_run_id, extra_args),
        cwd=params.parent,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line.startswith(PROGRESS_PREFIX):
                if on_progress is not None:
                    with contextlib.suppress(json.JSONDecodeError):
                        on_progress(json.loads(line.removeprefix(PROGRESS_PREFIX)))
                continue
            tail.append(line)
            on_line(line)
    if process.returncode != 0:
        error_file = out_dir / ERROR_FILE
        detail = (
            json.loads(error_file.read_text())["error"]
            if error_file.is_file()
            else "\n".join(tail) or "no output"
        )
        raise BackboneFailed(backbone, process.returncode, detail)
    return _printed_result(tail) or json.loads((out_dir / RESULT_FILE).read_text())


def _printed_result(lines: Sequence[str]) -> dict | None:
    """The result the process printed last (one JSON line): it says "skipped" where the
    result file on disk keeps the status of the run that trained the model."""
    for line in reversed(lines):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict) and "status" in value:
                    return value
    return None


def describe_progress(progress: Mapping[str, object]) -> str:
    """One line of what a backbone is doing, for a progress view."""
    auc = progress.get("val_auc")
    auc_text = f"{auc:.3f}" if isinstance(auc, float) and auc == auc else "n/a"
    return (
        f"{progress['backbone']}: {progress['phase']} epoch {progress['epoch']} of "
        f"{progress['total_epochs']}, validation AUC {auc_text}, "
        f"{progress['train_images_per_s']} img/s"
    )
