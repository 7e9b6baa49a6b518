"""The MLflow model registry side: the served model, registration and the promotion gate.

The registered model is a pyfunc (`MyelometModel`) that takes DICOM files, not tensors: a
DataFrame with a binary column `dicom` (the file's bytes; base64 strings in the scoring
server's JSON) or a string column `path`, and an optional `name` per row. It returns one row
per slice: file, frame, p_<positive>, label, threshold, error. Inside it is a
`serving.Predictor` built from the members' `model.keras` files and a JSON `ServingSpec`,
both logged as artifacts; the `components` package travels with it (`code_paths`), so
`mlflow models serve` works from any folder.

Promotion uses aliases only: a new version becomes `champion` when there is none, or when it
beats the champion on the same test set (recorded values when both were tested on the same
data version, else the champion re-scored on the current test set), by more than zero and at
least `min_improvement`; otherwise it becomes `challenger`. The comparison is written as
`promotion.*` tags on the new version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from components.artifacts import MANIFEST_FILE, METRICS_FILE, MODEL_FILE
from components.config import Config, Window
from components.evaluation.candidates import EvaluationResults, run_metrics
from components.evaluation.metrics import aggregate_patients, resampled_metrics
from components.metric_names import (
    LOWER_IS_BETTER,
    THRESHOLD_METRICS,
    parse_metric_name,
)
from components.registry.model_card import CARD_FILE, model_card
from components.registry.serving import MemberSpec, Predictor, ServingSpec
from components.tracking import (
    Store,
    candidate_run,
    connect,
    git_commit,
    log_run_metrics,
    resolve_store,
    store_folder,
)
from components.training.backbones import ModelFileError

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
SPEC_ARTIFACT = "serving_spec"
SPEC_FILE = "serving_spec.json"

CANDIDATE_TAG = "candidate"
BACKBONES_TAG = "backbones"
DATA_VERSION_TAG = "data_version"
GIT_COMMIT_TAG = "git_commit"
WEIGHTS_TAG = "weights"
BACKEND_TAG = "keras_backend"
TEST_TAG_PREFIX = "test."
PROMOTION_PREFIX = "promotion."

INPUT_COLUMNS = ("dicom", "path", "name")
# The scoring server holds the whole request in memory; a reverse proxy in front should cap
# the body too (nginx client_max_body_size), this only stops the decoding of what got in.
MAX_REQUEST_BYTES = 256 * 1024 * 1024
MAX_REQUEST_BYTES_ENV = "MYELOMET_MAX_REQUEST_BYTES"
# The scoring server refuses `path` rows unless this is "1": a client must not make the
# server read files from its own disk.
ALLOW_PATHS_ENV = "MYELOMET_SERVE_ALLOW_PATHS"
# Next to a local tracking database: held while a version is registered and promoted.
PROMOTION_LOCK = ".promotion.lock"
# Set to "true" by MLflow's scoring server (and `mlflow models predict`) before it serves.
_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"

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


def _output_columns(probability_key: str, per: str = "slice") -> tuple[str, ...]:
    if per == "series":
        return ("series", probability_key, "label", "threshold", "n_slices", "n_rejected", "error")
    return ("file", "frame", probability_key, "label", "threshold", "error")


def _per(frame: pd.DataFrame) -> str:
    """The `per` column's one value (`slice` by default, or `series`)."""
    values = {str(v) for v in frame["per"] if _present(v)} if "per" in frame.columns else set()
    if not values <= {"slice", "series"} or len(values) > 1:
        raise MlflowException.invalid_parameter_value(
            f"per is {sorted(values)}: give one value for all rows, 'slice' (default) or 'series'"
        )
    return values.pop() if values else "slice"


