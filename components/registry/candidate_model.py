"""Logging an evaluated candidate as the registered pyfunc (`pyfunc.MyelometModel`): its
serving spec, its members' model files, its signature, pinned requirements and tags.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import mlflow

from components.artifacts import METRICS_FILE, MODEL_FILE
from components.config import Config
from components.registry.pyfunc import (
    BACKBONES_TAG,
    BACKEND_TAG,
    CANDIDATE_TAG,
    DATA_VERSION_TAG,
    GIT_COMMIT_TAG,
    MODEL_ARTIFACT,
    SPEC_ARTIFACT,
    SPEC_FILE,
    WEIGHTS_TAG,
    MyelometModel,
    model_key,
    signature,
)
from components.registry.serving import MemberSpec, Predictor, ServingSpec
from components.tracking import Store, candidate_run, connect, git_commit

_PINNED = (
    "mlflow",
    "numpy",
    "pandas",
    "pillow",
    "pydantic",
    "pyyaml",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
)


def pip_requirements() -> list[str]:
    """The served model's requirements, pinned to the versions installed here: the active
    Keras backend's framework and Keras, then the rest."""
    from components.training.runtime import framework_requirements

    pins = framework_requirements()
    for dist in _PINNED:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue  # an optional decoder plugin that is not installed here
    return pins


@dataclass(frozen=True)
class LoggedCandidate:
    """A candidate logged as a pyfunc, ready for `register_and_promote`.

    Attributes:
        model_uri: the logged model's URI (models:/m-...).
        run_id: the candidate's run, a child of the study run.
        tags: candidate, backbones, data_version, weights, git_commit and thresholds, for the
            model version.
    """

    model_uri: str
    run_id: str
    tags: dict[str, str]


def _member_metrics(models_dir: Path, backbone: str) -> dict[str, Any]:
    folder = models_dir / backbone
    for name in (MODEL_FILE, METRICS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: not found; run `myelomet train` for {backbone}"
            )
    return json.loads((folder / METRICS_FILE).read_text())


class Candidate(Protocol):
    """What `log_candidate` needs of an evaluated candidate (`CandidateResult` has it).

    Attributes:
        name: a backbone or `ensemble`.
        members: its models: backbones, or with cross-validation fold models
            `fold-<f>/<backbone>`.
        thresholds: level -> threshold chosen on validation.
    """

    @property
    def name(self) -> str: ...

    @property
    def members(self) -> Sequence[str]: ...

    @property
    def thresholds(self) -> Mapping[str, float]: ...


def log_candidate(
    store: Store,
    parent_run_id: str,
    candidate: Candidate,
    cfg: Config,
    data_version: str | None = None,
) -> LoggedCandidate:
    """Log a candidate as the pyfunc in its run of the study (`tracking.candidate_run`).

    The models are loaded and traced once here, with the code `load_context` runs, so a
    candidate that cannot be served fails before it is registered.

    Args:
        store: the MLflow store.
        parent_run_id: the study's run; the registration run is its child.
        candidate: the evaluated candidate, its models and thresholds.
        cfg: the params its models were trained with: the models under
            `training.models_out/<member>/model.keras`, the input's channel windows and
            crop, `classes` (the order of the softmax outputs), `positive_class`, and the
            project root (for the git commit tag).
        data_version: with cross-validation, the version of the whole split (the fold
            models each trained on their fold's); the members must then be fold models.

    Returns:
        The logged model's URI, the candidate's run and the tags for its model version.

    Raises:
        FileNotFoundError: a member has no model.keras or metrics.json.
        ValueError: the members were trained on different data, or the models do not fit
            the spec.
    """
    members = tuple(candidate.members)
    models_dir = cfg.path(cfg.training.models_out)
    windows, crop = tuple(cfg.input.channel_windows()), cfg.input.crop
    info = {b: _member_metrics(models_dir, b) for b in members}
    versions = {m["data_version"] for m in info.values()}
    if data_version is not None:
        if not all(m.startswith("fold-") for m in members):
            raise ValueError(f"members {list(members)} are not fold models (fold-<f>/<backbone>)")
        versions = {data_version}
    elif len(versions) != 1:
        raise ValueError(
            f"members {list(members)} were trained on different data versions {sorted(versions)}; "
            "retrain them on the same split"
        )
    spec = ServingSpec(
        candidate=candidate.name,
        members=tuple(
            MemberSpec(
                backbone=b, image_size=int(info[b]["image_size"]), windows=windows, crop=crop
            )
            for b in members
        ),
        classes=tuple(cfg.classes),
        positive_class=cfg.positive_class,
        thresholds={k: float(v) for k, v in candidate.thresholds.items()},
        keras_backend=",".join(sorted({str(info[b].get("keras_backend", "")) for b in members})),
    )
    model_files = {b: models_dir / b / MODEL_FILE for b in members}
    Predictor.load(spec, list(model_files.values()))
    tags = {
        CANDIDATE_TAG: candidate.name,
        BACKBONES_TAG: ",".join(members),
        DATA_VERSION_TAG: versions.pop(),
        WEIGHTS_TAG: ",".join(str(info[b].get("weights")) for b in members),
        GIT_COMMIT_TAG: git_commit(cfg.root) or "none",
        BACKEND_TAG: spec.keras_backend,
        **{f"threshold.{k}": f"{v:.6g}" for k, v in spec.thresholds.items()},
    }
    connect(store)
    run_id = candidate_run(
        store, parent_run_id, candidate.name, members, cross_validated=data_version is not None
    )
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tags(tags)
        spec_file = Path(tmp) / SPEC_FILE
        spec_file.write_text(spec.model_dump_json(indent=2))
        logged = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=MyelometModel(),
            artifacts={
                SPEC_ARTIFACT: str(spec_file),
                **{model_key(b): str(f) for b, f in model_files.items()},
            },
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=signature(spec.probability_key),
            pip_requirements=pip_requirements(),
        )
    return LoggedCandidate(logged.model_uri, run.info.run_id, tags)
