"""bench/bench_gpu_study.py: its checks before training, its budget, its report from whichever
passes ran, and in its tiny CPU mode the project's own training, a JSON kept after every
backbone (a killed bench keeps what finished) and a failing backbone's output."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from bench.bench_gpu_study import (
    Record,
    expected_s,
    over_budget,
    packing_check,
    paper_preset,
    preflight,
    table,
)
from components.training.devices import MEMORY_SHARE
from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_gpu_study.py"
H200_MIB = 143771


def _bench(*args: str) -> list[str]:
    return [sys.executable, str(BENCH), *args]


def _run(tmp_path: Path, *args: str, extra_env: dict[str, str] | None = None):
    env = project_env(extra_env, drop_prefixes=("MLFLOW_",))
    return subprocess.run(
        _bench("--tiny", "--workdir", str(tmp_path / "work"), *args),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _row(wall: float, first: float, later: float, n_train: int = 288) -> dict:
    return {
        "status": "trained", "image_size": 224, "wall_s": wall, "first_epoch_s": first,
        "later_epoch_s": later, "train_images_per_s": n_train / later, "n_train": n_train,
        "n_val": 96, "backend": "jax", "precision": "bfloat16",
    }  # fmt: skip


def _args(**kw) -> Namespace:
    defaults = {"paper_epochs": 100, "paper_images": 2667, "backbones": ["VGG16", "DenseNet169"]}
    return Namespace(**{**defaults, "out": None, "budget_s": None, **kw})


def _paper_s(row: dict, args: Namespace) -> float:
    per_image = row["later_epoch_s"] / row["n_train"]
    return row["first_epoch_s"] + (args.paper_epochs - 1) * per_image * args.paper_images


def test_a_backbone_is_expected_to_take_what_it_took_before_with_the_same_cache():
    passes = {
        "sequential": {"cache": "cold", "backbones": {"VGG16": {"wall_s": 50.0},
                                                      "DenseNet169": {"wall_s": 80.0}}},
        "packed": {"cache": "warm", "backbones": {"VGG16": {"wall_s": 20.0},
                                                  "Xception": {"status": "skipped"}}},
    }  # fmt: skip
    assert expected_s("VGG16", True, passes) == 50.0
    assert expected_s("VGG16", False, passes) == 20.0
    assert expected_s("DenseNet169", False, passes) == 80.0  # only measured cold
    assert expected_s("MobileNet", True, passes) == 80.0  # the longest so far
    assert expected_s("MobileNet", True, {}) == 0.0
    assert over_budget(None, 1e9, 1e9) is None
    assert over_budget(100, 60, 40) is None
    assert "60 s spent + 41 s expected > 100 s budget" in over_budget(100, 60, 41)


def test_the_checks_stop_a_gpu_the_backend_cannot_see_and_flag_float32_on_a_gpu():
    unseen = {"backend": "jax", "gpus": 0, "precision": "float32", "policy": "float32",
              "devices": ["cpu cpu"]}  # fmt: skip
    packing = packing_check(["0"], H200_MIB, 7, 7, 16)
    checks = preflight(["0"], {"0": H200_MIB}, unseen, "", packing, "auto")
    assert [c["check"] for c in checks] == ["gpu", "precision", "packing"]
    assert checks[0]["status"] == "error"
    assert f"GPU 0 ({H200_MIB} MiB) listed but jax sees no GPU" in checks[0]["message"]

    float32 = {**unseen, "gpus": 1, "devices": ["gpu NVIDIA H200"]}
    gpu, precision, _ = preflight(["0"], {"0": H200_MIB}, float32, "", packing, "off")
    assert gpu["status"] == "ok" and "NVIDIA H200" in gpu["message"]
    assert precision["status"] == "warning"
    assert precision["message"].startswith("bfloat16 not used: jax computes in float32")

    bf16 = {**float32, "precision": "bfloat16", "policy": "mixed_bfloat16"}
    statuses = [c["status"] for c in preflight(["0"], {}, bf16, "", packing, "auto")]
    assert statuses == ["ok", "ok", "ok"]

    broken = preflight(["0"], {}, None, "exit 1: No module named 'jax'", packing, "auto")
    assert broken[0]["status"] == "error" and "No module named 'jax'" in broken[0]["message"]


def test_packing_says_when_the_card_takes_the_backbones_in_waves():
    share = packing_check(["0"], H200_MIB, 7, 7, 16)
    assert share["status"] == "ok"
    capped = f"each capped at {MEMORY_SHARE / 7:.1%} of {H200_MIB} MiB"
    assert share["message"] == f"backbones: 7 of 7 at once on GPU 0, {capped}"
    waves = packing_check(["0"], 40960, 3, 7, 16)
    assert waves["status"] == "warning" and waves["message"].endswith("run in 3 waves")
    alone = packing_check(["0"], None, 1, 1, 16)
    assert alone["status"] == "ok" and "capped" not in alone["message"]


def test_the_report_and_table_hold_only_the_passes_that_ran(tmp_path):
    args = _args(out=tmp_path / "f.json")
    record = Record(args)
    fast, slow = _row(30.0, 20.0, 0.5), _row(60.0, 40.0, 1.5)
    record.passes = {
        "sequential": {"status": "finished", "wall_s": 90.0, "processes_at_once": 1,
                       "cache": "cold", "backbones": {"VGG16": fast, "DenseNet169": slow}},
        "packed": {"status": "running", "wall_s": 25.0, "processes_at_once": 2, "cache": "warm",
                   "backbones": {"VGG16": fast, "DenseNet169": {
                       "status": "skipped", "reason": over_budget(100, 90, 60)}}},
    }  # fmt: skip
    record.save()
    report = json.loads(args.out.read_text())
    assert list(report["passes"]) == ["sequential", "packed"]
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary left behind

    paper = report["paper_preset"]
    assert paper["one_after_another_s"] == round(_paper_s(fast, args) + _paper_s(slow, args))
    assert paper["packed_s"] == round(_paper_s(fast, args))
    assert paper["packed_over_goal"] == round(_paper_s(fast, args) / 600, 2)
    assert "packed_cold_s" not in paper
    assert paper["covers"] == {"one_after_another_s": ["VGG16", "DenseNet169"],
                               "packed_s": ["VGG16"]}  # fmt: skip
    assert report["skipped"] == ["packed/DenseNet169: " + over_budget(100, 90, 60)]

    text = table(report)
    assert "sequential wall s" in text and "packed wall s" in text and "packed-cold" not in text
    assert text.splitlines()[2].split()[-1] == "skipped"  # DenseNet169 in the packed pass
    assert f"one after another {paper['one_after_another_s']} s" in text
    assert f"packed {paper['packed_s']} s = {paper['packed_over_goal']}x" in text
    assert "(1 of 2 backbones)" in text
    assert paper_preset({}, args)["covers"] == {}


@pytest.mark.slow
def test_with_no_budget_left_nothing_starts_and_every_skip_is_listed(tmp_path):
    out = tmp_path / "f.json"
    done = _run(tmp_path, "--budget-s", "0", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["passes"]) == ["sequential", "packed", "packed-cold"]  # the default
    for run in report["passes"].values():
        assert run["status"] == "skipped"
        assert run["backbones"]["MobileNet"]["reason"].endswith("> 0 s budget")
    assert len(report["skipped"]) == 3 and report["skipped"][0].startswith("sequential/MobileNet")
    assert "preflight gpu: ok: no GPU" in done.stdout
    assert "extrapolated: nothing trained" in done.stdout
    assert not (tmp_path / "work" / "models" / "sequential" / "MobileNet").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="needs a machine without GPU")
@pytest.mark.slow
def test_a_gpu_named_but_not_seen_stops_the_bench_before_training(tmp_path):
    out = tmp_path / "f.json"
    done = _run(tmp_path, "--out", str(out), extra_env={"CUDA_VISIBLE_DEVICES": "0"})
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passes"] == {} and report["gpus"] == ["0"]
    assert report["preflight"][0]["status"] == "error"
    assert "preflight gpu: error: GPU 0 listed but" in done.stdout


@pytest.mark.slow
def test_the_tiny_packed_cold_pass_alone_trains_and_extrapolates(tmp_path):
    out = tmp_path / "f.json"
    done = _run(tmp_path, "--passes", "packed-cold", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["passes"]) == ["packed-cold"]
    run = report["passes"]["packed-cold"]
    assert run["status"] == "finished" and run["cache"] == "cold"
    assert run["cache_entries_at_start"] == 0
    row = run["backbones"]["MobileNet"]
    assert row["status"] == "trained" and row["image_size"] == 32
    assert row["train_images_per_s"] > 0 and 0 < row["first_epoch_s"] < row["wall_s"]
    assert 0 < row["timings_s"]["train_s"] <= row["timings_s"]["total_s"] <= row["wall_s"]
    paper = report["paper_preset"]
    assert paper["packed_cold_s"] > 0 and paper["covers"] == {"packed_cold_s": ["MobileNet"]}
    assert "one_after_another_s" not in paper and "packed_s" not in paper
    assert "paper preset (100 epochs x 2667 images), extrapolated: packed cold" in done.stdout
    assert (tmp_path / "work" / ".cache" / "compile").is_dir()  # training.compile_cache


@pytest.mark.slow
def test_a_killed_bench_keeps_the_backbone_that_finished(tmp_path):
    out = tmp_path / "f.json"
    env = project_env(drop_prefixes=("MLFLOW_",))
    args = ["--tiny", "--backbones", "MobileNet", "MobileNetV2", "--out", str(out)]
    bench = subprocess.Popen(
        _bench(*args, "--workdir", str(tmp_path / "work")), cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    seen, deadline = {}, time.monotonic() + 900
    try:
        while bench.poll() is None and time.monotonic() < deadline:
            if out.exists():
                passes = json.loads(out.read_text())["passes"]  # never half-written
                seen = passes.get("sequential", {}).get("backbones", {})
                if seen:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(bench.pid, signal.SIGKILL)
        bench.wait()
    assert list(seen) == ["MobileNet"], "the bench ended before a backbone was recorded"
    report = json.loads(out.read_text())
    run = report["passes"]["sequential"]
    assert run["status"] == "running" and list(run["backbones"]) == ["MobileNet"]
    assert run["backbones"]["MobileNet"]["status"] == "trained"
    assert report["paper_preset"]["covers"] == {"one_after_another_s": ["MobileNet"]}


@pytest.mark.slow
def test_a_failing_backbone_keeps_its_exit_code_and_output_in_the_json(tmp_path):
    out = tmp_path / "f.json"
    done = _run(tmp_path, "--passes", "sequential", "--images", "2", "--out", str(out))
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    row = json.loads(out.read_text())["passes"]["sequential"]["backbones"]["MobileNet"]
    assert row["status"] == "failed" and row["exit_code"] != 0
    assert row["error"] and row["output_tail"]
    assert any("MobileNet" in line for line in row["output_tail"])
    assert f"sequential MobileNet: FAILED (exit {row['exit_code']})" in done.stdout
