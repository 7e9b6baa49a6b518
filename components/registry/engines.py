"""The two engines a `serving.Predictor` runs its member models on, and which one to use.

`keras` loads each member's `model.keras` with the framework of training (TensorFlow or JAX);
`onnx` loads the member's ONNX file, exported at registration, into onnxruntime on the CPU.
Both take the same batch (`dataset.model_input`: float32, 0..255, three CT windows as
channels, at the member's size: the backbone's preprocessing is a layer of the model) and
return the same softmax outputs, so the DICOM reading, windows, crop and thresholds around
them are the Predictor's, whatever the engine. Nothing here imports Keras, TensorFlow or JAX
at import time, and the ONNX engine never does: a serving box needs neither.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.training.model_files import ModelFileError

if TYPE_CHECKING:
    import keras

ENGINES = ("keras", "onnx")
# Not chosen: the environment's MYELOMET_ENGINE, else keras where Keras is installed.
AUTO = "auto"
# The served model's engine (`mlflow models serve`); a load's model_config {"engine": ...}
# (`myelomet predict --engine`) comes first.
ENGINE_ENV = "MYELOMET_ENGINE"
ENGINE_CONFIG_KEY = "engine"
# Rows per onnxruntime call, as loop.INFER_BATCH for Keras.
ONNX_BATCH = 64

_AGAIN = "download the model again or register a new version with `myelomet evaluate`"


class EngineUnavailable(RuntimeError):
    """The engine asked for (or every engine) cannot run this model here; the message says
    why and which engine or install to use instead."""


class OnnxModel:
    """One member's ONNX file in an onnxruntime session on the CPU, with the shapes and the
    batched inference the Predictor asks of a Keras model.

    Attributes:
        path: the ONNX file.
        input_shape: the model's input shape, None for the batch (and any other free) axis.
        output_shape: its output shape, likewise.
    """

    def __init__(self, path: Path) -> None:
        """
        Raises:
            ModelFileError: the file is missing or onnxruntime refuses it.
        """
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such ONNX file; {_AGAIN}")
        refused = (
            ort_errors.Fail,
            ort_errors.InvalidArgument,
            ort_errors.InvalidGraph,
            ort_errors.InvalidProtobuf,
            ort_errors.NoSuchFile,
            ort_errors.NotImplemented,
            ort_errors.RuntimeException,
        )
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except refused as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{self.path} cannot be loaded by onnxruntime ({first}); {_AGAIN}"
            ) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(
                f"{self.path} takes {len(inputs)} inputs, not the one image batch; {_AGAIN}"
            )
        given = inputs[0]
        self._input_name = given.name
        self.input_shape = _shape(given.shape)
        self.output_shape = _shape(self.session.get_outputs()[0].shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for every row of x, in batches of ONNX_BATCH rows."""
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, *self.output_shape[1:]), dtype=np.float32)
        out = [
            self.session.run(None, {self._input_name: x[start : start + ONNX_BATCH]})[0]
            for start in range(0, len(x), ONNX_BATCH)
        ]
        return np.concatenate(out).astype(np.float32)


def _shape(dims: Sequence[Any]) -> tuple[int | None, ...]:
    """An onnxruntime shape with named (free) axes as None, as Keras writes them."""
    return tuple(d if isinstance(d, int) else None for d in dims)


def load_models(engine: str, files: Sequence[Path]) -> list[keras.Model | OnnxModel]:
    """Each member's model on `engine`.

    Args:
        engine: `keras` (files are `model.keras`) or `onnx` (files are ONNX).
        files: one file per member.

    Raises:
        ModelFileError: a file is missing or cannot be loaded.
    """
    if engine == "onnx":
        return [OnnxModel(Path(f)) for f in files]
    from components.training.backbones import load_model

    return [load_model(Path(f)) for f in files]


def infer(model: keras.Model | OnnxModel, x: np.ndarray) -> np.ndarray:
    """A member's softmax outputs for every row of x (float32), on its engine."""
    if isinstance(model, OnnxModel):
        return model.predict(x)
    from components.training.loop import predict

    return predict(model, x)


def engine_of(model: keras.Model | OnnxModel) -> str:
    """`onnx` for an OnnxModel, else `keras`."""
    return "onnx" if isinstance(model, OnnxModel) else "keras"


def keras_installed() -> bool:
    """Whether Keras and a backend it runs on (TensorFlow or JAX) are installed here."""
    return importlib.util.find_spec("keras") is not None and any(
        importlib.util.find_spec(f) is not None for f in ("tensorflow", "jax")
    )


def onnxruntime_installed() -> bool:
    """Whether onnxruntime is installed here."""
    return importlib.util.find_spec("onnxruntime") is not None


def choose_engine(configured: str | None, has_onnx: bool) -> str:
    """The engine to load a model version on.

    Args:
        configured: the load's own choice (model_config `engine`, `--engine`); when None
            or `auto`, MYELOMET_ENGINE; when that is unset (or `auto`) too, `keras` if Keras
            is installed, else `onnx` if the version has ONNX files.
        has_onnx: whether the version holds an ONNX file for every member.

    Returns:
        `keras` or `onnx`.

    Raises:
        ValueError: the choice is neither keras nor onnx.
        EngineUnavailable: the chosen engine cannot run here (one line: why, and what to
            use instead).
    """
    source = "engine"
    if configured in (None, AUTO):
        configured, source = os.environ.get(ENGINE_ENV) or None, ENGINE_ENV
    if configured == AUTO:
        configured = None
    if configured is not None and configured not in ENGINES:
        raise ValueError(f"{source} {configured!r}: expected one of {', '.join((*ENGINES, AUTO))}")
    if configured is None and not keras_installed() and not has_onnx:
        raise EngineUnavailable(
            "this model version holds no ONNX files (its `onnx` tag says why) and Keras is not "
            "installed here: install 'myelomet[train]', or register the model again with this "
            "version of myelomet to export ONNX"
        )
    if configured is None:
        configured = "keras" if keras_installed() else "onnx"
    if configured == "onnx" and not has_onnx:
        raise EngineUnavailable(
            "engine onnx: this model version holds no ONNX files (its `onnx` tag says why); "
            f"use engine keras (--engine keras, {ENGINE_ENV}=keras)"
        )
    if configured == "onnx" and not onnxruntime_installed():
        raise EngineUnavailable(
            "engine onnx: onnxruntime is not installed here: pip install 'myelomet[serve]', "
            f"or use engine keras ({ENGINE_ENV}=keras)"
        )
    if configured == "keras" and not keras_installed():
        raise EngineUnavailable(
            "engine keras: Keras with TensorFlow or JAX is not installed here (the serve "
            f"install has onnxruntime only): use engine onnx ({ENGINE_ENV}=onnx)"
        )
    return configured
