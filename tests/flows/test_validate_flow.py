"""The `validate` flow against a temporary Prefect server: good data passes and publishes
the result table, bad data fails the flow run and `myelomet validate` exits 1 naming the
expectation."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import yaml
from prefect import Flow, Task
from prefect.artifacts import Artifact
from prefect.cache_policies import NO_CACHE

import flows
from components.data.split import FOLD_COLUMN, split_manifest
from flows.validate import ARTIFACT_KEY, validate
from myelomet.cli import main
from tests.components.checks.test_suites import write_dataset


def _project(root: Path, folds: int = 0) -> Path:
    """A good dataset and a params.yaml pointing at it; returns the params path. With
    `folds`, the split is a cross-validation split of that many folds."""
    dataset = write_dataset(root)
    if folds:
        manifest, _ = dataset.read()
        split_manifest(manifest, {}, seed=0, folds=folds).to_csv(dataset.split, index=False)
    params = root / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "ingest": {"out": "processed"},
                "split": {"out": "splits/split.csv", "folds": folds},
                "validation": {
                    "docs_out": "reports/validation",
                    "summary_out": "reports/validation.json",
                },
            }
        )
    )
    return params


def test_good_data_completes_and_publishes_the_result_table(tmp_path):
    params = _project(tmp_path)
    state = validate(str(params), return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.success
    assert (tmp_path / "reports/validation/index.html").is_file()
    assert json.loads((tmp_path / "reports/validation.json").read_text())["success"] == 1
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None
    assert artifact.type == "markdown"
    assert "| manifest | passed |" in artifact.data
    assert "| split | passed |" in artifact.data


def test_bad_data_fails_the_flow_run_after_writing_docs_and_summary(tmp_path):
    params = _project(tmp_path)
    manifest_path = tmp_path / "processed/manifest.csv"
    manifest = pd.read_csv(manifest_path)
    manifest.loc[0, "modality"] = "MR"
    manifest.to_csv(manifest_path, index=False)

    state = validate(str(params), return_state=True)
    assert state.is_failed()
    assert "DataValidationError" in state.message
    assert "manifest.modality_ct" in state.message
    summary = json.loads((tmp_path / "reports/validation.json").read_text())
    assert summary["success"] == 0
    assert summary["manifest"]["failed"] == 1
    page = (tmp_path / "reports/validation/index.html").read_text()
    assert '<h2 id="manifest">manifest: <span class="failed">FAILED</span></h2>' in page
    assert "<td>modality_ct</td>" in page


def test_the_command_exits_1_naming_the_failed_expectation_and_0_in_one_line(tmp_path, capsys):
    params = _project(tmp_path)
    assert main(["--params", str(params), "validate"]) == 0
    out, _ = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1
    assert "passed" in out

    split_path = tmp_path / "splits/split.csv"
    split = pd.read_csv(split_path)
    split.loc[split.index[split["split"] == "train"][0], "split"] = "val"
    split.to_csv(split_path, index=False)
    assert main(["--params", str(params), "validate"]) == 1
    _, err = capsys.readouterr()
    assert "split.patient_in_one_split" in err
    assert "patient=pt-" in err


def test_a_k_fold_split_is_checked_fold_by_fold(tmp_path, capsys):
    params = _project(tmp_path, folds=3)
    assert main(["--params", str(params), "validate"]) == 0
    out, _ = capsys.readouterr()
    assert "passed" in out

    split_path = tmp_path / "splits/split.csv"
    split = pd.read_csv(split_path)
    patient, fold = split.loc[split["split"] == "train", ["patient", FOLD_COLUMN]].iloc[0]
    split.loc[(split["patient"] == patient) & (split[FOLD_COLUMN] == fold), "split"] = "test"
    split.to_csv(split_path, index=False)  # the patient is now tested in two folds
    assert main(["--params", str(params), "validate"]) == 1
    _, err = capsys.readouterr()
    assert "split.patient_tested_once" in err
    assert f"patient={patient}" in err


def test_missing_split_names_the_command_to_run(tmp_path):
    params = _project(tmp_path)
    (tmp_path / "splits/split.csv").unlink()
    with pytest.raises(FileNotFoundError, match="myelomet split"):
        validate(str(params))


def _flows_modules() -> list[ModuleType]:
    return [
        importlib.import_module(info.name)
        for info in pkgutil.iter_modules(flows.__path__, f"{flows.__name__}.")
    ]


def test_no_task_can_be_served_from_a_cache():
    tasks = {}
    for module in _flows_modules():
        found = {n: t for n, t in vars(module).items() if isinstance(t, Task)}
        if any(isinstance(f, Flow) for f in vars(module).values()):
            assert found, f"{module.__name__} defines a flow and no task: discovery is broken"
        tasks.update({f"{module.__name__}.{n}": t for n, t in found.items()})
    assert "flows.validate.run_suites" in tasks
    for name, t in tasks.items():
        assert t.cache_policy is NO_CACHE, name
        assert t.persist_result is False, name
