"""A tiny model's ONNX file and a myelomet pyfunc folder that holds it beside the Keras file,
for the engine tests. Keras's own ONNX export on TensorFlow is enough for tests.model_factory's
VGG16 (registration exports by SavedModel and tf2onnx, which every backbone passes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from components.registry import pyfunc
from components.registry.serving import MemberSpec, ServingSpec
from tests.model_factory import BACKBONE, CLASSES, POSITIVE, SIZE, WINDOWS


def write_onnx(model: keras.Model, path: Path) -> Path:
    """`model` exported as ONNX to `path` (skips the test off the TensorFlow backend)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the test's ONNX export runs on the TensorFlow backend")
    model(np.zeros((1, *model.input_shape[1:]), dtype=np.float32))  # export needs a call first
    model.export(str(path), format="onnx", verbose=False)
    return path


def save_pyfunc(
    folder: Path,
    keras_file: Path,
    onnx_file: Path | None,
    thresholds: Mapping[str, float],
    model_config: bool = True,
) -> Path:
    """A myelomet pyfunc of one member (BACKBONE) in `folder`, as `log_candidate` logs it,
    with the ONNX file as `onnx_<member>` when one is given; without `pyfunc.MODEL_CONFIG`
    when model_config is False (a version logged before the engines)."""
    spec = ServingSpec(
        candidate=BACKBONE,
        members=(MemberSpec(backbone=BACKBONE, image_size=SIZE, windows=WINDOWS),),
        classes=CLASSES,
        positive_class=POSITIVE,
        thresholds=dict(thresholds),
    )
    spec_file = folder.parent / f"{folder.name}-{pyfunc.SPEC_FILE}"
    spec_file.write_text(spec.model_dump_json())
    artifacts = {pyfunc.SPEC_ARTIFACT: str(spec_file), pyfunc.model_key(BACKBONE): str(keras_file)}
    if onnx_file is not None:
        artifacts[pyfunc.onnx_key(BACKBONE)] = str(onnx_file)
    mlflow.pyfunc.save_model(
        str(folder),
        python_model=pyfunc.MyelometModel(),
        artifacts=artifacts,
        code_paths=[str(Path(pyfunc.__file__).resolve().parents[1])],
        signature=pyfunc.signature(spec.probability_key),
        pip_requirements=["onnxruntime"],
        model_config=pyfunc.MODEL_CONFIG
        if model_config
        else None,  # not inferred: that would load the model again
    )
    return folder
