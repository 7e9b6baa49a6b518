"""Figures and the self-contained HTML study report.

Figures are `matplotlib.figure.Figure` objects made without pyplot, so no global state or
backend is touched; `save_png` writes one. `write_study_report` writes every figure under a
folder and one HTML page that embeds them as base64 PNG with inline CSS: the page needs no
other file and can be archived or mailed as it is. All text on the page is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from components import markdown
from components.artifacts import HISTORY_FILE, METRICS_FILE
from components.evaluation.candidates import (
    ENSEMBLE,
    EvaluationResults,
    calibration_plot_data,
    comparisons_table,
    confusion_plot_data,
    roc_plot_data,
)
from components.evaluation.metrics import Estimate
from components.metric_names import LEVELS, METRICS, parse_metric_name

if TYPE_CHECKING:
    from components.registry.promotion import RegistryOutcome

# Table 2 of Şimşek MK, Çetinoğlu YK, Bırcan R, Balcı A. Differentiating multiple myeloma and
# osteolytic bone metastasis on spinal CT scan: a comprehensive study using convolutional
# neural network. Harran Üniv Tıp Fak Derg 2025;22(1):1-7, doi:10.35440/hutfd.1563046.
# Test set of 300 images drawn at random from all slices (a patient's slices in both train
# and test), no stated positive class or threshold, no intervals, no AUC value. Percentages
# are written here as fractions; F1 and kappa as printed.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "DenseNet121": {
        "sensitivity": 0.7989,
        "specificity": 0.9127,
        "ppv": 0.9267,
        "npv": 0.7667,
        "accuracy": 0.8467,
        "f1": 0.858,
        "kappa": 0.693,
    },
    "DenseNet169": {
        "sensitivity": 0.8086,
        "specificity": 0.8623,
        "ppv": 0.8733,
        "npv": 0.7933,
        "accuracy": 0.8333,
        "f1": 0.8397,
        "kappa": 0.667,
    },
    "EfficientNetB0": {
        "sensitivity": 0.7846,
        "specificity": 0.7176,
        "ppv": 0.6800,
        "npv": 0.8133,
        "accuracy": 0.7467,
        "f1": 0.7286,
        "kappa": 0.493,
    },
    "MobileNet": {
        "sensitivity": 0.8428,
        "specificity": 0.8865,
        "ppv": 0.8933,
        "npv": 0.8333,
        "accuracy": 0.8633,
        "f1": 0.8673,
        "kappa": 0.7227,
    },
    "MobileNetV2": {
        "sensitivity": 0.8393,
        "specificity": 0.9318,
        "ppv": 0.9400,
        "npv": 0.8200,
        "accuracy": 0.8800,
        "f1": 0.8868,
        "kappa": 0.760,
    },
    "VGG16": {
        "sensitivity": 0.8103,
        "specificity": 0.9286,
        "ppv": 0.9400,
        "npv": 0.7800,
        "accuracy": 0.8600,
        "f1": 0.8704,
        "kappa": 0.720,
    },
    "Xception": {
        "sensitivity": 0.6959,
        "specificity": 0.8585,
        "ppv": 0.9000,
        "npv": 0.6067,
        "accuracy": 0.7533,
        "f1": 0.7849,
        "kappa": 0.507,
    },
}
PAPER_CITATION = (
    "Şimşek MK, Çetinoğlu YK, Bırcan R, Balcı A. Harran Üniv Tıp Fak Derg 2025;22(1):1-7, "
    "doi:10.35440/hutfd.1563046"
)

METRIC_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "accuracy": "Accuracy",
    "f1": "F1 score",
    "kappa": "Cohen's kappa",
    "auc": "AUC",
    "brier": "Brier score",
    "ece": "ECE",
}
SPLIT_LABELS = {"train": "training", "val": "validation", "test": "test"}
LEAKAGE_METRICS = ("auc", "accuracy", "sensitivity", "specificity")

# Figure key -> (title, caption); the order in which the page shows them.
FIGURES: dict[str, tuple[str, str]] = {
    "roc_patient": (
        "ROC curves, patient level",
        "Test set, one probability per patient (mean of its slices). The dot on each curve "
        "is the operating point at the threshold chosen on validation.",
    ),
    "roc_slice": (
        "ROC curves, slice level",
        "Test set, one point per slice, as in the paper's Figure 3.",
    ),
    "confusion_patient": (
        "Confusion matrices, patient level",
        "Test patients at each candidate's validation threshold; counts and row percentages.",
    ),
    "confusion_slice": (
        "Confusion matrices, slice level",
        "Test slices at each candidate's validation threshold, as in the paper's Figure 2.",
    ),
    "training_curves": (
        "Training curves",
        "Loss and accuracy per epoch on the training and validation splits (the paper's "
        "Figure 4); the dotted line marks the epoch training kept (by training.monitor), a "
        "solid line the start of a new training phase (fine-tuning).",
    ),
    "reliability": (
        "Reliability diagram",
        "Test slices: mean predicted probability against the observed fraction positive per "
        "probability bin; the diagonal is perfect calibration.",
    ),
    "gradcam": (
        "Grad-CAM",
        "Where the chosen model looks: Grad-CAM heat maps over the bone-window image of test "
        "slices of each class.",
    ),
}


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class DataSummary:
    """Patients and slices per split and class, and the files rejected at ingest.

    Attributes:
        classes: the class names, in the order shown.
        patients: split (train/val/test/all) -> class -> number of distinct patients.
        slices: split (train/val/test/all) -> class -> number of slices.
        shared_patients: patients with slices in more than one split (0 for a patient split).
        rejects: reason code -> number of files rejected at ingest.
    """

    classes: tuple[str, ...]
    patients: dict[str, dict[str, int]]
    slices: dict[str, dict[str, int]]
    shared_patients: int = 0
    rejects: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_frames(
        cls, split: pd.DataFrame, classes: Sequence[str], rejects: pd.DataFrame | None = None
    ) -> DataSummary:
        """Summarise `data/splits/split.csv` and `data/processed/rejects.csv`.

        Args:
            split: columns patient, label, split (train/val/test).
            classes: the class names (params `classes`).
            rejects: column reason, one row per rejected file; None when not at hand.

        Raises:
            ValueError: a needed column is missing.
        """
        missing = [c for c in ("patient", "label", "split") if c not in split.columns]
        if missing:
            raise ValueError(f"split frame lacks columns {missing}; pass data/splits/split.csv")
        if rejects is not None and "reason" not in rejects.columns:
            raise ValueError("rejects frame lacks column 'reason'; pass data/processed/rejects.csv")
        groups = {s: split[split["split"] == s] for s in ("train", "val", "test")}
        groups["all"] = split
        splits_per_patient = split.groupby("patient")["split"].nunique()
        return cls(
            classes=tuple(classes),
            patients={
                s: {c: int(g.loc[g["label"] == c, "patient"].nunique()) for c in classes}
                for s, g in groups.items()
            },
            slices={
                s: {c: int((g["label"] == c).sum()) for c in classes} for s, g in groups.items()
            },
            shared_patients=int((splits_per_patient > 1).sum()),
            rejects={}
            if rejects is None
            else rejects["reason"].value_counts().sort_index().to_dict(),
        )


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's starting weights came from.

    Attributes:
        backbone: the backbone name.
        requested: what params asked for: `imagenet` or `none`.
        used: what training started from: `imagenet` or `random`.
        detail: why, when `used` differs from `requested` (e.g. the download error).
        sha256: digest of the ImageNet weights file used; empty for random weights.

    With `components.training.backbones`: requested = params training.weights, used = the
    WeightsSource's kind, detail = its reason, sha256 = its sha256.
    """

    backbone: str
    requested: str
    used: str
    detail: str = ""
    sha256: str = ""

    @property
    def fell_back(self) -> bool:
        """ImageNet weights were asked for but training started from random weights."""
        return self.requested == "imagenet" and self.used != "imagenet"


