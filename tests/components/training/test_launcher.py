"""The launcher reads a training process's progress lines apart from its log lines, and its
result from the JSON line it prints last."""

import json
import sys
from pathlib import Path

from components.training import launcher
from components.training.loop import PROGRESS_PREFIX

_FAKE_TRAINING = f"""
import json
print("loading inputs")
for epoch in (1, 2):
    print({PROGRESS_PREFIX!r} + json.dumps({{
        "backbone": "MobileNet", "phase": "scratch", "epoch": epoch, "total_epochs": 2,
        "percent": 50.0 * epoch, "val_auc": 0.5 + 0.1 * epoch, "train_images_per_s": 12.5}}))
print("not json {{")
print(json.dumps({{"backbone": "MobileNet", "status": "trained"}}))
"""


def test_progress_lines_reach_the_progress_callback_and_not_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(
        launcher, "training_command", lambda *args: [sys.executable, "-c", _FAKE_TRAINING]
    )
    lines, progress = [], []
    params = tmp_path / "params.yaml"
    params.write_text("{}")
    result = launcher.run_backbone_process(
        "MobileNet", params, tmp_path / "out", None, {}, lines.append, on_progress=progress.append
    )
    assert result == {"backbone": "MobileNet", "status": "trained"}
    assert [p["percent"] for p in progress] == [50.0, 100.0]
    assert not any(PROGRESS_PREFIX in line for line in lines)
    assert lines[0] == "loading inputs"
    assert launcher.describe_progress(progress[-1]) == (
        "MobileNet: scratch epoch 2 of 2, validation AUC 0.700, 12.5 img/s"
    )
    assert "validation AUC n/a" in launcher.describe_progress({**progress[0], "val_auc": None})


def test_a_progress_line_says_where_a_run_is(tmp_path):
    from components.config import Config
    from components.training.loop import PhaseContext, RunState, progress_line

    cfg = Config(root=tmp_path)
    ctx = PhaseContext("VGG16", cfg, None, Path(tmp_path), RunState("h"), None, None, 8)
    row = {"epoch": 2, "phase": "scratch", "val_auc": 0.75, "train_images_per_s": 40.04}
    line = progress_line(ctx, row)
    assert line.startswith(PROGRESS_PREFIX)
    assert json.loads(line.removeprefix(PROGRESS_PREFIX)) == {
        "backbone": "VGG16", "phase": "scratch", "epoch": 2, "total_epochs": 8,
        "percent": 25.0, "val_auc": 0.75, "train_images_per_s": 40.0,
    }  # fmt: skip
