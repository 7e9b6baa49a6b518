"""bench/bench_gpu_study.py in its tiny CPU mode: the project's own training runs in each
pass (one after another, packed, cold cache) and the report holds what the README quotes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_tiny_gpu_study_trains_in_every_pass_and_extrapolates(tmp_path):
    out = tmp_path / "study.json"
    env = project_env(drop_prefixes=("MLFLOW_",))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu_study.py"), "--tiny", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["passes"]) == ["sequential", "packed", "packed-cold"]
    for name, run in report["passes"].items():
        row = run["backbones"]["MobileNet"]
        assert row["status"] == "trained", name
        assert row["train_images_per_s"] > 0 and row["first_epoch_s"] > 0
        assert run["cache"] == ("warm" if name == "packed" else "cold")
    paper = report["paper_preset"]
    assert paper["packed_s"] > 0 and paper["goal_s"] == 600
    assert "paper preset (100 epochs x 2667 images)" in done.stdout
    assert (tmp_path / "work" / ".cache" / "compile").is_dir()  # training.compile_cache