@dataclass(frozen=True)
class LeakageComparison:
    """One backbone's test metrics after a patient-level and an image-level split.

    Attributes:
        backbone: the backbone trained twice on the same data.
        patient_split: metric -> Estimate on the test set of the patient-level split.
        image_split: metric -> Estimate on the test set of the image-level split.
        level: `slice` or `patient`, the level both are measured at.
    """

    backbone: str
    patient_split: Mapping[str, Estimate]
    image_split: Mapping[str, Estimate]
    level: str = "slice"

    @classmethod
    def from_results(
        cls,
        backbone: str,
        patient_split: EvaluationResults,
        image_split: EvaluationResults,
        level: str = "slice",
    ) -> LeakageComparison:
        """Take the backbone's test metrics from the two evaluations.

        Raises:
            ValueError: unknown level, or the backbone is missing from an evaluation.
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        metrics = []
        for name, results in (("patient", patient_split), ("image", image_split)):
            if backbone not in results.candidates:
                raise ValueError(f"{backbone} is not among the {name}-split candidates")
            metrics.append(results.candidates[backbone].metrics["test"][level])
        return cls(backbone, metrics[0], metrics[1], level)


@dataclass(frozen=True)
class StudyInputs:
    """Everything the study page shows; only `results` and `data` are required.

    Attributes:
        results: the evaluation of every candidate (`components.evaluation.candidates.evaluate`).
        data: the data summary.
        weights: starting weights of each trained backbone; empty when not recorded.
        histories: backbone -> per-epoch history (`models/<backbone>/history.csv`).
        leakage: the patient- versus image-level split comparison; None when not run.
        registry: the registry outcome; None when the register stage has not run.
        gradcam_png: a Grad-CAM figure (`components.evaluation.gradcam`) to embed; None for none.
        title: the page title.
        run_info: facts shown under the title (e.g. git commit, MLflow run, date).
        validation_page: the data validation results page, relative to the study page's
            folder; None for none.
    """

    results: EvaluationResults
    data: DataSummary
    weights: tuple[WeightsInfo, ...] = ()
    histories: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    leakage: LeakageComparison | None = None
    registry: RegistryOutcome | None = None
    gradcam_png: Path | None = None
    title: str = "Multiple myeloma versus osteolytic bone metastasis on spinal CT"
    run_info: Mapping[str, str] = field(default_factory=dict)
    validation_page: str | None = None


@dataclass(frozen=True)
class StudyReport:
    """Where `write_study_report` wrote the page and its figures (key as in FIGURES)."""

    html: Path
    figures: dict[str, Path]


def load_histories(models_dir: str | Path, backbones: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Read `<models_dir>/<backbone>/history.csv` of each backbone, with a `kept` column that
    marks the epoch training kept (`best_epoch` of its metrics.json, by training.monitor).

    Raises:
        FileNotFoundError: a backbone has no history file.
    """
    out = {}
    for backbone in backbones:
        path = Path(models_dir) / backbone / HISTORY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training history; run `myelomet train` first")
        history = pd.read_csv(path)
        metrics = path.with_name(METRICS_FILE)
        best = json.loads(metrics.read_text()).get("best_epoch") if metrics.is_file() else None
        out[backbone] = history.assign(kept=_epochs(history) == best)
    return out


