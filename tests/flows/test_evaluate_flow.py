"""The `evaluate` flow for real, after real training through the `train` flow.

Two fast backbones trained from scratch on a tiny patient split (the project shared with the
train flow tests, copied here), then `evaluate`: the Table 2 metrics with bootstrap CIs per
candidate and for the ensemble, the DVC plot data, the self-contained study page, a registry
version with its alias and promotion tags, and the Prefect artifact. A second run, on a copy
of the evaluated project, registers version 2, which cannot beat the champion by
evaluation.min_improvement and so becomes the challenger.
"""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from components import tracking
from components.artifacts import STUDY_FILE
from components.config import load_config
from components.registry.pyfunc import load_predictor
from flows.evaluate import ARTIFACT_KEY, evaluate
from tests.flows.trained_project import TRAINED_BACKBONES, TrainedProject
from tests.offline_html import assert_offline
from tests.project_factory import copy_project, update_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

BACKBONES = TRAINED_BACKBONES
CANDIDATES = (*BACKBONES, "ensemble")
# Not the default name, so the registration proves evaluation.registered_model is read.
MODEL_NAME = "myelomet-evaluate-test"
TABLE2 = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1", "kappa", "auc")
PLOT_KINDS = ("roc", "confusion", "calibration")
MIN_IMPROVEMENT = 0.5  # of the second run: a gain in patient AUC of 0.5 is out of reach