class MyelometModel(mlflow.pyfunc.PythonModel):
    """The registered pyfunc: DICOM files in, one row per slice out."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.max_request_bytes = MAX_REQUEST_BYTES

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the members' keras models and the serving spec, and trace inference once.

        Raises:
            ValueError: the spec is unreadable, does not fit the models, or
                MYELOMET_MAX_REQUEST_BYTES is not a positive integer.
        """
        spec = ServingSpec.from_json(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        files = [Path(context.artifacts[_model_key(m.backbone)]) for m in spec.members]
        self.predictor = Predictor.load(spec, files)
        limit = os.environ.get(MAX_REQUEST_BYTES_ENV, str(MAX_REQUEST_BYTES))
        if not limit.isdigit() or int(limit) == 0:
            raise ValueError(f"{MAX_REQUEST_BYTES_ENV}={limit!r}: expected a positive integer")
        self.max_request_bytes = int(limit)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Predict every slice of the files of the input rows.

        Args:
            context: unused; the artifacts were read by load_context.
            model_input: a `dicom` (bytes) and/or `path` column, optional `name`, optional
                `per` (`slice`, the default, or `series` in every row).
            params: unused.

        Returns:
            Per slice: columns file, frame, p_<positive>, label, threshold, error; one row
            per slice (frame set for multi-frame files) or per unusable file (error set).
            Per series: series, p_<positive>, label, threshold, n_slices, n_rejected, error
            (see `Predictor.predict_series`).

        Raises:
            MlflowException: (HTTP 400 when served) no dicom or path column, a row without
                either, text in `dicom`, paths sent to the scoring server, or more DICOM
                bytes than MYELOMET_MAX_REQUEST_BYTES.
        """
        if self.predictor is None:
            raise RuntimeError("the model is not loaded; load it with mlflow.pyfunc.load_model")
        sources, names = self._sources(model_input)
        per = _per(model_input)
        if per == "series":
            rows = self.predictor.predict_series(sources, names)
        else:
            rows = self.predictor.predict_sources(sources, names)
        columns = _output_columns(self.predictor.spec.probability_key, per)
        return pd.DataFrame(
            [[row.get(c) for c in columns] for row in rows], columns=list(columns), dtype=object
        )

    def _sources(self, frame: pd.DataFrame) -> tuple[list[bytes | str], list[str]]:
        if not isinstance(frame, pd.DataFrame) or not {"dicom", "path"} & set(frame.columns):
            raise MlflowException.invalid_parameter_value(
                'send a "dicom" column (each file\'s bytes, base64-encoded in JSON) or a "path" '
                'column, e.g. {"dataframe_split": {"columns": ["dicom"], "data": [["<base64>"]]}}'
            )
        served = os.environ.get(_SERVING_ENV, "").lower() in ("true", "1")
        paths_allowed = not served or os.environ.get(ALLOW_PATHS_ENV) == "1"
        sources: list[bytes | str] = []
        names: list[str] = []
        total = 0
        for i, row in enumerate(frame.itertuples(index=False)):
            data = getattr(row, "dicom", None)
            path = getattr(row, "path", None)
            name = getattr(row, "name", None)
            if _present(data):
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise MlflowException.invalid_parameter_value(
                        f"row {i}: dicom holds {type(data).__name__}, not bytes; send the file's "
                        "bytes (base64-encoded in JSON)"
                    )
                total += len(data)
                sources.append(bytes(data))
                names.append(str(name) if _present(name) else f"dicom[{i}]")
            elif _present(path):
                if not paths_allowed:
                    raise MlflowException.invalid_parameter_value(
                        "the model server does not read files from its own disk; send each "
                        f"file's bytes in the dicom column (or start it with {ALLOW_PATHS_ENV}=1 "
                        "on a trusted host)"
                    )
                sources.append(str(path))
                names.append(str(name) if _present(name) else str(path))
            else:
                raise MlflowException.invalid_parameter_value(f"row {i} has neither dicom nor path")
        if total > self.max_request_bytes:
            raise MlflowException.invalid_parameter_value(
                f"the request carries {total} bytes of DICOM, over the limit of "
                f"{self.max_request_bytes} ({MAX_REQUEST_BYTES_ENV}); send fewer files per request"
            )
        return sources, names


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _model_key(backbone: str) -> str:
    return f"keras_{backbone}"


def signature(probability_key: str) -> ModelSignature:
    """The pyfunc's signature: optional dicom (binary), path, name and per in; the columns of
    a per-slice or a per-series answer out."""
    inputs = Schema(
        [
            ColSpec("binary", "dicom", required=False),
            ColSpec("string", "path", required=False),
            ColSpec("string", "name", required=False),
            ColSpec("string", "per", required=False),
        ]
    )
    types = {"frame": "long", "threshold": "double", "n_slices": "long", "n_rejected": "long"}
    columns = dict.fromkeys(
        (*_output_columns(probability_key), *_output_columns(probability_key, "series"))
    )
    outputs = Schema(
        [
            ColSpec(types.get(c, "double" if c == probability_key else "string"), c, required=False)
            for c in columns
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


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


def log_candidate(
    store: Store,
    parent_run_id: str,
    candidate: str,
    members: Sequence[str],
    models_dir: Path,
    windows: Sequence[Window],
    classes: Sequence[str],
    positive_class: str,
    thresholds: Mapping[str, float],
    root: Path | None = None,
    crop: float = 1.0,
) -> LoggedCandidate:
    """Log a candidate as the pyfunc in its run of the study (`tracking.candidate_run`).

    The models are loaded and traced once here, with the code `load_context` runs, so a
    candidate that cannot be served fails before it is registered.

    Args:
        store: the MLflow store.
        parent_run_id: the study's run; the registration run is its child.
        candidate: the evaluated candidate (a backbone or `ensemble`).
        members: its backbones (EvaluationResults.candidates[name].members).
        models_dir: the training output folder, `<models_dir>/<backbone>/model.keras`.
        windows: the channel windows (InputConfig.channel_windows()).
        classes: params `classes`, the order of the softmax outputs.
        positive_class: params `positive_class`.
        thresholds: level -> threshold chosen on validation (CandidateResult.thresholds).
        root: project root, for the git commit tag.
        crop: the centre crop of the inputs (InputConfig.crop).

    Returns:
        The logged model's URI, the candidate's run and the tags for its model version.

    Raises:
        FileNotFoundError: a member has no model.keras or metrics.json.
        ValueError: the members were trained on different data, or the models do not fit
            the spec.
    """
    models_dir = Path(models_dir)
    info = {b: _member_metrics(models_dir, b) for b in members}
    versions = {m["data_version"] for m in info.values()}
    if len(versions) != 1:
        raise ValueError(
            f"members {list(members)} were trained on different data versions {sorted(versions)}; "
            "retrain them on the same split"
        )
    spec = ServingSpec(
        candidate=candidate,
        members=tuple(
            MemberSpec(b, int(info[b]["image_size"]), tuple(windows), crop) for b in members
        ),
        classes=tuple(classes),
        positive_class=positive_class,
        thresholds={k: float(v) for k, v in thresholds.items()},
        keras_backend=",".join(sorted({str(info[b].get("keras_backend", "")) for b in members})),
    )
    model_files = {b: models_dir / b / MODEL_FILE for b in members}
    Predictor.load(spec, list(model_files.values()))
    tags = {
        CANDIDATE_TAG: candidate,
        BACKBONES_TAG: ",".join(members),
        DATA_VERSION_TAG: versions.pop(),
        WEIGHTS_TAG: ",".join(str(info[b].get("weights")) for b in members),
        GIT_COMMIT_TAG: (git_commit(root) if root is not None else None) or "none",
        BACKEND_TAG: spec.keras_backend,
        **{f"threshold.{k}": f"{v:.6g}" for k, v in spec.thresholds.items()},
    }
    connect(store)
    run_id = candidate_run(store, parent_run_id, candidate, members)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tags(tags)
        spec_file = Path(tmp) / SPEC_FILE
        spec_file.write_text(spec.to_json())
        logged = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=MyelometModel(),
            artifacts={
                SPEC_ARTIFACT: str(spec_file),
                **{_model_key(b): str(f) for b, f in model_files.items()},
            },
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=signature(spec.probability_key),
            pip_requirements=pip_requirements(),
        )
    return LoggedCandidate(logged.model_uri, run.info.run_id, tags)


@contextlib.contextmanager
def _promotion_lock(store: Store) -> Iterator[None]:
    """Serialise decide-and-set-alias between processes that share a local store: an
    exclusive lock on a file next to the sqlite database (or in the file store). A remote
    tracking server has no such file; there the alias is read back after it is set."""
    folder = store_folder(store)
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / PROMOTION_LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None (no such alias or registered model)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = model.aliases.get(alias)
    return client.get_model_version(name, version) if version is not None else None


@dataclass(frozen=True)
class _Decision:
    promote: bool
    champion_value: float | None
    compared: str  # first | recorded | rescored | not_comparable
    reason: str


def _decide(
    champion: ModelVersion | None,
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
        ValueError: tags lack candidate or data_version, or the metric name is invalid.
    """

    missing = [t for t in (CANDIDATE_TAG, DATA_VERSION_TAG) if t not in tags]
    if missing:
        raise ValueError(f"tags lack {missing}; pass LoggedCandidate.tags")
    parse_metric_name(test_metric_name)
    connect(store)
    client = MlflowClient(store.tracking_uri)
    with _promotion_lock(store):
        champion = _by_alias(client, name, CHAMPION)
        champion_version = str(champion.version) if champion is not None else None
        version_tags = {
            **{k: str(v) for k, v in tags.items()},
            f"{TEST_TAG_PREFIX}{test_metric_name}": repr(float(new_test_value)),
        }
        version = str(mlflow.register_model(model_uri, name, tags=version_tags).version)
        decision = _decide(
            champion,
            tags[DATA_VERSION_TAG],
            test_metric_name,
            float(new_test_value),
            champion_rescore,
            min_improvement,
            name,
        )
        alias = CHAMPION if decision.promote else CHALLENGER
        client.set_registered_model_alias(name, alias, version)
        holder = _by_alias(client, name, CHAMPION)
        if alias == CHAMPION and (holder is None or str(holder.version) != version):
            # another writer without this lock (a remote store) moved the alias meanwhile
            alias = CHALLENGER
            client.set_registered_model_alias(name, alias, version)
            decision = dataclasses.replace(
                decision,
                reason=f"version {holder.version if holder else '?'} took champion at the "
                "same time; this one stays challenger",
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
            "reason": decision.reason,
        }
        for key, value in promotion.items():
            client.set_model_version_tag(name, version, f"{PROMOTION_PREFIX}{key}", value)
    return RegistryOutcome(
        model_name=name,
        version=version,
        alias=alias,
        candidate=tags[CANDIDATE_TAG],
        metric=test_metric_name,
        value=float(new_test_value),
        previous_version=champion_version,
        previous_value=decision.champion_value,
        reason=decision.reason,
    )


def load_predictor(model_uri: str, tracking_uri: str | None = None) -> Predictor:
    """The Predictor inside a registered or logged pyfunc (e.g. models:/myelomet@champion),
    looked up in `tracking_uri` (MLflow's current store when None).

    Raises:
        MlflowException: no model at the URI.
        ModelFileError: a file of the logged model is damaged (python_model.pkl, model.keras).
        TypeError: the model is not a myelomet pyfunc.
    """
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ModelFileError(
            f"python_model.pkl of {model_uri} cannot be unpickled ({type(exc).__name__}: {exc}); "
            "the logged model is damaged or was saved by another version of myelomet: "
            "download it again or register a new one with `myelomet evaluate`"
        ) from exc
    predictor = getattr(model, "predictor", None)
    if not isinstance(predictor, Predictor):
        raise TypeError(f"{model_uri} is not a myelomet model (no serving Predictor inside)")
    return predictor


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
        chosen.name,
        chosen.members,
        cfg.path(cfg.training.models_out),
        cfg.input.channel_windows(),
        cfg.classes,
        cfg.positive_class,
        chosen.thresholds,
        root=cfg.root,
        crop=cfg.input.crop,
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
    log_run_metrics(store, logged.run_id, run_metrics(chosen))
    client = MlflowClient(store.tracking_uri)
    client.log_text(logged.run_id, card, CARD_FILE)
    client.update_model_version(outcome.model_name, outcome.version, description=card)
    return outcome
