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
from components.evaluation.candidates import CandidateResult, EvaluationResults
from components.evaluation.report import METRIC_LABELS, format_estimate
from components.markdown import table
from components.metric_names import ALL_METRICS, LEVELS

if TYPE_CHECKING:
    from components.registry.promotion import RegistryOutcome

CARD_FILE = "model_card.md"


def _cohort_table(split: pd.DataFrame, classes: tuple[str, ...]) -> str:
    rows = []
    for part in ("train", "val", "test"):
        rows_of = split[split["split"] == part]
        cells = [f"{rows_of[rows_of['label'] == c]['patient'].nunique()}" for c in classes]
        rows.append([part, *cells, rows_of["patient"].nunique(), len(rows_of)])
    header = ["split", *(f"{c} patients" for c in classes), "patients", "slices"]
    return table(header, rows)


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
    ci = f"{results.confidence:.0%} CI, {results.n_bootstrap} patient-bootstrap resamples"
    data = (
        "the synthetic demo cohort (`myelomet synthesize`): no real patient"
        if synthetic
        else "the study's own DICOM data (params `data.dicom_root`), de-identified at ingest"
    )
    limits = [
        "Research use only: not a medical device, not validated for diagnosis or treatment.",
        "Single site and single split: no external validation; the intervals are wide for a "
        "small test set.",
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
            f"- Weights: {provenance}",
            f"- Keras backend: {tags.get('keras_backend', 'unknown')}",
            f"- Thresholds, chosen on validation: {thresholds}",
            "",
            "## Data",
            f"- Source: {data}",
            f"- Data version: `{tags['data_version']}`",
            f"- Split: {cfg.split.mode}-level, train/val/test "
            f"{cfg.split.train:g}/{cfg.split.val:g}/{cfg.split.test:g}, seed {cfg.split.seed}, "
            f"stratified by label and {', '.join(cfg.split.stratify) or 'nothing else'}",
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
