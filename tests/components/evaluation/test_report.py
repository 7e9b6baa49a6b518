"""Study report: its inputs, figures as PNG files, and one self-contained, escaped HTML page."""

from __future__ import annotations

import dataclasses
import json
import re
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from components.config import BACKBONES
from components.evaluation.candidates import ENSEMBLE, score_candidates
from components.evaluation.figures import (
    FIGURES,
    confusion_grid,
    reliability_diagram,
    roc_figure,
    save_png,
    training_curves,
)
from components.evaluation.metrics import BootstrapOptions, Estimate
from components.evaluation.paper import PAPER_TABLE2
from components.evaluation.report_content import (
    DataSummary,
    LeakageComparison,
    StudyInputs,
    WeightsInfo,
    format_estimate,
    format_value,
    load_histories,
    load_weights_info,
)
from components.evaluation.report_html import study_page, write_study_report
from components.metric_names import THRESHOLD_METRICS
from components.registry_outcome import RegistryOutcome
from tests.offline_html import assert_offline

CLASSES = ("MM", "OMBT")
ODD_NAME = 'Net<&>"x'  # a backbone name with HTML special characters
STRENGTH = {"VGG16": 2.5, "MobileNetV2": 1.2, ODD_NAME: 0.3}
SECTIONS = (
    "data",
    "table2",
    "selection",
    "comparisons",
    "leakage",
    "weights-provenance",
    "calibration",
    "figures",
    "registry",
)


def _split_frame(per_split_class: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "val", "test"):
        for label in CLASSES:
            for i in range(per_split_class):
                patient = f"{split}-{label}-{i}"
                for s in range(int(rng.integers(2, 6))):
                    rows.append(
                        {
                            "image_id": f"{patient}-{s}",
                            "patient": patient,
                            "label": label,
                            "split": split,
                        }
                    )
    return pd.DataFrame(rows)


def _predictions(split: pd.DataFrame, seed: int = 1) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sign = np.where(split["label"] == "MM", 1.0, -1.0)
    out = {}
    for name, k in STRENGTH.items():
        effect = split["patient"].map({p: rng.normal() for p in split["patient"].unique()})
        logit = k * sign + 0.8 * effect + 0.7 * rng.normal(size=len(split))
        out[name] = split.assign(p=1 / (1 + np.exp(-logit)))
    return out


def _history(epochs: int = 6) -> pd.DataFrame:
    loss = np.linspace(0.9, 0.3, epochs)
    acc = np.linspace(0.55, 0.9, epochs)
    return pd.DataFrame(
        {
            "epoch": np.arange(epochs),
            "loss": loss,
            "val_loss": loss + 0.1,
            "accuracy": acc,
            "val_accuracy": acc - 0.05,
        }
    )


@pytest.fixture(scope="module")
def split_frame() -> pd.DataFrame:
    return _split_frame()


@pytest.fixture(scope="module")
def results(split_frame):
    return score_candidates(
        _predictions(split_frame),
        CLASSES,
        "MM",
        options=BootstrapOptions(n_bootstrap=100),
        ensemble_top_k=2,
    )


@pytest.fixture(scope="module")
def image_split_results(split_frame):
    return score_candidates(
        _predictions(split_frame, seed=5),
        CLASSES,
        "MM",
        options=BootstrapOptions(n_bootstrap=100),
        ensemble_top_k=0,
    )


@pytest.fixture(scope="module")
def full_inputs(results, image_split_results, split_frame) -> StudyInputs:
    rejects = pd.DataFrame({"reason": ["not_dicom", "not_dicom", "modality_not_ct"]})
    return StudyInputs(
        results=results,
        data=DataSummary.from_frames(split_frame, CLASSES, rejects),
        weights=(
            WeightsInfo("VGG16", "imagenet", "imagenet", sha256="ab" * 32),
            WeightsInfo("MobileNetV2", "imagenet", "random", "download failed: <no network>"),
            WeightsInfo(ODD_NAME, "none", "random", "training.weights is none"),
        ),
        histories={name: _history() for name in STRENGTH},
        leakage=LeakageComparison.from_results("VGG16", results, image_split_results),
        registry=RegistryOutcome(
            "myelomet", "4", "champion", "VGG16", "patient_auc", 0.93, "3", 0.88, "beats it"
        ),
        run_info={"git commit": "0123abc", "note": "<script>alert(1)</script>"},
    )


def _prose(page: str) -> str:
    """The page with every run of whitespace as one space: the template wraps its prose."""
    return " ".join(page.split())


def _assert_png(path, min_bytes: int = 5_000) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        width, height = image.size
    assert 300 <= width <= 4000 and 300 <= height <= 6000


def test_format_estimate():
    assert format_estimate(Estimate(0.8712, 0.7904, 0.9391)) == "0.87 (0.79–0.94)"
    assert format_estimate(Estimate(0.8712, 0.7904, 0.9391), 3) == "0.871 (0.790–0.939)"
    assert format_estimate(Estimate(0.5, float("nan"), float("nan"))) == "0.50"
    assert format_estimate(Estimate(float("nan"), float("nan"), float("nan"))) == "—"
    assert format_value(None) == "—"


