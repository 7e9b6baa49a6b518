"""No identifier reaches a log: the study flow's ingest stage runs through DVC over a DICOM
tree whose folder and file names identify patients, and neither the Prefect server's logs
of the run nor the stage's log file holds any of them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from components.pipeline import stages
from flows.study import run_stage
from tests import dicom_factory as factory
from tests.tool_env import project_env

REPO = Path(__file__).resolve().parents[2]
IDENTIFYING = ("ROE_RICHARD_MRN445566", "Roe^Richard", "MRN445566", "Richard")

pytestmark = pytest.mark.slow


@flow(name="ingest-only")
def _ingest_only(root: str) -> str:
    return str(run_stage("ingest", Path(root)))


async def _logs(flow_run_id) -> list[str]:
    async with get_client() as client:
        logs = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return [entry.message for entry in logs]


def _server_logs(flow_run_id, expected: str) -> list[str]:
    """The run's logs once the server has them (they are sent in the background)."""
    APILogHandler().flush()
    deadline = time.monotonic() + 30
    while True:
        messages = asyncio.run(_logs(flow_run_id))
        if any(expected in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def test_the_study_flow_logs_no_identifying_folder_or_file_name(tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(REPO / "components", root / "components")
    raw = root / "data" / "raw"
    factory.write_plain(raw / "MM" / "ROE_RICHARD_MRN445566" / "1.dcm", seed=1)
    (raw / "MM" / "ROE_RICHARD_MRN445566" / "Roe^Richard.dcm").write_text("not a DICOM file")
    other = factory.Phi(patient_name="Other^Person", patient_id="MRN-0000002")
    factory.write_plain(raw / "OMBT" / "p2" / "1.dcm", seed=2, phi=other)
    params = {"data": {"dicom_root": "data/raw"}, "ingest": {"out": "data/processed"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {"cmd": "myelomet ingest", "deps": ["data/raw"], "outs": ["data/processed"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": stage}}))
    env = project_env({"MYELOMET_DEID_KEY": "test-key-0123456789abcdef"})
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    monkeypatch.setenv("MYELOMET_DEID_KEY", env["MYELOMET_DEID_KEY"])

    state = _ingest_only(str(root), return_state=True)
    assert state.is_completed()
    stage_log = stages.stage_log_path(root, "ingest").read_text()
    server_logs = _server_logs(state.state_details.flow_run_id, "1 files rejected")
    assert "1 files rejected" in stage_log  # the reject was reported, by its pseudonym
    assert any("1 files rejected" in line for line in server_logs)
    for sink, text in (("stage log", stage_log), ("Prefect server", "\n".join(server_logs))):
        leaked = [value for value in IDENTIFYING if value in text]
        assert not leaked, f"{sink} holds {leaked}"
