"""What one backbone's run is, decided before any training: image size, runtime, data
version, initial weights and the inputs hash.

The inputs hash covers the training code (the import closure of the backbone's process),
the backbone, the data, the weights' checksum, the runtime and every training field that
changes what the model learns; a finished run with the same hash is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.code_closure import source_digest
from components.config import Config
from components.training.batches import data_paths, data_version, hash_json, input_key
from components.training.runtime import Runtime, configure_runtime

if TYPE_CHECKING:
    from components.training.backbones import WeightsSource

# Training fields that decide where, when and from which folder a backbone trains, not what
# it learns (the weights' own checksum is hashed): the rest of the resolved section is in the
# inputs hash, so a new field retrains until it is listed here.
_PLACEMENT = frozenset({
    "backbones", "overrides", "executor", "ray_address", "slurm", "max_parallel", "retries",
    "models_out", "cache_dir", "compile_cache", "processes_per_gpu", "weights_dir",
    "weights_dir_env", "require_pretrained",
})  # fmt: skip
# The module a backbone's process runs: the digest of its closure is in the hash (the stages
# that train depend on the same closure, tests/test_stage_deps.py).
TRAINING_MODULE = "components.training.worker"


@dataclass(frozen=True)
class RunPlan:
    """What one backbone's run is, decided before any training."""

    name: str
    size: int
    runtime: Runtime
    version: str
    source: WeightsSource
    inputs_hash: str


def _weights(name: str, cfg: Config) -> WeightsSource:
    """Resolve the initial weights; fall back to random unless require_pretrained."""
    from components.training.backbones import (
        WeightsSource,
        WeightsUnavailable,
        resolve_weights,
        weights_dir_from,
    )

    tc = cfg.training
    folder = weights_dir_from(tc.weights_dir, tc.weights_dir_env, cfg.root)
    try:
        return resolve_weights(name, tc.weights, folder)
    except WeightsUnavailable as exc:
        if tc.require_pretrained:
            raise
        return WeightsSource.random(str(exc))


def plan_run(name: str, cfg: Config) -> RunPlan:
    """Plan one backbone's run: configures the backend's runtime and resolves the weights.

    Raises:
        FileNotFoundError: manifest or split missing.
        WeightsUnavailable: ImageNet weights required (require_pretrained) but not to be had.
        WeightsChecksumError: an offline weights file does not match its manifest.
    """
    from components.training.backbones import get_backbone

    tc = cfg.training.for_backbone(name)
    size = get_backbone(name).input_size(tc.image_size)
    cache = cfg.path(tc.compile_cache) if tc.compile_cache else None
    runtime = configure_runtime(tc.mixed_precision, tc.xla, cache, tc.cpu_threads)
    version = data_version(*data_paths(cfg))
    source = _weights(name, cfg)
    inputs_hash = hash_json(
        {
            "code": source_digest([TRAINING_MODULE]),
            "backbone": name,
            "size": size,
            "data": version,
            "weights": source.sha256 or "random",
            "precision": runtime.precision,
            "backend": runtime.backend,
            "training": tc.model_dump(mode="json", exclude=_PLACEMENT),
            "input": input_key(cfg),
            "classes": cfg.classes,
            "positive": cfg.positive_class,
        }
    )[:16]
    return RunPlan(name, size, runtime, version, source, inputs_hash)
