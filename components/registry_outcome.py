"""What the register stage did with the selected model, shared by the registry (which
decides it) and the evaluation's report and model card (which show it). A leaf: it imports
nothing of ours, so the report need not import the registry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryOutcome:
    """What the register stage did with the selected model.

    Attributes:
        model_name: registered model name (params `evaluation.registered_model`).
        version: the version just registered.
        alias: `champion` when promoted, else `challenger`.
        candidate: the candidate registered (a backbone or `ensemble`).
        metric: the metric the challenger and champion were compared on.
        value: the new version's value of `metric`.
        previous_version: the champion before this run; None when there was none.
        previous_value: that champion's value of `metric` on the same test set.
        reason: one sentence on why it was or was not promoted.
    """

    model_name: str
    version: str
    alias: str
    candidate: str
    metric: str
    value: float
    previous_version: str | None = None
    previous_value: float | None = None
    reason: str = ""
