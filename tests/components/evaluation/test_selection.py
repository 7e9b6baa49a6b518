"""The ranking of candidates: validation only, lower-is-better metrics, deterministic ties."""

from __future__ import annotations

import pandas as pd

from components.evaluation.candidates import CandidateResult
from components.evaluation.metrics import Estimate
from components.evaluation.selection import rank_candidates
from components.metric_names import ALL_METRICS


def _fake(
    name: str, val: float, test: float, width: float = 0.1, other: float = 0.5
) -> CandidateResult:
    def level(value: float, w: float) -> dict[str, Estimate]:
        return {m: Estimate(value, value - w / 2, value + w / 2) for m in ALL_METRICS}

    return CandidateResult(
        name=name,
        members=(name,),
        thresholds={"slice": 0.5, "patient": 0.5},
        metrics={
            "val": {"patient": level(val, width), "slice": level(other, 0.1)},
            "test": {"patient": level(test, width), "slice": level(test, 0.1)},
        },
        counts={},
        reliability={},
        predictions=pd.DataFrame(),
    )


def test_the_ranking_uses_validation_not_test():
    results = {"A": _fake("A", val=0.9, test=0.6), "B": _fake("B", val=0.8, test=0.99)}
    assert rank_candidates(results, "patient_auc")[0] == "A"
    # Lower is better for calibration metrics.
    assert rank_candidates(results, "patient_brier")[0] == "B"


def test_the_ranking_breaks_ties_deterministically():
    by_other_level = {"A": _fake("A", 1.0, 0.5, other=0.8), "B": _fake("B", 1.0, 0.5, other=0.9)}
    assert rank_candidates(by_other_level, "patient_auc") == ["B", "A"]
    by_width = {"A": _fake("A", 1.0, 0.5, width=0.2), "B": _fake("B", 1.0, 0.5, width=0.1)}
    assert rank_candidates(by_width, "patient_auc")[0] == "B"
    by_name = {"B": _fake("B", 1.0, 0.5), "A": _fake("A", 1.0, 0.5)}
    assert rank_candidates(by_name, "patient_auc")[0] == "A"
    with_nan = {"A": _fake("A", float("nan"), 0.5), "B": _fake("B", 0.1, 0.5)}
    assert rank_candidates(with_nan, "patient_auc")[0] == "B"
