"""Names of the evaluation metrics and levels, and `<level>_<metric>` parsing.

A leaf with no imports, so that the configuration can check `evaluation.select_metric`
without pulling in the metrics code.
"""

from __future__ import annotations

THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1", "kappa")
METRICS = (*THRESHOLD_METRICS, "auc")
CALIBRATION_METRICS = ("brier", "ece")
ALL_METRICS = (*METRICS, *CALIBRATION_METRICS)
LOWER_IS_BETTER = frozenset(CALIBRATION_METRICS)
LEVELS = ("slice", "patient")


def parse_metric_name(name: str) -> tuple[str, str]:
    """Split `<level>_<metric>` (e.g. `patient_auc`, `slice_f1`) into level and metric.

    Raises:
        ValueError: the level is not one of LEVELS or the metric not one of ALL_METRICS.
    """
    level, _, metric = name.partition("_")
    if level not in LEVELS or metric not in ALL_METRICS:
        raise ValueError(
            f"metric name {name!r} is not '<level>_<metric>' with level in {list(LEVELS)} "
            f"and metric in {list(ALL_METRICS)}; e.g. 'patient_auc'"
        )
    return level, metric
