"""The model card of a registered version: what it is for, what it was trained and tested
on, how it was chosen, how well it did (Table 2 with CIs at both levels) and its limits.

Written as markdown: the version's description in the MLflow UI and `model_card.md` in its
registration run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pandas as pd

from components.config import Config
from components.data.split import FOLD_COLUMN
from components.evaluation.candidates import CandidateResult, EvaluationResults
from components.evaluation.report_content import METRIC_LABELS, format_estimate
from components.markdown import table
from components.metric_names import ALL_METRICS, LEVELS

if TYPE_CHECKING:
    from components.registry_outcome import RegistryOutcome

CARD_FILE = "model_card.md"


def _cohort_table(split: pd.DataFrame, classes: tuple[str, ...]) -> str:
    """Patients and slices per split; with cross-validation, those each fold tests."""
    if FOLD_COLUMN in split:
        test = split[split["split"] == "test"]
        parts = [(f"fold {f} test", rows) for f, rows in test.groupby(FOLD_COLUMN, sort=True)]
    else:
        parts = [(part, split[split["split"] == part]) for part in ("train", "val", "test")]
    rows = []
    for name, rows_of in parts:
        cells = [f"{rows_of[rows_of['label'] == c]['patient'].nunique()}" for c in classes]
        rows.append([name, *cells, rows_of["patient"].nunique(), len(rows_of)])
    header = ["split", *(f"{c} patients" for c in classes), "patients", "slices"]
    return table(header, rows)


def _split_line(cfg: Config) -> str:
    s = cfg.split
    stratified = f"stratified by label and {', '.join(s.stratify) or 'nothing else'}"
    if s.folds:
        return (
            f"- Split: patient-level {s.folds}-fold cross-validation, seed {s.seed}, "
            f"{stratified}; fold f tests its patients, validates on fold f+1 and trains on "
            "the rest, so every patient is tested once, out of fold"
        )
    return (
        f"- Split: {s.mode}-level, train/val/test {s.train:g}/{s.val:g}/{s.test:g}, "
        f"seed {s.seed}, {stratified}"
    )


def _results_table(candidate: CandidateResult) -> str:
    test = candidate.metrics["test"]
    rows = [
        [METRIC_LABELS.get(m, m), *(format_estimate(test[level][m], 3) for level in LEVELS)]
        for m in ALL_METRICS
    ]
    return table(["metric", *(f"{level} level" for level in LEVELS)], rows)


def model_card(
    cfg: Config,
    results: EvaluationResults,
    tags: Mapping[str, str],
    outcome: RegistryOutcome,
    split: pd.DataFrame,
) -> str:
    """The card of a newly registered version.

    Args:
        cfg: the study's configuration.
        results: the evaluation; `tags["candidate"]` names the registered candidate.
        tags: the registration's tags (candidate, backbones, data_version, weights,
            keras_backend, threshold.<level>).
        outcome: what registration and promotion decided.
        split: the split CSV (image_id, patient, label, split): counted, never copied.
    """
    chosen = results.candidates[tags["candidate"]]
    synthetic = cfg.path(cfg.data.dicom_root).resolve() == cfg.path(cfg.synthetic.out).resolve()
    members = tags["backbones"].split(",")
    weights = dict(zip(members, tags["weights"].split(","), strict=True))
    provenance = ", ".join(
        f"{m}: {'ImageNet' if weights[m] == 'imagenet' else 'random initialisation'}"
        for m in members
    )
    thresholds = ", ".join(f"{level} {chosen.thresholds[level]:.3f}" for level in LEVELS)
    options = results.options
    ci = f"{options.confidence:.0%} CI, {options.n_bootstrap} patient-bootstrap resamples"
    folds = len(results.fold_results)
    if folds:
        thresholds += f" (the median of the {folds} folds' own)"
        ci = f"out of fold, {folds} folds pooled, {ci}"
    data = (
        "the synthetic demo cohort (`myelomet synthesize`): no real patient"
        if synthetic
        else "the study's own DICOM data (params `data.dicom_root`), de-identified at ingest"
    )
    limits = [
        "Research use only: not a medical device, not validated for diagnosis or treatment.",
        "Single site: no external validation; the intervals are wide for a small cohort."
        if folds
        else "Single site and single split: no external validation; the intervals are wide "
        "for a small test set.",
        "2-D slices without 3-D context or clinical data; thresholds set on this validation "
        "set may not transfer to other scanners or populations.",
    ]
    if synthetic:
        limits.insert(
            1,
            "Trained and tested on synthetic phantoms: its figures say nothing "
            "about performance on real CT.",
        )
    return "\n".join(
        [
            f"# Model card: {outcome.model_name} version {outcome.version}",
            "",
            "## Intended use",
            "Research on telling multiple myeloma (MM) from osteolytic bone metastasis (OMBT) "
            f"on spinal CT slices; `p_{cfg.positive_class.lower()}` is the probability of "
            f"{cfg.positive_class}, per slice and, as the mean over a patient's slices, per "
            "patient.",
            "",
            "## Model",
            f"- Candidate: **{chosen.name}** (backbones {', '.join(members)})",
            *(
                [
                    f"- The fold ensemble: the mean probability of the {len(members)} models "
                    f"the {folds} folds trained, each on its own training patients"
                ]
                if folds
                else []
            ),
            f"- Weights: {provenance}",
            f"- Keras backend: {tags.get('keras_backend', 'unknown')}",
            f"- Thresholds, chosen on validation: {thresholds}",
            "",
            "## Data",
            f"- Source: {data}",
            f"- Data version: `{tags['data_version']}`",
            _split_line(cfg),
            "",
            _cohort_table(split, cfg.classes),
            "",
            "## Selection",
            f"The best of {len(results.candidates)} candidates on validation "
            f"`{results.select_metric}`, never on test. Ranking: {', '.join(results.ranking)}.",
            f"Promotion: **{outcome.alias}**: {outcome.reason}",
            "",
            f"## Test results ({ci})",
            "",
            _results_table(chosen),
            "",
            "## Known limits",
            *(f"- {line}" for line in limits),
            "",
        ]
    )
