"""The registered model: a pyfunc (`MyelometModel`) that takes DICOM files, not tensors.

Its input is a DataFrame with a binary column `dicom` (the file's bytes; base64 strings in the
scoring server's JSON) or a string column `path`, and an optional `name` per row. It returns one
row per slice: file, frame, p_<positive>, label, threshold, error. Inside it is a
`serving.Predictor` built from the members' `model.keras` files (or their ONNX files, on the
onnx engine: `engines.choose_engine` says which) and a JSON `ServingSpec`, all logged as
artifacts; the `components` package travels with it (`code_paths`), so
`mlflow models serve` works from any folder. Here too: its signature, and loading the
Predictor back; `candidate_model` logs a candidate as this pyfunc. Importing this module
imports no Keras, TensorFlow or JAX: a serve install (`myelomet[serve]`) has none.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import traceback
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from components.data.rejects import DicomRejected, RejectReason
from components.registered_models import download_model
from components.registry.engines import AUTO, ENGINE_CONFIG_KEY, choose_engine
from components.registry.serving import Predictor, ServingSpec, Source
from components.training.model_files import ModelFileError

MODEL_ARTIFACT = "model"
SPEC_ARTIFACT = "serving_spec"
SPEC_FILE = "serving_spec.json"

CANDIDATE_TAG = "candidate"
BACKBONES_TAG = "backbones"
DATA_VERSION_TAG = "data_version"
GIT_COMMIT_TAG = "git_commit"
WEIGHTS_TAG = "weights"
BACKEND_TAG = "keras_backend"

# Logged with the model (`log_model(model_config=...)`): MLflow passes a load's model_config
# (`load_model(..., model_config={"engine": "onnx"})`) to load_context only for the keys
# logged here.
MODEL_CONFIG = {ENGINE_CONFIG_KEY: AUTO}

INPUT_COLUMNS = ("dicom", "path", "name")
# The scoring server holds the whole request in memory; a reverse proxy in front should cap
# the body too (nginx client_max_body_size), this only stops the decoding of what got in.
MAX_REQUEST_BYTES = 256 * 1024 * 1024
MAX_REQUEST_BYTES_ENV = "MYELOMET_MAX_REQUEST_BYTES"
# The scoring server refuses `path` rows unless this is "1": a client must not make the
# server read files from its own disk.
ALLOW_PATHS_ENV = "MYELOMET_SERVE_ALLOW_PATHS"
# Set to "true" by MLflow's scoring server (and `mlflow models predict`) before it serves.
_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"

_log = logging.getLogger(__name__)


class RequestRefused(MlflowException):
    """A whole request the model does not answer, as one line of our own (HTTP 400, or 500
    for a fault of the server).

    MLflow's scoring server rewrites the `message` of an MlflowException from `predict` to
    `Failed to predict data '<the request's DataFrame>'. \nError: ...`: two lines that quote
    the request. Here the first message set is kept, so the client gets this line alone.
    """

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value

    @classmethod
    def bad_request(cls, message: str) -> RequestRefused:
        return cls.invalid_parameter_value(message)


def _output_columns(probability_key: str, per: str = "slice") -> tuple[str, ...]:
    if per == "series":
        return ("series", probability_key, "label", "threshold", "n_slices", "n_rejected", "error")
    return ("file", "frame", probability_key, "label", "threshold", "error")


def _per(frame: pd.DataFrame) -> str:
    """The `per` column's one value (`slice` by default, or `series`)."""
    values = {str(v) for v in frame["per"] if _present(v)} if "per" in frame.columns else set()
    if not values <= {"slice", "series"} or len(values) > 1:
        raise RequestRefused.bad_request(
            f"per is {sorted(values)}: give one value for all rows, 'slice' (default) or 'series'"
        )
    return values.pop() if values else "slice"


