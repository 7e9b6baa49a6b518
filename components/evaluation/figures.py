"""The study's figures: ROC curves, confusion matrices, training curves, reliability diagram.

Figures are `matplotlib.figure.Figure` objects made without pyplot, so no global state or
backend is touched; `save_png` writes one and `write_figures` writes every figure the study
page (`components.evaluation.report_html`) embeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from components.evaluation.candidates import ENSEMBLE, EvaluationResults
from components.evaluation.metric_files import (
    calibration_plot_data,
    confusion_plot_data,
    roc_plot_data,
)
from components.evaluation.report_content import (
    SPLIT_LABELS,
    StudyInputs,
    ci_label,
    epoch_numbers,
    format_estimate,
)

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
        if math.isfinite(fpr) and math.isfinite(tpr):
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
    ax.legend(loc="lower right", fontsize=8, title=f"AUC ({ci_label(results.options.confidence)})")
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
        cut = "each fold's threshold" if results.fold_results else f"threshold {threshold:.2f}"
        ax.set_title(f"{name}\n{cut}", fontsize=10)
    fig.suptitle(f"Confusion matrices, {SPLIT_LABELS[split]} set, {level} level")
    return fig


def _history_panel(ax: Axes, history: pd.DataFrame, metric: str, title: str) -> None:
    epochs = epoch_numbers(history)
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
    top.legend(fontsize=8, loc="upper left", title=f"ECE ({ci_label(results.options.confidence)})")
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