def load_weights_info(
    models_dir: str | Path, backbones: Sequence[str], requested: str
) -> tuple[WeightsInfo, ...]:
    """Read the weights each backbone trained from, from `<models_dir>/<backbone>/metrics.json`
    (keys `weights`, `weights_sha256`, `weights_note`, as `components.training.worker` writes them).

    Args:
        models_dir: the training output folder.
        backbones: backbone names, in the order wanted.
        requested: params training.weights (`imagenet` or `none`).

    Raises:
        FileNotFoundError: a backbone has no metrics file.
        ValueError: a metrics file does not say which weights were used.
    """
    out = []
    for backbone in backbones:
        path = Path(models_dir) / backbone / METRICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training metrics; run `myelomet train` first")
        record = json.loads(path.read_text())
        if "weights" not in record:
            raise ValueError(f"{path}: no 'weights' entry; retrain {backbone} with this version")
        out.append(
            WeightsInfo(
                backbone,
                requested,
                str(record["weights"]),
                detail=str(record.get("weights_note") or ""),
                sha256=str(record.get("weights_sha256") or ""),
            )
        )
    return tuple(out)


# ---------------------------------------------------------------------------- formatting


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def format_value(value: float | None, digits: int = 2) -> str:
    """A number with `digits` decimals; an em dash when missing or not finite."""
    return f"{value:.{digits}f}" if _finite(value) else "—"


def format_estimate(estimate: Estimate, digits: int = 2) -> str:
    """`0.87 (0.79–0.94)`; the interval is left out when undefined, `—` when all is."""
    value = format_value(estimate.value, digits)
    if not (_finite(estimate.ci_low) and _finite(estimate.ci_high)):
        return value
    return f"{value} ({estimate.ci_low:.{digits}f}–{estimate.ci_high:.{digits}f})"


def _ci_label(confidence: float) -> str:
    return f"{confidence:.0%} CI"


# ---------------------------------------------------------------------------- figures


def _colours(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def _line_style(results: EvaluationResults, name: str) -> dict[str, object]:
    return {
        "linewidth": 2.6 if name == results.selected else 1.4,
        "linestyle": "--" if name == ENSEMBLE else "-",
    }


def roc_figure(results: EvaluationResults, split: str = "test", level: str = "patient") -> Figure:
    """ROC curves of every candidate on one plot, AUC and interval in the legend.

    The selected candidate is drawn thicker, the ensemble dashed; a dot marks each
    candidate's operating point at its validation threshold.

    Raises:
        ValueError: unknown split or level.
    """
    points = roc_plot_data(results, split, level)
    colours = _colours(list(results.candidates))
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=1, linestyle=":", label="chance")
    for name, candidate in results.candidates.items():
        curve = points[points["candidate"] == name]
        if curve.empty:
            continue
        metrics = candidate.metrics[split][level]
        label = f"{name}: AUC {format_estimate(metrics['auc'])}"
        if name == results.selected:
            label += " (selected)"
        ax.plot(
            curve["fpr"],
            curve["tpr"],
            color=colours[name],
            label=label,
            **_line_style(results, name),
        )
        fpr, tpr = 1 - metrics["specificity"].value, metrics["sensitivity"].value
        if _finite(fpr) and _finite(tpr):
            ax.plot(fpr, tpr, "o", color=colours[name], markersize=5)
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 − specificity (false positive rate)",
        ylabel="Sensitivity (true positive rate)",
        title=f"ROC, {SPLIT_LABELS[split]} set, {level} level (positive: {results.classes[0]})",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title=f"AUC ({_ci_label(results.confidence)})")
    return fig


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def confusion_grid(
    results: EvaluationResults, split: str = "test", level: str = "patient"
) -> Figure:
    """One confusion matrix per candidate: counts and row percentages, class names on the axes.

    Raises:
        ValueError: unknown split or level.
    """
    data = confusion_plot_data(results, split, level)
    order = list(results.classes)
    names = list(results.candidates)
    rows, cols = _grid(len(names), 4)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows + 0.4), layout="constrained")
    cmap = colormaps["Blues"]
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        part = data[data["candidate"] == name]
        counts = (
            pd.crosstab(part["actual"], part["predicted"])
            .reindex(index=order, columns=order, fill_value=0)
            .to_numpy()
        )
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(share, cmap=cmap, vmin=0, vmax=1)
        for (r, c), n in np.ndenumerate(counts):
            ax.text(
                c,
                r,
                f"{n}\n{share[r, c]:.1%}",
                ha="center",
                va="center",
                fontsize=10,
                color="white" if share[r, c] > 0.6 else "black",
            )
        ax.set_xticks(range(2), order)
        ax.set_yticks(range(2), order)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual")
        threshold = results.candidates[name].thresholds[level]
        ax.set_title(f"{name}\nthreshold {threshold:.2f}", fontsize=10)
    fig.suptitle(f"Confusion matrices, {SPLIT_LABELS[split]} set, {level} level")
    return fig


def _epochs(history: pd.DataFrame) -> np.ndarray:
    if "epoch" in history.columns:
        return history["epoch"].to_numpy()
    return np.arange(1, len(history) + 1)


