"""Logging an evaluated candidate as the registered pyfunc (`pyfunc.MyelometModel`): its
serving spec, its members' model files (Keras, and ONNX checked against them by
`onnx_export`), its signature, pinned requirements and tags.
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
from components.registry.onnx_export import OnnxFiles, check_slices, checked_onnx
from components.registry.pyfunc import (
    BACKBONES_TAG,
    BACKEND_TAG,
    CANDIDATE_TAG,
    DATA_VERSION_TAG,
    GIT_COMMIT_TAG,
    MODEL_ARTIFACT,
    MODEL_CONFIG,
    SPEC_ARTIFACT,
    SPEC_FILE,
    WEIGHTS_TAG,
    MyelometModel,
    model_key,
    onnx_key,
    signature,
)
from components.registry.serving import MemberSpec, Predictor, ServingSpec
from components.tracking import (
    SOURCE_NAME_TAG,
    Store,
    candidate_run,
    connect,
    git_commit,
    source_name,
)

_PINNED = (
    "mlflow",
    "numpy",
    "onnxruntime",
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
        tags: candidate, backbones, data_version, weights, git_commit, keras_backend,
            thresholds, onnx (`yes`, or `no: <why>`) and onnx.check, for the model version.
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
    onnx_files: Mapping[str, Path] | None = None,
) -> LoggedCandidate:
    """Log a candidate as the pyfunc in its run of the study (`tracking.candidate_run`).

    The models are loaded and traced once here, with the code `load_context` runs, so a
    candidate that cannot be served fails before it is registered. With params
    `evaluation.onnx` each member is also exported to ONNX and checked against its Keras
    model on the validation slices (`onnx_export.checked_onnx`) before anything is logged;
    the files are logged beside the Keras ones (`pyfunc.onnx_key`) only when every member
    passes, and the `onnx` tag says `yes` or why not.

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
        onnx_files: member -> an ONNX file exported before (`onnx_export.export_onnx`),
            checked like one exported here and logged only if it passes; None exports them
            when `evaluation.onnx` is true.

    Returns:
        The logged model's URI, the candidate's run and the tags for its model version.

    Raises:
        FileNotFoundError: a member has no model.keras or metrics.json, or a validation
            slice file the ONNX check reads is missing.
        ValueError: the members were trained on different data, the models do not fit
            the spec, or the split names validation slices the manifest lacks.
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
    predictor = Predictor.load(spec, list(model_files.values()))
    connect(store)  # an unusable store fails before the export
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_files is None and not cfg.evaluation.onnx:
            onnx = OnnxFiles(problem="not exported (params evaluation.onnx is false)")
        else:
            onnx = checked_onnx(
                spec,
                predictor.models,
                list(model_files.values()),
                check_slices(cfg),
                Path(tmp) / "onnx",
                onnx_files,
            )
        tags = {
            CANDIDATE_TAG: candidate.name,
            BACKBONES_TAG: ",".join(members),
            DATA_VERSION_TAG: versions.pop(),
            WEIGHTS_TAG: ",".join(str(info[b].get("weights")) for b in members),
            GIT_COMMIT_TAG: git_commit(cfg.root) or "none",
            BACKEND_TAG: spec.keras_backend,
            **{f"threshold.{k}": f"{v:.6g}" for k, v in spec.thresholds.items()},
            **onnx.tags,
        }
        run_id = candidate_run(
            store, parent_run_id, candidate.name, members, cross_validated=data_version is not None
        )
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tags(tags)
            spec_file = Path(tmp) / SPEC_FILE
            spec_file.write_text(spec.model_dump_json(indent=2))
            logged = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=MyelometModel(),
                artifacts={
                    SPEC_ARTIFACT: str(spec_file),
                    **{model_key(b): str(f) for b, f in model_files.items()},
                    **{onnx_key(b): str(f) for b, f in onnx.files.items()},
                },
                code_paths=[str(Path(__file__).resolve().parents[1])],
                signature=signature(spec.probability_key),
                pip_requirements=pip_requirements(),
                model_config=MODEL_CONFIG,
                tags={SOURCE_NAME_TAG: source_name(cfg.root)},
            )
    return LoggedCandidate(logged.model_uri, run.info.run_id, tags)
