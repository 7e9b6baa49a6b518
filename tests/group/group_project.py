"""A tiny project whose commands run against the group's MLflow server: the environment they
run in (the server's URI and a user's credentials, nothing of the caller's MLflow or Prefect
settings) and the `myelomet` commands as subprocesses, as a researcher types them."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from components.checks.page import write_page
from components.checks.results import ValidationReport
from tests.project_factory import update_params, write_tiny_project
from tests.tool_env import project_env

BACKBONES = ("MobileNet", "MobileNetV2")
COMMAND_TIMEOUT_S = 900


def write_group_project(
    root: Path,
    experiment: str,
    model: str,
    backbones: Sequence[str] = BACKBONES,
    epochs: int = 1,
) -> Path:
    """A tiny project (10 patients a class, 2 slices each, 32 px) logging into `experiment`
    and registering `model`, with the validation page `myelomet evaluate` links to."""
    write_tiny_project(root, patients_per_class=10, slices=2)
    update_params(root, "training", backbones=list(backbones), retries=0, max_parallel=2)
    update_params(root, "training", epochs=epochs)
    update_params(root, "leakage", enabled=False)
    update_params(root, "tracking", experiment=experiment)
    update_params(
        root,
        "evaluation",
        reports_out="reports",
        n_bootstrap=30,
        gradcam_per_class=1,
        ensemble_top_k=2,
        registered_model=model,
        min_improvement=0.0,
    )
    page = root / "reports" / "validation" / "index.html"
    write_page(ValidationReport(suites=(), docs_index=page), page)
    return root


def server_env(mlflow_env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """This environment without MLflow or Prefect settings, the server's on top."""
    return project_env({**mlflow_env, **extra}, drop_prefixes=("MLFLOW_", "PREFECT_"))


def myelomet(
    args: Sequence[str], root: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `myelomet ARGS` in the project, as a user would."""
    return subprocess.run(
        ["myelomet", *args],
        cwd=root,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def error_line(done: subprocess.CompletedProcess[str], command: str) -> str:
    """The one line of stderr in which `myelomet COMMAND` says why it failed (Prefect's logs
    around it are the flow's); "" when there is no such line, all of them when several."""
    prefix = f"myelomet {command}: error: "
    return "\n".join(line for line in done.stderr.splitlines() if line.startswith(prefix))
