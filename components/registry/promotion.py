"""Registration and the promotion gate: the selected candidate becomes a model version.

Promotion uses aliases only: a new version becomes `champion` when there is none, or when it
beats the champion on the same test set (recorded values when both were tested on the same
data version, else the champion re-scored on the current test set), by more than zero and at
least `min_improvement`; otherwise it becomes `challenger`. The comparison is written as
`promotion.*` tags on the new version. The registered model itself is `pyfunc.MyelometModel`.

Who is champion is the promotion ledger's newest entry (`registered_models.promotion_ledger`);
the alias follows it. A version that earns champion claims the ledger's next generation, a
compare-and-set the store enforces, so two evaluates at once (two processes, two machines on
one tracking server) cannot both take it: the one whose claim is refused reads the new
champion and decides again against it. Only a claimant moves the `champion` alias (again
while the ledger's head moves, so a late write is corrected), and a first decision is made
against the version the alias names: an alias moved by hand in the MLflow UI (a rollback)
stands until a version beats it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from components.artifacts import MANIFEST_FILE
from components.config import Config
from components.evaluation.candidates import EvaluationResults
from components.evaluation.metrics import aggregate_patients, resampled_metrics
from components.metric_names import (
    LOWER_IS_BETTER,
    THRESHOLD_METRICS,
    parse_metric_name,
)
from components.registered_models import (
    LedgerHead,
    RegisteredVersion,
    claim_generation,
    describe_version,
    ledger_head,
    promotion_ledger,
    register_version,
    registered_version,
    set_alias,
    tag_version,
    version_by_alias,
)
from components.registry.candidate_model import log_candidate
from components.registry.model_card import CARD_FILE, model_card
from components.registry.pyfunc import CANDIDATE_TAG, DATA_VERSION_TAG, load_predictor
from components.registry_outcome import RegistryOutcome
from components.tracking import Store, connect, resolve_store
from components.training.batches import data_paths, data_version

CHAMPION = "champion"
CHALLENGER = "challenger"
TEST_TAG_PREFIX = "test."
PROMOTION_PREFIX = "promotion."
# Claims lost in a row (each to a promotion made meanwhile) before register_and_promote gives up.
MAX_CLAIMS = 20


@dataclass(frozen=True)
class _Decision:
    promote: bool
    champion_value: float | None
    compared: str  # first | recorded | rescored | not_comparable
    reason: str


def _decide(
    champion: RegisteredVersion | None,
    data_version: str,
    metric: str,
    new_value: float,
    rescore: Callable[[str], float] | None,
    min_improvement: float,
    name: str,
) -> _Decision:
    if champion is None:
        return _Decision(True, None, "first", "no champion yet: the first version becomes it")
    recorded = champion.tags.get(f"{TEST_TAG_PREFIX}{metric}")
    if champion.tags.get(DATA_VERSION_TAG) == data_version and recorded is not None:
        old, compared = float(recorded), "recorded"
        basis = f"recorded on the same data version {data_version}"
    elif rescore is not None:
        old, compared = float(rescore(f"models:/{name}/{champion.version}")), "rescored"
        basis = f"re-scored on the current test set, data version {data_version}"
    else:
        return _Decision(
            False,
            None,
            "not_comparable",
            f"champion v{champion.version} was tested on data version "
            f"{champion.tags.get(DATA_VERSION_TAG)}, this version on {data_version}, and no "
            "re-scoring was given; the champion stays",
        )
    _, base_metric = parse_metric_name(metric)
    gain = old - new_value if base_metric in LOWER_IS_BETTER else new_value - old
    promote = math.isfinite(gain) and gain > 0 and gain >= min_improvement
    verdict = "beats" if promote else "does not beat"
    return _Decision(
        promote,
        old,
        compared,
        f"test {metric} {new_value:.4f} {verdict} champion v{champion.version}'s {old:.4f} "
        f"({basis}) by more than 0 and at least {min_improvement:g} (difference {gain:+.4f})",
    )


def _champion(
    store: Store, name: str, head: LedgerHead, overtaken: bool
) -> RegisteredVersion | None:
    """What a version is compared with: the version the alias names (set by the last
    promotion, or by hand), or, once a claim was refused, the ledger's head, the promotion
    that won meanwhile and may not have moved the alias yet."""
    if overtaken and head.version is not None:
        return registered_version(store, name, head.version)
    return version_by_alias(store, name, CHAMPION)


def _project_champion(store: Store, name: str, ledger: str) -> None:
    """Point the `champion` alias at the ledger's head, again while the head moves: an alias
    written late (after a newer promotion's) is overwritten by the newer head."""
    written = None
    for _ in range(MAX_CLAIMS):
        head = ledger_head(store, ledger)
        if head == written or head.version is None:
            return
        if registered_version(store, name, head.version) is not None:
            set_alias(store, name, CHAMPION, head.version)
        written = head


def register_and_promote(
    store: Store,
    model_uri: str,
    name: str,
    tags: Mapping[str, str],
    test_metric_name: str,
    new_test_value: float,
    champion_rescore: Callable[[str], float] | None,
    min_improvement: float,
) -> RegistryOutcome:
    """Register a new version and give it the `champion` alias only if it earns it.

    Args:
        store: the MLflow store (its tracking URI is also the registry).
        model_uri: the logged model (LoggedCandidate.model_uri).
        name: registered model name (params evaluation.registered_model).
        tags: version tags; must hold `candidate` and `data_version` (LoggedCandidate.tags,
            plus any test metrics to record).
        test_metric_name: `<level>_<metric>` compared (params evaluation.select_metric).
        new_test_value: the new version's value of it on the test set.
        champion_rescore: the champion's value of the metric on the current test set from
            its model URI (see `rescorer`); used only when the champion was tested on another
            data version. None: such a champion is kept.
        min_improvement: the least gain over the champion that promotes.

    Returns:
        What happened, for the study report.

    Raises:
        ValueError: tags lack candidate or data_version, the metric name is invalid, or the
            promotion ledger's experiment is deleted.
        RuntimeError: MAX_CLAIMS other promotions in a row took champion first.
    """

    missing = [t for t in (CANDIDATE_TAG, DATA_VERSION_TAG) if t not in tags]
    if missing:
        raise ValueError(f"tags lack {missing}; pass LoggedCandidate.tags")
    parse_metric_name(test_metric_name)
    connect(store)
    version_tags = {
        **{k: str(v) for k, v in tags.items()},
        f"{TEST_TAG_PREFIX}{test_metric_name}": repr(float(new_test_value)),
    }
    ledger = promotion_ledger(store, name)
    version = register_version(store, model_uri, name, version_tags)
    overtaken: list[str] = []  # champions promoted between this one's decision and claim
    for _ in range(MAX_CLAIMS):
        head = ledger_head(store, ledger)
        champion = _champion(store, name, head, bool(overtaken))
        champion_version = champion.version if champion is not None else None
        decision = _decide(
            champion,
            tags[DATA_VERSION_TAG],
            test_metric_name,
            float(new_test_value),
            champion_rescore,
            min_improvement,
            name,
        )
        if not decision.promote:
            alias = CHALLENGER
            break
        entry = f"{version} replaces {champion_version or 'none'}"
        if claim_generation(store, ledger, head.generation + 1, entry):
            alias = CHAMPION
            break
        overtaken.append(ledger_head(store, ledger).version or "?")
    else:
        raise RuntimeError(
            f"{MAX_CLAIMS} other promotions of {name} took champion while version {version} "
            "was being compared; it has no alias: run the evaluate stage again"
        )
    if alias == CHALLENGER:
        set_alias(store, name, CHALLENGER, version)
    else:
        _project_champion(store, name, ledger)
    reason = decision.reason
    if overtaken:
        reason = (
            f"version {', '.join(overtaken)} became champion while this one was compared; "
            f"compared again: {reason}"
        )
    promotion = {
        "decision": alias,
        "metric": test_metric_name,
        "new_value": repr(float(new_test_value)),
        "champion_version": champion_version or "none",
        "champion_value": repr(decision.champion_value)
        if decision.champion_value is not None
        else "none",
        "compared": decision.compared,
        "min_improvement": repr(float(min_improvement)),
        "reason": reason,
    }
    tag_version(store, name, version, {f"{PROMOTION_PREFIX}{k}": v for k, v in promotion.items()})
    return RegistryOutcome(
        model_name=name,
        version=version,
        alias=alias,
        candidate=tags[CANDIDATE_TAG],
        metric=test_metric_name,
        value=float(new_test_value),
        previous_version=champion_version,
        previous_value=decision.champion_value,
        reason=reason,
    )


def rescorer(
    test_hu: Sequence[np.ndarray],
    y: npt.ArrayLike,
    patients: npt.ArrayLike,
    metric_name: str,
    n_bins: int = 10,
) -> Callable[[str], float]:
    """A `champion_rescore`: a model's point value of a metric on the given test slices.

    Threshold metrics use the model's own threshold of the metric's level.

    Args:
        test_hu: the test slices in HU, 2-D each.
        y: 1 for the positive class, per slice.
        patients: patient of each slice.
        metric_name: `<level>_<metric>`, e.g. patient_auc.
        n_bins: calibration bins (params evaluation.calibration_bins) for the ECE.

    Raises:
        ValueError: the metric name is invalid (at once); when called, the model lacks a
            threshold the metric needs.
    """
    level, metric = parse_metric_name(metric_name)

    def rescore(model_uri: str) -> float:
        predictor = load_predictor(model_uri)
        p = predictor.predict_hu(test_hu)
        rows = pd.DataFrame({"patient": np.asarray(patients), "y": np.asarray(y), "p": p})
        if level == "patient":
            rows = aggregate_patients(rows["patient"], rows["y"], rows["p"])
        threshold = predictor.spec.thresholds.get(level)
        if threshold is None and metric in THRESHOLD_METRICS:
            raise ValueError(f"{model_uri} has no {level} threshold; {metric_name} needs one")
        values = resampled_metrics(
            rows["y"],
            rows["p"],
            rows["patient"],
            threshold if threshold is not None else 0.5,
            np.ones((1, rows["patient"].nunique())),
            n_bins,
        )
        return float(values[metric].iloc[0])

    return rescore


def load_test_slices(
    manifest: Path, split: Path, positive_class: str
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The test split's HU slices, labels (1 = positive class) and patients, as ingested.

    Raises:
        FileNotFoundError: manifest, split or a slice file is missing.
        ValueError: the split names image_ids the manifest lacks.
    """
    rows = pd.read_csv(split, dtype=str)
    rows = rows[rows["split"] == "test"]
    files = pd.read_csv(manifest, usecols=["image_id", "file"], dtype=str)
    test = rows.merge(files, on="image_id", how="left", validate="one_to_one")
    if test["file"].isna().any():
        raise ValueError(f"{split}: test image_ids missing from {manifest}; rerun `myelomet split`")
    hu = [np.load(manifest.parent / f) for f in test["file"]]
    y = (test["label"] == positive_class).to_numpy(dtype=int)
    return hu, y, test["patient"].to_numpy()


def register_selected(
    cfg: Config, results: EvaluationResults, parent_run_id: str
) -> RegistryOutcome:
    """Log the selected candidate, register it and run the promotion gate (evaluate flow).

    The new version is compared on params `evaluation.select_metric` at test; a champion
    tested on another data version is re-scored on the current test slices (read only then).
    With cross-validation the version is the selected candidate's fold ensemble
    (`crossval.pool_candidate`) and its test value the pooled out-of-fold one.

    Args:
        cfg: the parsed params.yaml.
        results: evaluation of the candidates; `results.selected` is registered.
        parent_run_id: the study's MLflow run.

    Returns:
        What happened, for the study report.

    Raises:
        FileNotFoundError, ValueError: as `log_candidate` and `register_and_promote`.
    """
    chosen = results.candidates[results.selected]
    store = resolve_store(cfg.tracking, cfg.root)
    logged = log_candidate(
        store,
        parent_run_id,
        chosen,
        cfg,
        data_version=data_version(*data_paths(cfg)) if results.fold_results else None,
    )
    test = chosen.metrics["test"]
    metric = cfg.evaluation.select_metric
    level, name = parse_metric_name(metric)

    def rescore(model_uri: str) -> float:
        hu, y, patients = load_test_slices(
            cfg.path(cfg.ingest.out) / MANIFEST_FILE, cfg.path(cfg.split.out), cfg.positive_class
        )
        return rescorer(hu, y, patients, metric, cfg.evaluation.calibration_bins)(model_uri)

    outcome = register_and_promote(
        store,
        logged.model_uri,
        cfg.evaluation.registered_model,
        logged.tags,
        metric,
        test[level][name].value,
        rescore,
        cfg.evaluation.min_improvement,
    )
    split = pd.read_csv(cfg.path(cfg.split.out), dtype=str)
    card = model_card(cfg, results, logged.tags, outcome, split)
    describe_version(store, outcome.model_name, outcome.version, logged.run_id, card, CARD_FILE)
    return outcome
