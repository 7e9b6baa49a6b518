"""The pipeline steps a scheduler runs: stage order from dvc.yaml, one stage through DVC with
its output streamed, experiment arguments, and the texts a run leaves for a person."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.pipeline import notify, stages


def _dvc_project(root: Path, stages: dict, scm: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    init = [sys.executable, "-m", "dvc", "init", "-q", *([] if scm else ["--no-scm"])]
    subprocess.run(init, cwd=root, check=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def _echo(out: str, dep: str | None = None) -> dict:
    stage = {"cmd": f"echo {out} > {out}", "outs": [out]}
    return stage | ({"deps": [dep]} if dep else {})


@pytest.mark.slow
def test_stage_order_puts_dependencies_first_and_keeps_the_file_order_otherwise(tmp_path):
    root = _dvc_project(
        tmp_path,
        {
            "report": _echo("report.txt", "model.txt"),
            "prepare": _echo("data.txt"),
            "audit": _echo("audit.txt", "data.txt"),
            "train": _echo("model.txt", "data.txt"),
        },
    )
    (root / "extra.txt").write_text("added with dvc add")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "extra.txt"], cwd=root, check=True)
    assert stages.stage_order(root) == ["prepare", "audit", "train", "report"]


@pytest.mark.slow
def test_a_stage_runs_through_dvc_streams_its_lines_and_is_skipped_when_up_to_date(tmp_path):
    root = _dvc_project(tmp_path, {"hello": _echo("hello.txt")})
    lines: list[str] = []
    log_path = stages.run_stage("hello", root, lines.append)
    assert "Running stage 'hello':" in lines
    assert (root / "hello.txt").read_text().strip() == "hello.txt"
    assert log_path.read_text().splitlines() == lines
    again: list[str] = []
    stages.run_stage("hello", root, again.append)
    assert "Stage 'hello' didn't change, skipping" in again


@pytest.mark.slow
def test_a_failing_stage_raises_with_its_name_log_and_last_lines(tmp_path):
    cmd = "python -c \"import sys; print('checking'); sys.exit('bad data: fix the manifest')\""
    root = _dvc_project(tmp_path, {"check": {"cmd": cmd, "outs": ["never.txt"]}})
    with pytest.raises(stages.StageFailed, match="stage 'check' failed") as raised:
        stages.run_stage("check", root, lambda line: None)
    assert raised.value.stage == "check"
    assert "bad data: fix the manifest" in str(raised.value)
    assert raised.value.log_path == stages.stage_log_path(root, "check")
    assert "checking" in raised.value.log_path.read_text()


def test_experiment_arguments_apply_the_preset_then_backbones_and_epochs():
    overrides = stages.experiment_overrides("paper", ["MobileNet", "VGG16"], 3)
    assert overrides["training.epochs"] == 3
    args = stages.experiment_args("paper-1", overrides)
    assert args[1:6] == ["-m", "dvc", "exp", "run", "--name"]
    assert "training.image_size=null" in args
    assert "training.backbones=[MobileNet,VGG16]" in args
    assert "training.epochs=3" in args and "training.epochs=100" not in args
    assert "~training.overrides" in args
    assert stages.experiment_overrides("demo", None, None) == {}
    assert stages.experiment_overrides("demo", None, None, folds=5) == {"split.folds": 5}
    assert stages.experiment_overrides("demo", None, None, folds=0) == {"split.folds": 0}


def test_experiment_epochs_replace_per_backbone_epochs_and_keep_their_other_values():
    per_backbone = {"VGG16": {"epochs": 12, "image_size": 32}, "Xception": {"dropout": 0.5}}
    overrides = stages.experiment_overrides("demo", None, 2, per_backbone)
    assert overrides == {"training.epochs": 2, "training.overrides.VGG16.epochs": 2}
    paper = stages.experiment_overrides("paper", None, None, per_backbone)
    assert paper["training.overrides"] == stages.DROP and paper["training.epochs"] == 100
    assert not any(key.startswith("training.overrides.") for key in paper)
    assert stages.experiment_overrides("demo", ["VGG16"], None, per_backbone) == {
        "training.backbones": ["VGG16"]
    }


@pytest.mark.parametrize(
    ("preset", "backbones", "epochs", "message"),
    [
        ("fast", None, None, "unknown preset"),
        ("demo", ["ResNet50"], None, "unknown backbones"),
        ("demo", None, 0, "at least 1"),
    ],
)
def test_bad_experiment_parameters_are_refused(preset, backbones, epochs, message):
    with pytest.raises(ValueError, match=message):
        stages.experiment_overrides(preset, backbones, epochs)


@pytest.mark.parametrize("folds", [1, 2, -1])
def test_too_few_folds_are_refused(folds):
    with pytest.raises(ValueError, match="folds must be 0 .one split. or at least 3"):
        stages.experiment_overrides("demo", None, None, folds=folds)


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True
    )


@pytest.mark.slow
def test_workspace_files_index_and_outputs_are_put_back_after_an_experiment(tmp_path):
    _git(tmp_path, "init", "-q")
    root = _dvc_project(tmp_path, {"hello": _echo("hello.txt")}, scm=True)
    (root / "params.yaml").write_text("training: {epochs: 6}\n")
    (root / ".gitignore").write_text(".myelomet/\n")  # as in the project
    stages.run_stage("hello", root, lambda line: None)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "baseline")
    snapshot = stages.snapshot_workspace(root)
    assert not snapshot.staged
    (root / "params.yaml").write_text("training: {epochs: 1}\n")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "hello.txt").write_text("the experiment's output")
    _git(root, "add", "params.yaml")  # what an interrupted `dvc exp run` leaves
    assert stages.restore_workspace(root, snapshot, lambda line: None)
    assert stages.snapshot_workspace(root) == snapshot
    assert (root / "hello.txt").read_text().strip() == "hello.txt"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True)
    assert status.stdout == b""


def _estimate(value: float) -> dict:
    return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}


def test_table2_lists_every_candidate_with_cis_and_marks_the_selected(tmp_path):
    test = {m: _estimate(0.8) for m in stages.TABLE2_METRICS} | {"ppv": {"value": None}}
    metrics = {
        "candidates": {
            name: {"test": {"slice": test, "patient": test}} for name in ("VGG16", "MobileNet")
        },
        "selection": {"selected": "MobileNet", "metric": "patient_auc"},
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    table = stages.table2_markdown(path)
    assert "| candidate | sensitivity | specificity | PPV | NPV |" in table
    assert "| **MobileNet** | 0.80 (0.70-0.90) | 0.80 (0.70-0.90) | n/a |" in table
    assert "| VGG16 |" in table
    assert "not run" in stages.table2_markdown(tmp_path / "missing.json")


def test_validation_summary_shows_each_suite(tmp_path):
    summary = {
        "success": 0,
        "evaluated": 10,
        "failed": 1,
        "manifest": {"success": 1, "evaluated": 6, "failed": 0},
        "pixels": {"success": 0, "evaluated": 4, "failed": 1},
    }
    path = tmp_path / "validation.json"
    path.write_text(json.dumps(summary))
    text = stages.validation_markdown(path, tmp_path / "docs" / "index.html")
    assert text.startswith("# Data validation **FAILED**")
    assert "| pixels | **FAILED** | 4 | 1 |" in text
    assert "docs/index.html" in text


def test_registry_outcome_names_new_versions_and_the_champion():
    before = stages.RegistryState("myelomet", {"1": ("champion",)}, {"1": {}})
    after = stages.RegistryState(
        "myelomet",
        {"1": ("champion",), "2": ("challenger",)},
        {"1": {}, "2": {"candidate": "VGG16", "promotion.reason": "does not beat v1"}},
    )
    text = stages.registry_markdown(before, after)
    assert "Registered version 2 (VGG16) as **challenger**: does not beat v1" in text
    assert "Champion: version 1" in text and "challenger: version 2" in text
    assert "No new version" in stages.registry_markdown(after, after)


def test_failure_note_names_the_stage_message_and_places(tmp_path):
    failure = notify.Failure(
        flow="study",
        run="brave-otter",
        message="stage 'validate' failed (exit 1)\ndata validation failed: 2 expectation(s)",
        stage="validate",
        places=["results page: `reports/validation/index.html`"],
    )
    text = notify.failure_markdown(failure)
    assert text.startswith("# study run `brave-otter` failed")
    assert "stage `validate` failed" in text
    assert "data validation failed: 2 expectation(s)" in text
    assert "- results page: `reports/validation/index.html`" in text
    path = notify.write_failure_note(tmp_path, text)
    assert path == tmp_path / notify.FAILURE_FILE
    assert path.read_text().strip() == text
