"""The self-contained HTML study page, rendered from `templates/study.html.j2`.

The functions here turn the study's inputs into plain values (strings, numbers, lists and
dicts, numbers already formatted); the template holds the page's structure and prose, and
Jinja2 escapes every value on output. The style sheet `templates/study.css` is inlined and
every figure embedded as a base64 PNG, so the page needs no other file and can be archived or
mailed as it is.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, StrictUndefined

from components.evaluation.candidates import ENSEMBLE, EvaluationResults
from components.evaluation.crossval import fold_spread
from components.evaluation.figures import FIGURES, write_figures
from components.evaluation.metric_files import comparisons_table
from components.evaluation.metrics import Estimate
from components.evaluation.paper import PAPER_CITATION, PAPER_TABLE2
from components.evaluation.report_content import (
    METRIC_LABELS,
    SPLIT_LABELS,
    DataSummary,
    LeakageComparison,
    StudyInputs,
    WeightsInfo,
    ci_label,
    format_estimate,
    format_value,
)
from components.metric_names import LEVELS, METRICS, parse_metric_name

if TYPE_CHECKING:
    from components.registry_outcome import RegistryOutcome

TEMPLATE = "study.html.j2"
LEAKAGE_METRICS = ("auc", "accuracy", "sensitivity", "specificity")
_PAIRED = ("roc_patient", "roc_slice")  # shown side by side


@dataclass(frozen=True)
class StudyReport:
    """Where `write_study_report` wrote the page and its figures (key as in FIGURES)."""

    html: Path
    figures: dict[str, Path]


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("components.evaluation", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _row_marks(r: EvaluationResults) -> list[str]:
    """The row class of each candidate in ranking order: the selected one is marked."""
    return ["chosen" if n == r.selected else "" for n in r.ranking]


def _data(data: DataSummary, validation_page: str | None) -> dict[str, object]:
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
    return {
        "head": head,
        "rows": rows,
        "shared_patients": data.shared_patients,
        "rejects": [[k, v] for k, v in data.rejects.items()],
        "validation_page": validation_page,
    }


def _overview(r: EvaluationResults) -> dict[str, object]:
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
    return {"rows": rows, "classes": _row_marks(r)}


def _members(r: EvaluationResults, name: str) -> list[str] | None:
    """What a candidate averages (None for a lone backbone); with cross-validation, per fold."""
    if r.fold_results:
        per_fold = [fold.candidates[name].members for fold in r.fold_results]
        if all(members == (name,) for members in per_fold):
            return None
        return [f"fold {f}: {' + '.join(members)}" for f, members in enumerate(per_fold)]
    members = r.candidates[name].members
    return None if members == (name,) else list(members)


def _card(r: EvaluationResults, name: str) -> dict[str, object]:
    candidate = r.candidates[name]
    test = candidate.metrics["test"]
    paper = PAPER_TABLE2.get(name, {})
    counts = candidate.counts["test"]
    return {
        "name": name,
        "members": _members(r, name),
        "chosen": name == r.selected,
        "rows": [
            [
                METRIC_LABELS[m],
                format_value(paper.get(m), 3),
                format_estimate(test["slice"][m]),
                format_estimate(test["patient"][m]),
            ]
            for m in METRICS
        ],
        "n_slices": counts["n_slices"],
        "n_patients": counts["n_patients"],
        "n_positive": counts["n_positive_patients"],
        "slice_threshold": f"{candidate.thresholds['slice']:.3f}",
        "patient_threshold": f"{candidate.thresholds['patient']:.3f}",
    }


def _selection(r: EvaluationResults) -> dict[str, object]:
    level, metric = parse_metric_name(r.select_metric)
    test = r.candidates[r.selected].metrics["test"]
    return {
        "selected": r.selected,
        "value": format_estimate(r.candidates[r.selected].metrics["val"][level][metric]),
        "ensemble_members": (_members(r, ENSEMBLE) or []) if r.ensemble_members else [],
        "rows": [
            [
                rank,
                name,
                "; ".join(_members(r, name) or [name]),
                format_estimate(r.candidates[name].metrics["val"][level][metric]),
                format_estimate(r.candidates[name].metrics["test"][level][metric]),
            ]
            for rank, name in enumerate(r.ranking, start=1)
        ],
        "classes": _row_marks(r),
        "chosen_rows": [
            [
                METRIC_LABELS[m],
                format_estimate(test["slice"][m]),
                format_estimate(test["patient"][m]),
            ]
            for m in (*METRICS, "brier", "ece")
        ],
    }


def _cross_validation(r: EvaluationResults) -> dict[str, object] | None:
    """The per-fold spread of the test AUC beside the pooled value; None for one split."""
    spread = fold_spread(r)
    if spread.empty:
        return None
    folds = len(r.fold_results)
    rows = []
    for row in spread.to_dict("records"):
        pooled = r.candidates[row["candidate"]].metrics["test"]
        rows.append(
            [
                row["candidate"],
                *(format_value(row[f"patient fold {f}"], 2) for f in range(folds)),
                f"{format_value(row['patient mean'], 2)} ± {format_value(row['patient sd'], 2)}",
                format_estimate(pooled["patient"]["auc"]),
                format_estimate(pooled["slice"]["auc"]),
            ]
        )
    return {
        "folds": folds,
        "head": [
            "Candidate",
            *(f"Fold {f}" for f in range(folds)),
            "Mean ± SD",
            "Pooled patient AUC",
            "Pooled slice AUC",
        ],
        "rows": rows,
        "classes": _row_marks(r),
    }


def _comparisons(r: EvaluationResults) -> dict[str, object] | None:
    table = comparisons_table(r)
    if table.empty:
        return None
    alpha = 1 - r.options.confidence
    return {
        "rows": [
            [
                row.first,
                row.second,
                format_estimate(Estimate(row.auc_difference, row.ci_low, row.ci_high)),
                format_value(row.p_value, 3),
            ]
            for row in table.itertuples()
        ],
        "classes": ["significant" if row.p_value < alpha else "" for row in table.itertuples()],
        "alpha": f"{alpha:.2f}",
        "expected": f"{alpha * len(table):.1f}",
    }


def _leakage(leakage: LeakageComparison | None) -> dict[str, object] | None:
    if leakage is None:
        return None
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
    return {
        "backbone": leakage.backbone,
        "level": leakage.level,
        "rows": rows,
        # the AUC gained by the image-level split; None when it gained nothing
        "gap": f"{gap:.2f}" if math.isfinite(gap) and gap > 0 else None,
    }


def _weights(weights: Sequence[WeightsInfo]) -> dict[str, object] | None:
    if not weights:
        return None
    return {
        "fell_back": [w.backbone for w in weights if w.fell_back],
        "by_choice": [w.backbone for w in weights if w.requested != "imagenet"],
        "rows": [
            [
                w.backbone,
                w.requested,
                "ImageNet" if w.used == "imagenet" else "random init",
                w.sha256[:16],
                w.detail,
            ]
            for w in weights
        ],
        "classes": ["fallback" if w.fell_back else "" for w in weights],
    }


def _calibration(r: EvaluationResults) -> dict[str, object]:
    rows = []
    for name in r.ranking:
        test = r.candidates[name].metrics["test"]
        rows.append(
            [name]
            + [format_estimate(test[level][m], 3) for level in LEVELS for m in ("brier", "ece")]
        )
    return {"rows": rows, "classes": _row_marks(r)}


def _registry(registry: RegistryOutcome | None) -> dict[str, object] | None:
    if registry is None:
        return None
    previous = (
        f"version {registry.previous_version}, {format_value(registry.previous_value, 3)}"
        if registry.previous_version is not None
        else "none (first registration)"
    )
    promoted = registry.alias == "champion"
    return {
        "kind": "ok" if promoted else "info",
        "promoted": promoted,
        "model_name": registry.model_name,
        "version": registry.version,
        "reason": registry.reason,
        "rows": [
            ["Registered model", registry.model_name],
            ["Version", registry.version],
            ["Alias", registry.alias],
            ["Candidate", registry.candidate],
            [f"New version, {registry.metric}", format_value(registry.value, 3)],
            [f"Previous champion, {registry.metric}", previous],
        ],
    }


def _figures(figures: Mapping[str, str | Path]) -> dict[str, object]:
    embedded = {
        key: {
            "key": key,
            "title": FIGURES[key][0],
            "caption": FIGURES[key][1],
            "data": base64.b64encode(Path(figures[key]).read_bytes()).decode("ascii"),
        }
        for key in FIGURES
        if key in figures
    }
    return {
        "pair": [embedded[k] for k in _PAIRED if k in embedded],
        "others": [v for k, v in embedded.items() if k not in (*_PAIRED, "reliability")],
        "reliability": embedded.get("reliability"),
    }


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
    level, metric = parse_metric_name(r.select_metric)
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=inputs.title,
            run_info=list(inputs.run_info.items()),
            citation=PAPER_CITATION,
            ci=ci_label(r.options.confidence),
            positive=r.classes[0],
            n_bootstrap=r.options.n_bootstrap,
            select_label=f"{level}-level {METRIC_LABELS[metric]}",
            data=_data(inputs.data, inputs.validation_page),
            overview=_overview(r),
            cards=[_card(r, name) for name in r.ranking],
            selection=_selection(r),
            cross_validation=_cross_validation(r),
            comparisons=_comparisons(r),
            leakage=_leakage(inputs.leakage),
            weights=_weights(inputs.weights),
            calibration=_calibration(r),
            figures=_figures(figures),
            registry=_registry(inputs.registry),
        )
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
