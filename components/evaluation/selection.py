"""Ranking candidates on validation and comparing them pairwise on test.

The ranking uses only validation metrics, so it picks the ensemble's members and the
selected candidate without looking at the test split. The comparisons are paired patient
bootstraps of the test patient-level AUC: both candidates of a pair are scored on the same
resamples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.evaluation.metrics import DEFAULT_BOOTSTRAP, BootstrapOptions, Estimate, compare_auc
from components.metric_names import LEVELS, LOWER_IS_BETTER, parse_metric_name

if TYPE_CHECKING:
    from components.evaluation.candidates import CandidateResult


@dataclass(frozen=True)
class Comparison:
    """Test-set patient-level AUC of `first` minus that of `second` (paired bootstrap)."""

    first: str
    second: str
    difference: Estimate
    p_value: float


def _score(estimate: Estimate, metric: str) -> float:
    """Smaller is better; NaN ranks last."""
    value = estimate.value if metric in LOWER_IS_BETTER else -estimate.value
    return value if math.isfinite(value) else math.inf


def _rank_key(
    candidate: CandidateResult, level: str, metric: str
) -> tuple[float, float, float, str]:
    val = candidate.metrics["val"]
    other = next(lvl for lvl in LEVELS if lvl != level)
    width = val[level][metric].width
    return (
        _score(val[level][metric], metric),
        _score(val[other][metric], metric),
        width if math.isfinite(width) else math.inf,
        candidate.name,
    )


def rank_candidates(results: Mapping[str, CandidateResult], select_metric: str) -> list[str]:
    """Candidate names, best first, by the VALIDATION value of `select_metric`.

    Ties (frequent at patient level, where a handful of patients often gives AUC 1.0) are
    broken by the same metric at the other level, then by the narrower interval, then by
    name; NaN values rank last.

    Raises:
        ValueError: select_metric is not `<level>_<metric>`.
    """
    level, metric = parse_metric_name(select_metric)
    return sorted(results, key=lambda n: _rank_key(results[n], level, metric))


def compare_candidates(
    results: Mapping[str, CandidateResult],
    order: Sequence[str] | None = None,
    options: BootstrapOptions = DEFAULT_BOOTSTRAP,
) -> tuple[Comparison, ...]:
    """Paired patient bootstrap of the test patient-level AUC difference for every pair.

    Args:
        results: name -> CandidateResult, all on the same test patients.
        order: names in the order pairs are formed (first minus second); default sorted.
        options: resamples, coverage of the interval of the difference, and seed.

    Returns:
        One Comparison per unordered pair.

    Raises:
        ValueError: two candidates were tested on different patients.
    """
    names = list(order) if order is not None else sorted(results)
    tables = {n: results[n].rows("test", "patient") for n in names}
    comparisons = []
    for first, second in itertools.combinations(names, 2):
        a, b = tables[first], tables[second]
        if not a[["patient", "y"]].equals(b[["patient", "y"]]):
            raise ValueError(f"{first} and {second} were tested on different patients")
        outcome = compare_auc(
            a["y"].to_numpy(),
            a["p"].to_numpy(),
            b["p"].to_numpy(),
            a["patient"].to_numpy(),
            options=options,
        )
        comparisons.append(Comparison(first, second, outcome.difference, outcome.p_value))
    return tuple(comparisons)
