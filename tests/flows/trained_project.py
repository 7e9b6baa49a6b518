"""The project the train and evaluate flow tests share, trained once per session by the
`train` flow (the `trained_project` fixture of tests/flows/conftest.py).

It is never changed by a test: a test that changes a trained project works on
`tests.project_factory.copy_project` of it. What the training flow run published (its
return value and its Prefect artifacts) is read right after it, since a later flow run
replaces the artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.artifacts import Artifact
from prefect.task_runners import ThreadPoolTaskRunner

from components.checks.page import write_page
from components.checks.results import ValidationReport
from flows.train import ARTIFACT_KEY, train
from tests.project_factory import update_params, write_tiny_project

# The two fastest backbones; each of the seven trains in tests/components/training/test_worker.py
TRAINED_BACKBONES = ("MobileNet", "MobileNetV2")


@dataclass(frozen=True)
class TrainedProject:
    """A project after one `train` flow run, and what that run returned and published."""

    root: Path
    outcome: dict[str, Any]
    summary_markdown: str
    progress: dict[str, Artifact]


def train_project(root: Path) -> TrainedProject:
    """TRAINED_BACKBONES trained from scratch by the `train` flow, two at a time, on 10
    patients per class (6 train, 2 val and 2 test each; 2 slices per patient), beside the
    validation page that `myelomet validate` writes."""
    write_tiny_project(root, patients_per_class=10, slices=2)
    update_params(root, "training", backbones=list(TRAINED_BACKBONES), retries=1, max_parallel=2)
    update_params(root, "leakage", enabled=False)
    update_params(root, "evaluation", reports_out="reports")
    page = root / "reports" / "validation" / "index.html"
    write_page(ValidationReport(suites=(), docs_index=page), page)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        flow = train.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
        outcome = flow(str(root / "params.yaml"))
    assert outcome["failures"] == {}, outcome["failures"]
    progress = {name: Artifact.get(f"train-{name.lower()}") for name in TRAINED_BACKBONES}
    return TrainedProject(root, outcome, Artifact.get(ARTIFACT_KEY).data, progress)