def _history_panel(ax: Axes, history: pd.DataFrame, metric: str, title: str) -> None:
    epochs = _epochs(history)
    drawn = False
    for column, label, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "--")):
        if column in history.columns:
            ax.plot(epochs, history[column], style, label=label)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
    if "kept" in history.columns and history["kept"].any():
        ax.axvline(epochs[history["kept"].to_numpy()][0], color="0.5", linestyle=":")
    if "phase" in history.columns:  # e.g. head training, then fine-tuning
        changes = np.flatnonzero(
            history["phase"].to_numpy()[1:] != history["phase"].to_numpy()[:-1]
        )
        for i in changes + 1:
            ax.axvline(epochs[i] - 0.5, color="black", linewidth=0.8)
    ax.set(title=title, xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)


def training_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Loss and accuracy per epoch, train against validation, one panel pair per backbone.

    Args:
        histories: backbone -> per-epoch frame with loss, val_loss, accuracy and val_accuracy
            (an `epoch` column is used for the x axis when present, and the epoch training
            kept, where a boolean `kept` column marks it, is drawn dotted).

    Raises:
        ValueError: no histories.
    """
    if not histories:
        raise ValueError("no training histories to plot; pass models/<backbone>/history.csv")
    rows, pairs = _grid(len(histories), 2)
    fig = Figure(figsize=(6.4 * pairs, 2.8 * rows), layout="constrained")
    for i, (name, history) in enumerate(histories.items()):
        _history_panel(
            fig.add_subplot(rows, 2 * pairs, 2 * i + 1), history, "loss", f"{name}: loss"
        )
        _history_panel(
            fig.add_subplot(rows, 2 * pairs, 2 * i + 2), history, "accuracy", f"{name}: accuracy"
        )
    return fig


def reliability_diagram(
    results: EvaluationResults, split: str = "test", level: str = "slice"
) -> Figure:
    """Reliability curves of every candidate, ECE and interval in the legend; below, the
    number of rows per probability bin.

    Raises:
        ValueError: unknown split or level.
    """
    points = calibration_plot_data(results, split, level)
    colours = _colours(list(results.candidates))
    fig = Figure(figsize=(6.4, 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], color="0.7", linewidth=1, linestyle=":", label="perfect calibration")
    for name, candidate in results.candidates.items():
        curve = points[points["candidate"] == name]
        ece = format_estimate(candidate.metrics[split][level]["ece"])
        style = _line_style(results, name)
        top.plot(
            curve["p_mean"],
            curve["observed"],
            marker="o",
            markersize=4,
            color=colours[name],
            label=f"{name}: ECE {ece}",
            **style,
        )
        bottom.plot(curve["p_mean"], curve["count"], marker=".", color=colours[name], **style)
    top.set(
        xlim=(0, 1),
        ylim=(0, 1),
        ylabel=f"Observed fraction {results.classes[0]}",
        title=f"Reliability, {SPLIT_LABELS[split]} set, {level} level",
    )
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left", title=f"ECE ({_ci_label(results.confidence)})")
    bottom.set(xlabel=f"Mean predicted probability of {results.classes[0]}", ylabel=f"{level}s")
    bottom.grid(alpha=0.3)
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write a figure as PNG, creating the folder.

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def write_figures(inputs: StudyInputs, out_dir: str | Path) -> dict[str, Path]:
    """Write every figure the inputs allow as `<out_dir>/<key>.png`.

    Returns:
        Figure key (as in FIGURES) -> path, in page order; the Grad-CAM figure, when given,
        is referred to where it lies.
    """
    results = inputs.results
    figures = {
        "roc_patient": roc_figure(results, "test", "patient"),
        "roc_slice": roc_figure(results, "test", "slice"),
        "confusion_patient": confusion_grid(results, "test", "patient"),
        "confusion_slice": confusion_grid(results, "test", "slice"),
        "reliability": reliability_diagram(results, "test", "slice"),
    }
    if inputs.histories:
        figures["training_curves"] = training_curves(inputs.histories)
    paths = {key: save_png(fig, Path(out_dir) / f"{key}.png") for key, fig in figures.items()}
    if inputs.gradcam_png is not None:
        paths["gradcam"] = Path(inputs.gradcam_png)
    return {key: paths[key] for key in FIGURES if key in paths}


# ---------------------------------------------------------------------------- HTML


class _Html(str):
    """Markup that is already safe; every other string is escaped on output."""


def _text(value: object) -> str:
    return value if isinstance(value, _Html) else html.escape(str(value))


def _table(
    head: Sequence[object],
    rows: Sequence[Sequence[object]],
    row_classes: Sequence[str] | None = None,
) -> _Html:
    header = "".join(f"<th>{_text(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>")
    return _Html(
        f'<div class="scroll"><table><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _p(*parts: object) -> _Html:
    return _Html("<p>" + "".join(_text(p) for p in parts) + "</p>")


def _b(text: object) -> _Html:
    return _Html(f"<strong>{_text(text)}</strong>")


def _banner(kind: str, *parts: object) -> _Html:
    return _Html(
        f'<div class="banner {kind}" role="note">' + "".join(_text(p) for p in parts) + "</div>"
    )


def _section(anchor: str, title: str, *blocks: str) -> _Html:
    """A titled section; `blocks` are markup (built by the helpers here), not text."""
    return _Html(f'<section id="{anchor}"><h2>{_text(title)}</h2>{"".join(blocks)}</section>')


def _figure(key: str, path: Path) -> _Html:
    title, caption = FIGURES[key]
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return _Html(
        f'<figure id="fig-{key}"><img alt="{_text(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><strong>{_text(title)}.</strong> {_text(caption)}</figcaption></figure>"
    )


def _not_run(what: str) -> _Html:
    return _Html(f'<p class="muted">Not run: {_text(what)}</p>')


def _intro(inputs: StudyInputs) -> _Html:
    r = inputs.results
    facts = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in inputs.run_info.items())
    level, metric = parse_metric_name(r.select_metric)
    return _Html(
        f"<header><h1>{_text(inputs.title)}</h1>"
        + (f'<dl class="facts">{facts}</dl>' if facts else "")
        + "</header>"
        + _p(
            "Seven ImageNet backbones were fine-tuned to tell multiple myeloma (MM) from "
            "osteolytic metastatic bone tumour (OMBT) on spinal CT slices, reproducing the "
            f"study of {PAPER_CITATION}. Unlike the paper, patients (not slices) were split "
            "into training, validation and test sets; every choice (decision thresholds, "
            f"ensemble members, the selected model by validation {level}-level "
            f"{METRIC_LABELS[metric]}) was made on validation only and the test set was "
            f"measured once. Each metric carries a {_ci_label(r.confidence)} from "
            f"{r.n_bootstrap} bootstrap resamples of patients, stratified by class. "
            f"Positive class: {r.classes[0]}."
        )
    )


def _alerts(inputs: StudyInputs) -> _Html:
    """Warnings repeated at the top of the page, each pointing to its section."""
    blocks = []
    fell_back = [w.backbone for w in inputs.weights if w.fell_back]
    if fell_back:
        blocks.append(
            _banner(
                "warn",
                _b("Random initialisation: "),
                f"{', '.join(fell_back)} trained without ImageNet weights (unavailable); "
                "see Weights provenance.",
            )
        )
    if inputs.data.shared_patients:
        blocks.append(
            _banner(
                "warn",
                _b("Patient leakage: "),
                f"{inputs.data.shared_patients} patients have slices in more than one split; "
                "see Data.",
            )
        )
    return _Html("".join(blocks))


def _data_section(data: DataSummary, validation_page: str | None) -> _Html:
    head = ["Split"]
    for c in data.classes:
        head += [f"{c} patients", f"{c} slices"]
    head += ["Patients", "Slices"]
    rows = []
    for split in ("train", "val", "test", "all"):
        row: list[object] = [SPLIT_LABELS.get(split, "all")]
        for c in data.classes:
            row += [data.patients[split][c], data.slices[split][c]]
        row += [sum(data.patients[split].values()), sum(data.slices[split].values())]
        rows.append(row)
    blocks = [_table(head, rows, ["", "", "", "total"])]
    if data.shared_patients:
        blocks.append(
            _banner(
                "warn",
                _b("Patients shared between splits: "),
                f"{data.shared_patients} patients have slices in more than one split, so the "
                "test set is not independent of training (image-level split).",
            )
        )
    else:
        blocks.append(_p("No patient has slices in more than one split."))
    if data.rejects:
        blocks.append(_Html("<h3>Files rejected at ingest</h3>"))
        blocks.append(_table(["Reason", "Files"], [[k, v] for k, v in data.rejects.items()]))
    else:
        blocks.append(_p("No file was rejected at ingest."))
    if validation_page is not None:
        href = html.escape(validation_page, quote=True)
        blocks.append(
            _Html(f'<p>Every data check and its result: <a href="{href}">data validation</a>.</p>')
        )
    return _section("data", "Data", *blocks)


def _overview_table(r: EvaluationResults) -> _Html:
    head = [
        "Candidate",
        "Patient AUC",
        "Patient accuracy",
        "Slice AUC",
        "Slice accuracy",
        "Paper accuracy",
    ]
    rows = []
    for name in r.ranking:
        test = r.candidates[name].metrics["test"]
        paper = PAPER_TABLE2.get(name, {}).get("accuracy")
        rows.append(
            [
                name,
                format_estimate(test["patient"]["auc"]),
                format_estimate(test["patient"]["accuracy"]),
                format_estimate(test["slice"]["auc"]),
                format_estimate(test["slice"]["accuracy"]),
                format_value(paper, 3),
            ]
        )
    return _table(head, rows, ["chosen" if n == r.selected else "" for n in r.ranking])


def _candidate_card(r: EvaluationResults, name: str) -> _Html:
    candidate = r.candidates[name]
    test = candidate.metrics["test"]
    paper = PAPER_TABLE2.get(name, {})
    counts = candidate.counts["test"]
    rows = [
        [
            METRIC_LABELS[m],
            format_value(paper.get(m), 3),
            format_estimate(test["slice"][m]),
            format_estimate(test["patient"][m]),
        ]
        for m in METRICS
    ]
    members = "" if candidate.members == (name,) else f" (mean of {', '.join(candidate.members)})"
    note = (
        f"Test: {counts['n_slices']} slices of {counts['n_patients']} patients "
        f"({counts['n_positive_patients']} {r.classes[0]}). Thresholds from validation: "
        f"slice {candidate.thresholds['slice']:.3f}, patient {candidate.thresholds['patient']:.3f}."
    )
    chosen = " chosen" if name == r.selected else ""
    return _Html(
        f'<div class="card{chosen}"><h3>{_text(name)}{_text(members)}</h3>'
        + _table(["Metric", "Paper (image split)", "Slice level", "Patient level"], rows)
        + f'<p class="small">{_text(note)}</p></div>'
    )


def _table2_section(r: EvaluationResults) -> _Html:
    ci = _ci_label(r.confidence)
    return _section(
        "table2",
        "Table 2 reproduction (test set)",
        _p(
            f"Test-set metrics of every candidate with {ci}s, beside the paper's Table 2. The "
            "paper's numbers come from 300 slices drawn at random from all patients' slices, "
            "without intervals, and do not state the positive class or the threshold; ours "
            "come from patients never seen in training or selection, at thresholds chosen on "
            f"validation (Youden's J), with {r.classes[0]} as the positive class. The two are "
            "therefore not directly comparable: the paper's split lets a model recognise "
            "patients it was trained on."
        ),
        _Html("<h3>Overview</h3>"),
        _overview_table(r),
        _Html('<div class="cards">'),
        *[_candidate_card(r, name) for name in r.ranking],
        _Html("</div>"),
        _p("Paper: ", PAPER_CITATION, ", Table 2."),
    )


def _selection_section(r: EvaluationResults) -> _Html:
    level, metric = parse_metric_name(r.select_metric)
    chosen = r.candidates[r.selected]
    value = chosen.metrics["val"][level][metric]
    label = f"{level}-level {METRIC_LABELS[metric]}"
    rows = [
        [
            rank,
            name,
            ", ".join(r.candidates[name].members),
            format_estimate(r.candidates[name].metrics["val"][level][metric]),
            format_estimate(r.candidates[name].metrics["test"][level][metric]),
        ]
        for rank, name in enumerate(r.ranking, start=1)
    ]
    test = chosen.metrics["test"]
    chosen_rows = [
        [METRIC_LABELS[m], format_estimate(test["slice"][m]), format_estimate(test["patient"][m])]
        for m in (*METRICS, "brier", "ece")
    ]
    ensemble = (
        f"The ensemble averages the {len(r.ensemble_members)} best backbones on validation: "
        f"{', '.join(r.ensemble_members)}."
        if r.ensemble_members
        else "No ensemble was formed."
    )
    return _section(
        "selection",
        "Model selection (on validation)",
        _p(
            "Selected: ",
            _b(r.selected),
            f", by validation {label} = {format_estimate(value)} ({_ci_label(r.confidence)}). ",
            ensemble,
            " Validation values are optimistic (thresholds were tuned on them); the test "
            "column is the estimate of performance.",
        ),
        _table(
            ["Rank", "Candidate", "Members", f"Validation {label}", f"Test {label}"],
            rows,
            ["chosen" if n == r.selected else "" for n in r.ranking],
        ),
        _Html(f"<h3>The chosen model: {_text(r.selected)}</h3>"),
        _table(["Metric (test)", "Slice level", "Patient level"], chosen_rows),
    )


def _comparisons_section(r: EvaluationResults) -> _Html:
    table = comparisons_table(r)
    if table.empty:
        return _section(
            "comparisons", "Pairwise comparisons", _not_run("fewer than two candidates")
        )
    alpha = 1 - r.confidence
    rows = [
        [
            row.first,
            row.second,
            format_estimate(Estimate(row.auc_difference, row.ci_low, row.ci_high)),
            format_value(row.p_value, 3),
        ]
        for row in table.itertuples()
    ]
    marks = ["significant" if row.p_value < alpha else "" for row in table.itertuples()]
    return _section(
        "comparisons",
        "Pairwise comparisons (test set)",
        _p(
            "Difference in patient-level test AUC (first minus second) with a paired patient "
            f"bootstrap {_ci_label(r.confidence)} and two-sided p-value; highlighted rows have "
            f"p < {alpha:.2f}. With {len(table)} comparisons and no correction for "
            f"multiplicity, about {alpha * len(table):.1f} would fall below {alpha:.2f} by "
            "chance alone."
        ),
        _table(["First", "Second", "AUC difference", "p-value"], rows, marks),
    )


def _leakage_section(leakage: LeakageComparison | None, confidence: float) -> _Html:
    title = "Leakage: patient-level versus image-level split"
    if leakage is None:
        return _section(
            "leakage",
            title,
            _not_run(
                "train one backbone on an image-level split (split.mode: image) to measure how "
                "much the paper's random split of slices inflates its metrics."
            ),
        )
    rows = []
    for m in LEAKAGE_METRICS:
        patient, image = leakage.patient_split.get(m), leakage.image_split.get(m)
        if patient is None or image is None:
            continue
        rows.append(
            [
                METRIC_LABELS[m],
                format_estimate(patient),
                format_estimate(image),
                format_value(image.value - patient.value),
            ]
        )
    auc_p, auc_i = leakage.patient_split.get("auc"), leakage.image_split.get("auc")
    gap = auc_i.value - auc_p.value if auc_p is not None and auc_i is not None else math.nan
    if _finite(gap) and gap > 0:
        verdict = (
            f"Here the image-level split scores {gap:.2f} higher in test AUC: that gain is "
            "inflated by patient leakage and says nothing about new patients."
        )
    else:
        verdict = (
            "Here the image-level split did not score higher in test AUC, but its number is "
            "still not an estimate of performance on new patients."
        )
    return _section(
        "leakage",
        title,
        _p(
            f"The same backbone, {leakage.backbone}, trained and tested on the same data "
            "split two ways; test metrics at the ",
            leakage.level,
            f" level with {_ci_label(confidence)}s. In the image-level split (the paper's) "
            "slices of one patient sit in both training and test sets, so the model can "
            "recognise the patient rather than the disease and the image-level number is "
            "inflated by patient leakage. ",
            verdict,
        ),
        _table(["Metric (test)", "Patient-level split", "Image-level split", "Difference"], rows),
    )


def _weights_section(weights: Sequence[WeightsInfo]) -> _Html:
    title = "Weights provenance"
    if not weights:
        return _section("weights-provenance", title, _not_run("no weights recorded."))
    blocks: list[str] = []
    fell_back = [w.backbone for w in weights if w.fell_back]
    if fell_back:
        blocks.append(
            _banner(
                "warn",
                _b("Warning: trained from random initialisation. "),
                f"ImageNet weights were unavailable for {', '.join(fell_back)}, so "
                f"{'it was' if len(fell_back) == 1 else 'they were'} trained from random "
                "weights. These results are not transfer learning and are not comparable with "
                "the paper's; make the weights available (myelomet fetch-weights, or "
                "MYELOMET_WEIGHTS_DIR) and retrain.",
            )
        )
    by_choice = [w.backbone for w in weights if w.requested != "imagenet"]
    if by_choice:
        blocks.append(
            _banner(
                "info",
                f"Random initialisation by configuration (training.weights: none) for "
                f"{', '.join(by_choice)}.",
            )
        )
    rows = [
        [
            w.backbone,
            w.requested,
            "ImageNet" if w.used == "imagenet" else "random init",
            w.sha256[:16],
            w.detail,
        ]
        for w in weights
    ]
    blocks.append(
        _table(
            ["Backbone", "Requested", "Used", "Weights file sha256", "Detail"],
            rows,
            ["fallback" if w.fell_back else "" for w in weights],
        )
    )
    return _section("weights-provenance", title, *blocks)


def _calibration_section(r: EvaluationResults, figure: str) -> _Html:
    rows = []
    for name in r.ranking:
        test = r.candidates[name].metrics["test"]
        rows.append(
            [name]
            + [format_estimate(test[level][m], 3) for level in LEVELS for m in ("brier", "ece")]
        )
    return _section(
        "calibration",
        "Calibration (test set)",
        _p(
            "Brier score and expected calibration error (lower is better), with "
            f"{_ci_label(r.confidence)}s. A well-ranked model (high AUC) can still give "
            "probabilities that are too confident; check these before reading p_mm as a risk."
        ),
        _table(
            ["Candidate", "Slice Brier", "Slice ECE", "Patient Brier", "Patient ECE"],
            rows,
            ["chosen" if n == r.selected else "" for n in r.ranking],
        ),
        figure,
    )


def _registry_section(registry: RegistryOutcome | None) -> _Html:
    title = "Model registry"
    if registry is None:
        return _section("registry", title, _not_run("the register stage has not run yet."))
    previous = (
        f"version {registry.previous_version}, {format_value(registry.previous_value, 3)}"
        if registry.previous_version is not None
        else "none (first registration)"
    )
    rows = [
        ["Registered model", registry.model_name],
        ["Version", registry.version],
        ["Alias", registry.alias],
        ["Candidate", registry.candidate],
        [f"New version, {registry.metric}", format_value(registry.value, 3)],
        [f"Previous champion, {registry.metric}", previous],
    ]
    kind = "ok" if registry.alias == "champion" else "info"
    outcome = (
        f"Promoted: {registry.model_name}@champion is now version {registry.version}."
        if registry.alias == "champion"
        else f"Not promoted: version {registry.version} is registered as challenger."
    )
    return _section(
        "registry",
        title,
        _banner(kind, _b(outcome), f" {registry.reason}" if registry.reason else ""),
        _table(["", "This run"], rows),
    )


_CSS = """
:root{--ink:#1f2933;--muted:#616e7c;--line:#d9e2ec;--bg:#f5f7fa;--accent:#1f5f99}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--ink);background:#fff}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
header h1{font-size:26px;margin:8px 0 4px;color:var(--accent)}
h2{font-size:20px;margin:40px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:20px 0 8px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;
z-index:1;font-size:13px}
nav a{color:var(--accent);text-decoration:none;margin-right:14px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px;
color:var(--muted);margin:4px 0 12px}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13.5px;
font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:var(--bg);font-weight:600}
tbody tr:nth-child(even){background:#fbfcfd}
tr.chosen td{background:#e8f1fb;font-weight:600}
tr.total td{border-top:2px solid var(--line);font-weight:600}
tr.significant td{background:#fff7e0}
tr.fallback td{background:#fdecea}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
.card{border:1px solid var(--line);border-radius:8px;padding:4px 14px}
.card.chosen{border-color:var(--accent);box-shadow:0 0 0 1px var(--accent)}
.banner{border-radius:6px;padding:10px 14px;margin:10px 0;border-left:5px solid}
.banner.warn{background:#fff4e5;border-color:#e8890c}
.banner.info{background:#eef4fb;border-color:var(--accent)}
.banner.ok{background:#e9f7ef;border-color:#2f9e5b}
.muted,.small{color:var(--muted)}.small{font-size:12.5px}
figure{margin:20px 0;padding:12px;border:1px solid var(--line);border-radius:8px}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:0 16px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:var(--muted);margin-top:8px}
footer{margin-top:48px;font-size:12px;color:var(--muted)}
"""

_PAIRED = ("roc_patient", "roc_slice")  # shown side by side
_NAV = (
    ("data", "Data"),
    ("table2", "Table 2"),
    ("selection", "Selection"),
    ("comparisons", "Comparisons"),
    ("leakage", "Leakage"),
    ("weights-provenance", "Weights"),
    ("calibration", "Calibration"),
    ("figures", "Figures"),
    ("registry", "Registry"),
)


def study_page(inputs: StudyInputs, figures: Mapping[str, str | Path]) -> str:
    """The study report as one self-contained HTML document.

    Args:
        inputs: what to report.
        figures: figure key (as in FIGURES) -> PNG file, embedded as base64; keys absent
            are left out, unknown keys are ignored.

    Returns:
        The HTML text.

    Raises:
        FileNotFoundError: a figure file does not exist.
    """
    r = inputs.results
    embedded = {key: _figure(key, Path(figures[key])) for key in FIGURES if key in figures}
    rocs = "".join(embedded[k] for k in _PAIRED if k in embedded)
    other = [_Html(f'<div class="pair">{rocs}</div>')] if rocs else []
    other += [embedded[k] for k in embedded if k not in (*_PAIRED, "reliability")]
    nav = "".join(f'<a href="#{a}">{_text(t)}</a>' for a, t in _NAV)
    body = "".join(
        [
            _intro(inputs),
            _alerts(inputs),
            _data_section(inputs.data, inputs.validation_page),
            _table2_section(r),
            _selection_section(r),
            _comparisons_section(r),
            _leakage_section(inputs.leakage, r.confidence),
            _weights_section(inputs.weights),
            _calibration_section(r, embedded.get("reliability", "")),
            _section("figures", "Figures", *(other or [_not_run("no figures were rendered.")])),
            _registry_section(inputs.registry),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_text(inputs.title)}</title><style>{_CSS}</style></head><body>"
        f"<nav>{nav}</nav><main>{body}"
        f"<footer>Generated by myelomet. Paper values: {_text(PAPER_CITATION)}, Table 2."
        "</footer></main></body></html>\n"
    )


def write_study_report(
    out_html: str | Path, inputs: StudyInputs, figures_dir: str | Path | None = None
) -> StudyReport:
    """Write every figure as PNG and the self-contained study page that embeds them.

    Args:
        out_html: the HTML file to write; its folder is created.
        inputs: what to report.
        figures_dir: where the PNG figures go; default `<folder of out_html>/figures`.

    Returns:
        The paths written.
    """
    out = Path(out_html)
    folder = Path(figures_dir) if figures_dir is not None else out.parent / "figures"
    figures = write_figures(inputs, folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(study_page(inputs, figures), encoding="utf-8")
    return StudyReport(html=out, figures=figures)


def write_training_summary(results: Mapping[str, Mapping], path: str | Path) -> Path:
    """Write the validation results of each trained backbone as a small JSON (a DVC metric).

    Args:
        results: backbone -> training result (components.training.worker.TrainResult as a dict).
        path: the file to write (params evaluation.reports_out / train.json).
    """
    summary = {
        name: {k: r.get(k) for k in ("val_auc", "val_accuracy", "val_loss", "best_epoch")}
        for name, r in results.items()
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    return out


def training_markdown(results: Mapping[str, Mapping], failures: Mapping[str, str]) -> str:
    """The per-backbone training table shown as a Prefect artifact.

    Args:
        results: backbone -> training result (components.training.worker.TrainResult as a dict).
        failures: backbone -> error of those that failed after their retries.
    """
    rows = [
        (
            name,
            r["status"],
            r["weights"],
            r["image_size"],
            r["epochs_run"],
            format_value(r.get("val_auc"), 3),
            format_value(r.get("val_accuracy"), 3),
            f"{r['seconds']:.0f} s",
        )
        for name, r in sorted(results.items())
    ]
    rows += [(name, "**failed**", "", "", "", "", "", error) for name, error in failures.items()]
    header = ("backbone", "status", "weights", "size", "epochs", "val AUC", "val accuracy", "time")
    return "# Training\n\n" + markdown.table(header, rows)


def results_markdown(results: EvaluationResults, registry: RegistryOutcome | None) -> str:
    """Test-set results of every candidate with CIs, the selection and the registry outcome."""
    rows = []
    for name, candidate in results.candidates.items():
        patient = candidate.metrics["test"]["patient"]
        slices = candidate.metrics["test"]["slice"]
        rows.append(
            (
                f"**{name}**" if name == results.selected else name,
                format_estimate(patient["auc"]),
                format_estimate(patient["accuracy"]),
                format_estimate(slices["auc"]),
                format_estimate(slices["sensitivity"]),
                format_estimate(slices["specificity"]),
                format_estimate(slices["kappa"]),
            )
        )
    header = (
        "candidate",
        "patient AUC",
        "patient accuracy",
        "slice AUC",
        "slice sensitivity",
        "slice specificity",
        "slice kappa",
    )
    lines = [
        "# Study results (test set, 95% CI)",
        "",
        markdown.table(header, rows),
        "",
        f"Selected on validation by `{results.select_metric}`: **{results.selected}**.",
    ]
    if registry is not None:
        lines.append(
            f"Registered `{registry.model_name}` version {registry.version} as "
            f"**{registry.alias}**: {registry.reason}"
        )
    return "\n".join(lines)
