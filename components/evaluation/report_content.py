"""What the study report is made of: its inputs, labels and number formats, and the markdown
summaries of training and evaluation.

`StudyInputs` gathers everything the study page (`components.evaluation.report_html`) and its
figures (`components.evaluation.figures`) show; `load_histories` and `load_weights_info` read
parts of it from the training outputs. `format_value` and `format_estimate` write numbers the
same way on the page, in the figures, in the markdown summaries and in the model card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components import markdown
from components.artifacts import HISTORY_FILE, METRICS_FILE
from components.evaluation.candidates import EvaluationResults
from components.evaluation.metrics import Estimate
from components.metric_names import LEVELS

if TYPE_CHECKING:
    from components.registry_outcome import RegistryOutcome

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
        results: the evaluation of every candidate (`candidates.score_candidates`).
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


def epoch_numbers(history: pd.DataFrame) -> np.ndarray:
    """The epoch of each row of a training history: its `epoch` column, else 1, 2, 3..."""
    if "epoch" in history.columns:
        return history["epoch"].to_numpy()
    return np.arange(1, len(history) + 1)


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
        out[backbone] = history.assign(kept=epoch_numbers(history) == best)
    return out


def load_weights_info(
    models_dir: str | Path, backbones: Sequence[str], requested: str
) -> tuple[WeightsInfo, ...]:
    """Read the weights each backbone trained from, from `<models_dir>/<backbone>/metrics.json`
    (keys `weights`, `weights_sha256`, `weights_note`, as `components.training.run_folder` writes
    them).

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


def ci_label(confidence: float) -> str:
    """The name of an interval at `confidence`, e.g. `95% CI`."""
    return f"{confidence:.0%} CI"


# ---------------------------------------------------------------------------- markdown


def write_training_summary(results: Mapping[str, Mapping], path: str | Path) -> Path:
    """Write the validation results of each trained backbone as a small JSON (a DVC metric).

    Args:
        results: backbone -> training result (components.training.run_folder.TrainResult as a dict).
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
        results: backbone -> training result (components.training.run_folder.TrainResult as a dict).
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
    folds = len(results.fold_results)
    scope = f"out of fold, {folds} folds pooled" if folds else "test set"
    lines = [
        f"# Study results ({scope}, 95% CI)",
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