class MyelometModel(mlflow.pyfunc.PythonModel):
    """The registered pyfunc: DICOM files in, one row per slice out."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.max_request_bytes = MAX_REQUEST_BYTES

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the serving spec and the members' models on the engine of the load's
        model_config `engine`, else MYELOMET_ENGINE, else keras where Keras is installed
        and onnx where it is not; then run inference once.

        Raises:
            ValueError: the spec is unreadable, does not fit the models, the engine is not
                keras or onnx, or MYELOMET_MAX_REQUEST_BYTES is not a positive integer.
            EngineUnavailable: the engine cannot run here, or onnx was asked of a version
                without ONNX files.
            ModelFileError: a model file is missing or cannot be loaded.
        """
        spec = ServingSpec.from_json(Path(context.artifacts[SPEC_ARTIFACT]).read_text())
        config = context.model_config or {}
        has_onnx = all(onnx_key(m.backbone) in context.artifacts for m in spec.members)
        engine = choose_engine(config.get(ENGINE_CONFIG_KEY), has_onnx)
        key = onnx_key if engine == "onnx" else model_key
        files = [Path(context.artifacts[key(m.backbone)]) for m in spec.members]
        self.predictor = Predictor.load(spec, files, engine=engine)
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
            per slice (frame set for multi-frame files) or per unusable item (error set: a
            file that cannot be read or used, text in `dicom`, a row without dicom or path).
            Per series: series, p_<positive>, label, threshold, n_slices, n_rejected, error
            (see `Predictor.predict_series`).

        Raises:
            RequestRefused: one line, HTTP 400 when served: no dicom or path column, per
                values that differ, paths sent to the scoring server, or more DICOM bytes than
                MYELOMET_MAX_REQUEST_BYTES; HTTP 500 for an unforeseen failure (its type and
                place go to the server's log, never a traceback to the client).
        """
        if self.predictor is None:
            raise RuntimeError("the model is not loaded; load it with mlflow.pyfunc.load_model")
        try:
            return self._predict(self.predictor, model_input)
        except RequestRefused:
            raise
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            _log.error(
                "unexpected %s at %s:%s while predicting a request",
                type(exc).__name__,
                where.filename,
                where.lineno,
            )
            raise RequestRefused(
                f"unexpected {type(exc).__name__} while predicting; the model server's log "
                "says where, and no file of the request was answered"
            ) from None

    def _predict(self, predictor: Predictor, model_input: pd.DataFrame) -> pd.DataFrame:
        sources, names = self._sources(model_input)
        per = _per(model_input)
        if per == "series":
            rows = predictor.predict_series(sources, names)
        else:
            rows = predictor.predict_sources(sources, names)
        columns = _output_columns(predictor.spec.probability_key, per)
        return pd.DataFrame(
            [[row.get(c) for c in columns] for row in rows], columns=list(columns), dtype=object
        )

    def _sources(self, frame: pd.DataFrame) -> tuple[list[Source], list[str]]:
        """Each row's bytes or path (a DicomRejected for a row that holds neither) and name.

        Raises:
            RequestRefused: what `predict` refuses a whole request for.
        """
        if not isinstance(frame, pd.DataFrame) or not {"dicom", "path"} & set(frame.columns):
            raise RequestRefused.bad_request(
                'send a "dicom" column (each file\'s bytes, base64-encoded in JSON) or a "path" '
                'column, e.g. {"dataframe_split": {"columns": ["dicom"], "data": [["<base64>"]]}}'
            )
        served = os.environ.get(_SERVING_ENV, "").lower() in ("true", "1")
        paths_allowed = not served or os.environ.get(ALLOW_PATHS_ENV) == "1"
        sources: list[Source] = []
        names: list[str] = []
        total = 0
        for i, row in enumerate(frame.itertuples(index=False)):
            data = getattr(row, "dicom", None)
            path = getattr(row, "path", None)
            name = getattr(row, "name", None)
            names.append(str(name) if _present(name) else f"dicom[{i}]")
            if _present(data):
                if not isinstance(data, bytes | bytearray | memoryview):
                    sources.append(
                        DicomRejected(
                            RejectReason.NOT_DICOM,
                            f"row {i}: dicom holds {type(data).__name__}, not bytes; send the "
                            "file's bytes (base64-encoded in JSON)",
                        )
                    )
                    continue
                total += len(data)
                sources.append(bytes(data))
            elif _present(path):
                if not paths_allowed:
                    raise RequestRefused.bad_request(
                        "the model server does not read files from its own disk; send each "
                        f"file's bytes in the dicom column (or start it with {ALLOW_PATHS_ENV}=1 "
                        "on a trusted host)"
                    )
                sources.append(str(path))
                names[-1] = str(name) if _present(name) else str(path)
            else:
                sources.append(
                    DicomRejected(
                        RejectReason.NOT_DICOM, f"row {i} has neither dicom nor path; send one"
                    )
                )
        if total > self.max_request_bytes:
            raise RequestRefused.bad_request(
                f"the request carries {total} bytes of DICOM, over the limit of "
                f"{self.max_request_bytes} ({MAX_REQUEST_BYTES_ENV}); send fewer files per request"
            )
        return sources, names


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def model_key(member: str) -> str:
    """A member's artifact name: `keras_<backbone>`, a fold model's `keras_fold-<f>.<backbone>`."""
    return f"keras_{member.replace('/', '.')}"


def onnx_key(member: str) -> str:
    """A member's ONNX artifact name: `onnx_<backbone>`, a fold model's `onnx_fold-<f>.<b>`."""
    return f"onnx_{member.replace('/', '.')}"


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


def load_predictor(
    model_uri: str, tracking_uri: str | None = None, engine: str | None = None
) -> Predictor:
    """The Predictor inside a registered or logged pyfunc (e.g. models:/myelomet@champion),
    looked up in `tracking_uri` (MLflow's current store when None).

    Args:
        model_uri: the model.
        tracking_uri: its store.
        engine: `keras` or `onnx`; None: as `load_context` chooses (MYELOMET_ENGINE, else
            keras where Keras is installed).

    Raises:
        MlflowException: no model at the URI.
        ModelFileError: a file of the logged model is damaged (MLmodel, python_model.pkl,
            model.keras, an ONNX file).
        TypeError: the model is not a myelomet pyfunc.
        ValueError: engine is not keras or onnx.
        EngineUnavailable: the engine cannot run here, or the version has no ONNX files.
    """
    local = download_model(model_uri, tracking_uri)
    logged = _check_model_files(Path(local), model_uri).get("config") or {}
    config = None
    if engine is not None and ENGINE_CONFIG_KEY in logged:
        config = {ENGINE_CONFIG_KEY: engine}
    elif engine is not None:  # logged before engines: Keras files only, loaded on the default
        choose_engine(engine, has_onnx=False)
    model = mlflow.pyfunc.load_model(local, model_config=config).unwrap_python_model()
    predictor = getattr(model, "predictor", None)
    if not isinstance(predictor, Predictor):
        raise TypeError(f"{model_uri} is not a myelomet model (no serving Predictor inside)")
    return predictor


def _check_model_files(folder: Path, model_uri: str) -> dict[str, Any]:
    """Read a downloaded pyfunc's MLmodel and unpickle its python model before MLflow loads
    them, so that a damaged file is named in one line (MLflow would raise whatever the bytes
    lead its parsers to: a YAML error, OverflowError, ...). A folder without MLmodel is left
    to MLflow, which says so.

    Returns:
        The MLmodel's python_function flavour (empty without MLmodel).

    Raises:
        ModelFileError: MLmodel is not a pyfunc's description, or the pickle cannot be read.
    """
    again = "download it again or register a new one with `myelomet evaluate`"
    description = folder / "MLmodel"
    if not description.is_file():
        return {}
    try:
        flavor = dict(yaml.safe_load(description.read_text())["flavors"]["python_function"])
        pickled = folder / flavor["python_model"]
    except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError, ValueError) as exc:
        raise ModelFileError(
            f"MLmodel of {model_uri} is not the description of an MLflow python model "
            f"({type(exc).__name__}); the logged model is damaged: {again}"
        ) from None
    try:
        with pickled.open("rb") as f:
            pickle.load(f)
    except Exception as exc:
        problem = " ".join(str(exc).split())[:200]
        raise ModelFileError(
            f"{pickled.name} of {model_uri} cannot be unpickled ({type(exc).__name__}: "
            f"{problem}); the logged model is damaged or was saved by another version of "
            f"myelomet: {again}"
        ) from None
    return flavor