@pytest.fixture(scope="module", autouse=True)
def _no_ambient_tracking_uri():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="module")
def project(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained project with this module's evaluation settings."""
    root = copy_project(trained_project.root, tmp_path_factory.mktemp("evaluate-flow") / "p")
    update_params(
        root,
        "evaluation",
        n_bootstrap=30,
        gradcam_per_class=1,
        ensemble_top_k=2,
        registered_model=MODEL_NAME,
        min_improvement=0.0,
        onnx=True,
    )
    return root


@pytest.fixture(scope="module")
def first(project: Path) -> dict:
    """The first evaluate run: its return value, with metrics.json loaded and the Prefect
    artifact it published (a later run replaces it)."""
    outcome = evaluate(str(project / "params.yaml"))
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    return {**outcome, "metrics": metrics, "markdown": Artifact.get(ARTIFACT_KEY).data}


def _client(project: Path) -> MlflowClient:
    cfg = load_config(project / "params.yaml")
    return MlflowClient(tracking.resolve_store(cfg.tracking, project).tracking_uri)


def _aliases(client: MlflowClient) -> dict[str, str]:
    # the registry gives alias -> version as int or str depending on the store
    return {a: str(v) for a, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def _split_counts(project: Path, split: str) -> tuple[int, int]:
    rows = pd.read_csv(project / "data" / "splits" / "split.csv", dtype=str)
    rows = rows[rows["split"] == split]
    return len(rows), rows["patient"].nunique()


def test_metrics_json_has_table2_with_cis_for_each_candidate_and_the_ensemble(project, first):
    candidates = first["metrics"]["candidates"]
    assert sorted(candidates) == sorted(CANDIDATES)
    assert first["metrics"]["bootstrap"] == {"n": 30, "confidence": 0.95, "unit": "patient"}
    for split in ("val", "test"):
        n_slices, n_patients = _split_counts(project, split)
        for name in CANDIDATES:
            block = candidates[name][split]
            assert (block["n_slices"], block["n_patients"]) == (n_slices, n_patients)
            assert block["n_positive_patients"] == n_patients // 2
            for level in ("slice", "patient"):
                for metric in TABLE2:
                    estimate = block[level][metric]
                    assert set(estimate) == {"value", "ci_low", "ci_high"}, (name, metric)
                accuracy = block[level]["accuracy"]
                assert 0 <= accuracy["ci_low"] <= accuracy["ci_high"] <= 1, (name, split, level)
                assert 0 <= accuracy["value"] <= 1
                assert block[level]["auc"]["value"] is not None  # both classes present
    selection = first["metrics"]["selection"]
    members = selection["ensemble_members"].split(",")
    assert len(members) == 2 and set(members) <= set(BACKBONES)


def test_the_selection_is_the_best_on_validation(first):
    candidates = first["metrics"]["candidates"]
    selection = first["metrics"]["selection"]
    assert (selection["metric"], selection["split"]) == ("patient_auc", "val")
    val_auc = {n: candidates[n]["val"]["patient"]["auc"]["value"] for n in CANDIDATES}
    best = max(val_auc.values())
    # ties at patient level (4 validation patients) are broken by slice-level AUC
    tied = [n for n in CANDIDATES if val_auc[n] == best]
    slice_auc = {n: candidates[n]["val"]["slice"]["auc"]["value"] for n in tied}
    assert first["selected"] == selection["selected"]
    assert selection["selected"] in tied
    assert slice_auc[selection["selected"]] == max(slice_auc.values())
    assert selection["value"] == val_auc[selection["selected"]]


def test_dvc_plot_data_is_written_per_candidate(project, first):
    plots = project / "reports" / "plots"
    n_test_slices, n_test_patients = _split_counts(project, "test")
    for kind in PLOT_KINDS:
        assert sorted(p.stem for p in (plots / kind).glob("*.csv")) == sorted(CANDIDATES)
    for name in CANDIDATES:
        roc = pd.read_csv(plots / "roc" / f"{name}.csv")
        assert list(roc.columns) == ["fpr", "tpr"] and len(roc) >= 2
        assert roc["fpr"].between(0, 1).all() and roc["tpr"].between(0, 1).all()
        confusion = pd.read_csv(plots / "confusion" / f"{name}.csv")
        assert list(confusion.columns) == ["actual", "predicted"]
        assert len(confusion) == n_test_patients
        assert set(confusion["actual"]) == {"MM", "OMBT"}
        calibration = pd.read_csv(plots / "calibration" / f"{name}.csv")
        assert calibration["count"].sum() == n_test_slices
    comparisons = pd.read_csv(project / "reports" / "comparisons.csv")
    assert len(comparisons) == math.comb(len(CANDIDATES), 2)


class _Links(HTMLParser):
    """Every src and href of the page, and the src of each <img>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value is not None:
                self.urls.append((tag, value))
                if tag == "img":
                    self.images.append(value)


def test_the_study_page_is_self_contained_with_table2_and_the_chosen_model(project, first):
    page = project / "reports" / "study.html"
    assert first["report"] == str(page)
    text = page.read_text(encoding="utf-8")
    links = _Links()
    links.feed(text)
    external = [(t, u) for t, u in links.urls if not (u.startswith(("#", "data:")))]
    assert external == [("a", "validation/index.html")]  # the validation results, beside it
    assert (page.parent / external[0][1]).is_file()
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert_offline(text)
    # the ROC, confusion, reliability, training-curve and Grad-CAM figures, embedded
    assert len(links.images) == 7
    prefix = "data:image/png;base64,"
    for src in links.images:
        assert src.startswith(prefix)
        assert base64.b64decode(src.removeprefix(prefix))[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="fig-gradcam"' in text
    assert "Table 2 reproduction (test set)" in text
    for name in CANDIDATES:
        assert f"<h3>{name}" in text  # one Table 2 card per candidate
    assert f"<h3>The chosen model: {first['selected']}</h3>" in text
    assert f"Promoted: {MODEL_NAME}@champion is now version 1." in text


def test_the_selected_candidate_is_registered_as_champion_version_1(project, first):
    client = _client(project)
    assert _aliases(client) == {"champion": "1"}
    assert (first["version"], first["alias"]) == ("1", "champion")
    version = client.get_model_version(MODEL_NAME, "1")
    tags = version.tags
    assert tags["candidate"] == first["selected"]
    expected_members = (
        first["metrics"]["selection"]["ensemble_members"]
        if first["selected"] == "ensemble"
        else first["selected"]
    )
    assert tags["backbones"] == expected_members
    assert tags["weights"].split(",") == ["random"] * len(expected_members.split(","))
    test_auc = first["metrics"]["candidates"][first["selected"]]["test"]["patient"]["auc"]
    assert float(tags["test.patient_auc"]) == pytest.approx(test_auc["value"], abs=1e-6)
    promotion = {k: v for k, v in tags.items() if k.startswith("promotion.")}
    assert "no champion yet" in promotion.pop("promotion.reason")
    assert promotion == {
        "promotion.decision": "champion",
        "promotion.metric": "patient_auc",
        "promotion.new_value": tags["test.patient_auc"],
        "promotion.champion_version": "none",
        "promotion.champion_value": "none",
        "promotion.compared": "first",
        "promotion.min_improvement": "0.0",
    }
    parent = json.loads((project / "models" / STUDY_FILE).read_text())["parent_run_id"]
    registration = client.get_run(version.run_id)
    assert registration.data.tags["mlflow.parentRunId"] == parent
    study_files = {a.path for a in client.list_artifacts(parent, "study")}
    assert {"study/study.html", "study/metrics.json"} <= study_files


def test_the_champion_holds_checked_onnx_files_that_answer_as_keras_does(project, first):
    client = _client(project)
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.tags["onnx"] == "yes"
    assert "validation slices" in version.tags["onnx.check"]
    members = version.tags["backbones"].split(",")
    uri = f"models:/{MODEL_NAME}@champion"
    engines = {e: load_predictor(uri, client.tracking_uri, engine=e) for e in ("keras", "onnx")}
    assert {e: p.engine for e, p in engines.items()} == {"keras": "keras", "onnx": "onnx"}
    assert len(engines["onnx"].models) == len(members)
    rows = pd.read_csv(project / "data" / "processed" / "manifest.csv", dtype=str)
    hu = [np.load(project / "data" / "processed" / f) for f in rows["file"]]
    keras_p, onnx_p = (engines[e].predict_hu(hu) for e in ("keras", "onnx"))
    np.testing.assert_allclose(onnx_p, keras_p, atol=1e-4)
    threshold = engines["keras"].spec.threshold
    assert ((onnx_p >= threshold) == (keras_p >= threshold)).all()


def test_every_candidate_run_ranks_in_mlflow_by_its_test_metrics(project, first):
    client = _client(project)
    cfg = load_config(project / "params.yaml")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    parent = json.loads((project / "models" / STUDY_FILE).read_text())["parent_run_id"]
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{tracking.PARENT_TAG}` = '{parent}' and metrics.test_patient_auc >= 0",
        order_by=["metrics.test_patient_auc DESC"],
    )
    names = [r.data.tags[tracking.BACKBONE_TAG] for r in runs]
    assert sorted(names) == sorted(CANDIDATES)
    aucs = [r.data.metrics["test_patient_auc"] for r in runs]
    assert aucs == sorted(aucs, reverse=True)
    for run in runs:
        candidate = first["metrics"]["candidates"][run.data.tags[tracking.BACKBONE_TAG]]
        auc = candidate["test"]["patient"]["auc"]
        assert run.data.metrics["test_patient_auc"] == pytest.approx(auc["value"])
        assert run.data.metrics["test_patient_auc_ci_low"] == pytest.approx(auc["ci_low"])
        assert "val_slice_auc" in run.data.metrics
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"manifest", "split"}


def test_the_prefect_artifact_holds_the_results(first):
    markdown = first["markdown"]
    assert f"**{first['selected']}**" in markdown
    for name in CANDIDATES:
        assert f"| {name} |" in markdown or f"| **{name}** |" in markdown
    assert f"Registered `{MODEL_NAME}` version 1 as **champion**" in markdown


def test_a_second_run_that_does_not_beat_the_champion_becomes_challenger(project, first, tmp_path):
    again = copy_project(project, tmp_path / "project")  # the module's project keeps version 1
    update_params(again, "evaluation", min_improvement=MIN_IMPROVEMENT)

    second = evaluate(str(again / "params.yaml"))

    assert (second["selected"], second["version"], second["alias"]) == (
        first["selected"], "2", "challenger",
    )  # fmt: skip
    client = _client(again)
    assert _aliases(client) == {"champion": "1", "challenger": "2"}
    v1 = client.get_model_version(MODEL_NAME, "1").tags
    v2 = client.get_model_version(MODEL_NAME, "2").tags
    assert v1["promotion.decision"] == "champion"  # untouched
    assert v2["data_version"] == v1["data_version"]
    assert v2["promotion.decision"] == "challenger"
    assert v2["promotion.compared"] == "recorded"
    assert v2["promotion.champion_version"] == "1"
    assert float(v2["promotion.champion_value"]) == float(v1["test.patient_auc"])
    assert float(v2["promotion.min_improvement"]) == MIN_IMPROVEMENT
    assert "does not beat champion v1" in v2["promotion.reason"]
    page = (again / "reports" / "study.html").read_text(encoding="utf-8")
    assert "Not promoted: version 2 is registered as challenger." in page
    markdown = Artifact.get(ARTIFACT_KEY).data
    assert f"Registered `{MODEL_NAME}` version 2 as **challenger**" in markdown