def test_paper_table_covers_every_backbone_and_metric():
    assert set(PAPER_TABLE2) == set(BACKBONES)
    for values in PAPER_TABLE2.values():
        assert set(values) == set(THRESHOLD_METRICS)
        assert all(0 < v < 1 for v in values.values())
    assert PAPER_TABLE2["MobileNetV2"]["accuracy"] == 0.88
    assert PAPER_TABLE2["EfficientNetB0"]["kappa"] == 0.493


@pytest.mark.parametrize("level", ["patient", "slice"])
def test_roc_figure_has_every_candidate_with_auc_interval(results, level, tmp_path):
    fig = roc_figure(results, "test", level)
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name, candidate in results.candidates.items():
        auc = format_estimate(candidate.metrics["test"][level]["auc"])
        assert any(label.startswith(f"{name}: AUC {auc}") for label in labels), name
    _assert_png(save_png(fig, tmp_path / "roc.png"))


def test_confusion_grid_counts_every_test_row(results, tmp_path):
    fig = confusion_grid(results, "test", "patient")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(results.candidates)
    n_patients = results.candidates["VGG16"].counts["test"]["n_patients"]
    for ax in panels:
        cells = [int(t.get_text().split("\n")[0]) for t in ax.texts]
        assert sum(cells) == n_patients
        assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
        assert all(t.get_text().endswith("%") for t in ax.texts)
    _assert_png(save_png(fig, tmp_path / "confusion.png"))


def test_training_curves_one_panel_pair_per_backbone(tmp_path):
    # kept by training.monitor (val_auc, say) at epoch 2, though val_loss is lowest at 5
    two_phases = _history().assign(phase=["head"] * 4 + ["finetune"] * 2, kept=np.arange(6) == 2)
    no_accuracy = _history(4).drop(columns=["accuracy", "val_accuracy"])
    fig = training_curves({"VGG16": two_phases, "MobileNetV2": no_accuracy})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "VGG16: loss",
        "VGG16: accuracy",
        "MobileNetV2: loss",
        "MobileNetV2: accuracy",
    ]
    loss = fig.axes[0]
    assert [line.get_label() for line in loss.lines[:2]] == ["train", "validation"]
    # the epoch training kept (dotted), then the start of fine-tuning (solid)
    assert [line.get_xdata()[0] for line in loss.lines[2:]] == [2, 3.5]
    assert [line.get_xdata()[0] for line in fig.axes[2].lines[2:]] == []  # none marked
    assert [t.get_text() for t in fig.axes[3].texts] == ["no accuracy recorded"]
    _assert_png(save_png(fig, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="no training histories"):
        training_curves({})


def test_reliability_diagram(results, tmp_path):
    fig = reliability_diagram(results, "test", "slice")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum("ECE" in label for label in labels) == len(results.candidates)
    _assert_png(save_png(fig, tmp_path / "reliability.png"))


@pytest.mark.parametrize("figure", [roc_figure, confusion_grid, reliability_diagram])
def test_figures_reject_unknown_split_or_level(results, figure):
    with pytest.raises(ValueError, match="split must be one of"):
        figure(results, "train", "patient")
    with pytest.raises(ValueError, match="split must be one of"):
        figure(results, "test", "image")


def test_data_summary_counts_patients_slices_and_rejects(split_frame):
    summary = DataSummary.from_frames(
        split_frame, CLASSES, pd.DataFrame({"reason": ["truncated", "not_dicom", "truncated"]})
    )
    assert summary.patients["test"] == {"MM": 4, "OMBT": 4}
    assert summary.patients["all"] == {"MM": 12, "OMBT": 12}
    assert sum(summary.slices["all"].values()) == len(split_frame)
    assert summary.rejects == {"not_dicom": 1, "truncated": 2}
    assert summary.shared_patients == 0
    leaky = split_frame.assign(split=np.where(np.arange(len(split_frame)) % 2, "train", "test"))
    assert DataSummary.from_frames(leaky, CLASSES).shared_patients > 0
    with pytest.raises(ValueError, match="split.csv"):
        DataSummary.from_frames(split_frame.drop(columns="patient"), CLASSES)


def test_leakage_from_results_needs_the_backbone_in_both(results, image_split_results):
    leakage = LeakageComparison.from_results("VGG16", results, image_split_results, "patient")
    assert leakage.patient_split is results.candidates["VGG16"].metrics["test"]["patient"]
    with pytest.raises(ValueError, match="image-split"):
        LeakageComparison.from_results(ENSEMBLE, results, image_split_results)
    with pytest.raises(ValueError, match="level"):
        LeakageComparison.from_results("VGG16", results, image_split_results, "image")


def test_load_weights_info_reads_training_metrics(tmp_path):
    for name, record in {
        "VGG16": {"weights": "imagenet", "weights_sha256": "ab" * 32, "weights_note": ""},
        "Xception": {"weights": "random", "weights_sha256": None, "weights_note": "offline"},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(record))
    vgg, xception = load_weights_info(tmp_path, ["VGG16", "Xception"], "imagenet")
    assert not vgg.fell_back and vgg.sha256 == "ab" * 32
    assert xception.fell_back and xception.detail == "offline" and xception.sha256 == ""
    (tmp_path / "VGG16" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="weights"):
        load_weights_info(tmp_path, ["VGG16"], "imagenet")
    with pytest.raises(FileNotFoundError, match="myelomet train"):
        load_weights_info(tmp_path, ["DenseNet121"], "imagenet")


def test_load_histories(tmp_path):
    (tmp_path / "VGG16").mkdir()
    _history().to_csv(tmp_path / "VGG16" / "history.csv", index=False)
    assert list(load_histories(tmp_path, ["VGG16"])["VGG16"].columns)[:2] == ["epoch", "loss"]
    with pytest.raises(FileNotFoundError, match="myelomet train"):
        load_histories(tmp_path, ["Xception"])


@pytest.fixture(scope="module")
def report(full_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    gradcam = save_png(roc_figure(full_inputs.results), folder / "gradcam_source.png")
    inputs = dataclasses.replace(full_inputs, gradcam_png=gradcam)
    return write_study_report(folder / "study.html", inputs)


def test_write_study_report_writes_every_figure(report):
    assert list(report.figures) == list(FIGURES)
    for key, path in report.figures.items():
        _assert_png(path)
        if key != "gradcam":
            assert path.parent == report.html.parent / "figures"


def test_page_is_self_contained(report):
    page = report.html.read_text(encoding="utf-8")
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert_offline(page)


def test_page_inlines_its_style_sheet_and_loads_no_other_file(report):
    page = report.html.read_text(encoding="utf-8")
    css = (resources.files("components.evaluation") / "templates" / "study.css").read_text()
    style = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    assert len(style) == 1 and css.strip() in style[0]
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert "{{" not in page and "{%" not in page


def test_page_has_every_section_and_the_papers_numbers(report, full_inputs):
    page = report.html.read_text(encoding="utf-8")
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page, anchor
    for backbone in ("VGG16", "MobileNetV2"):
        for metric in ("sensitivity", "accuracy", "kappa"):
            assert f"<td>{PAPER_TABLE2[backbone][metric]:.3f}</td>" in page
    assert "10.35440/hutfd.1563046" in page
    results = full_inputs.results
    selected = results.candidates[results.selected].metrics["val"]["patient"]["auc"]
    assert f"{format_estimate(selected)} (95% CI)" in page
    vgg = results.candidates["VGG16"].metrics["test"]
    for level in ("slice", "patient"):
        assert f"<td>{format_estimate(vgg[level]['accuracy'])}</td>" in page
    assert len(re.findall(r"\d\.\d\d \(\d\.\d\d–\d\.\d\d\)", page)) > 50
    assert "inflated by patient leakage" in _prose(page)
    assert "myelomet@champion is now version 4" in page
    assert "Not run" not in page


def test_page_warns_about_random_init_only_when_imagenet_fell_back(report, full_inputs):
    page = report.html.read_text(encoding="utf-8")
    assert "Warning: trained from random initialisation" in page
    assert "ImageNet weights were unavailable for MobileNetV2," in _prose(page)
    quiet = dataclasses.replace(
        full_inputs, weights=(WeightsInfo("VGG16", "imagenet", "imagenet"),)
    )
    assert "random initialisation" not in study_page(quiet, {})


def test_page_escapes_every_text(report):
    page = report.html.read_text(encoding="utf-8")
    assert ODD_NAME not in page
    assert "Net&lt;&amp;&gt;&#34;x" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "download failed: &lt;no network&gt;" in page


def test_optional_sections_render_not_run(results, split_frame):
    page = study_page(StudyInputs(results, DataSummary.from_frames(split_frame, CLASSES)), {})
    for anchor in ("leakage", "weights-provenance", "registry", "figures"):
        section = page.split(f'<section id="{anchor}">')[1].split("</section>")[0]
        assert "Not run" in section, anchor
    assert "<img" not in page
    assert "No file was rejected at ingest." in page


def test_hostile_text_is_escaped_everywhere(full_inputs):
    hostile = "<script>alert(1)</script> & co"
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    registry = dataclasses.replace(full_inputs.registry, reason=hostile, candidate=hostile)
    data = dataclasses.replace(full_inputs.data, rejects={hostile: 2})
    inputs = dataclasses.replace(
        full_inputs,
        title=hostile,
        weights=(WeightsInfo(hostile, "imagenet", "random", hostile),),
        leakage=dataclasses.replace(full_inputs.leakage, backbone=hostile),
        registry=registry,
        data=data,
        run_info={hostile: hostile},
        validation_page='v.html" onclick="alert(1)',
    )
    page = study_page(inputs, {})
    assert "<script" not in page and "alert(1)</script>" not in page
    assert " & co" not in page
    # the title, the heading, the run facts (name and value), the alerts, the weights table
    # (backbone and detail), the leakage text, the rejects table, the registry (twice)
    assert page.count(escaped) >= 10
    assert 'href="v.html&#34; onclick=&#34;alert(1)"' in page
