"""A tiny real model in a fake training output folder, and the serving values around it.

VGG16 has no BatchNorm, so even with random weights its outputs depend on the input (a random
BatchNorm network gives the same output for every image in inference mode). The softmax layer
is then set so that, on CT-like slices, the logit difference is centred with a spread of about
two: probabilities cover much of [0, 1] and both labels occur.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from components.config import Config, EvaluationConfig, InputConfig, TrainingConfig, Window
from components.data.dataset import model_input
from components.training.backbones import build_model
from tests.dicom_factory import ct_dataset, expected_hu, stored_pixels

BACKBONE = "VGG16"
SIZE = 32
CLASSES = ("MM", "OMBT")
POSITIVE = "MM"
WINDOWS: tuple[Window, ...] = tuple(InputConfig().channel_windows())


def ct_like_slices(n: int = 16) -> list[np.ndarray]:
    """HU slices like the test DICOM files, over a range of intensities."""
    out = []
    for i in range(n):
        pixels = stored_pixels(seed=100 + i)
        out.append(expected_hu(pixels, ct_dataset(pixels, intercept=-1024.0 + 100.0 * i))[0])
    return out


def keras_probability(model: keras.Model, hu_slices: list[np.ndarray]) -> np.ndarray:
    """The keras model's probability of POSITIVE on model_input of the HU slices: the
    preprocessing of training, for comparison with what serving returns."""
    x = np.stack([model_input(hu, WINDOWS, SIZE) for hu in hu_slices])
    return keras.ops.convert_to_numpy(model(x, training=False))[:, CLASSES.index(POSITIVE)]


def tiny_model(seed: int = 1, backbone: str = BACKBONE) -> keras.Model:
    """An untrained classifier on `backbone` at SIZE px whose outputs vary with the slice."""
    keras.utils.set_random_seed(seed)
    model = build_model(backbone, SIZE, "none", head_units=(8,), dropout=0.0)
    x = np.stack([model_input(hu, WINDOWS, SIZE) for hu in ct_like_slices()])
    hidden = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.get_layer("head_dense1").output)(x)
    )
    direction = np.random.default_rng(seed).normal(size=hidden.shape[1])
    score = hidden @ direction
    direction /= score.std() + 1e-12
    offset = -(hidden @ direction).mean()
    kernel = np.stack([direction, -direction], axis=1) / 2  # logit difference = h . direction
    model.get_layer("head_softmax").set_weights([kernel, np.array([offset / 2, -offset / 2])])
    return model


def write_models_dir(
    root: Path, model: keras.Model, backbone: str = BACKBONE, data_version: str = "dv1"
) -> Path:
    """`root/models/<backbone>/{model.keras, metrics.json}` as training writes them."""
    folder = root / "models" / backbone
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    metrics = {"backbone": backbone, "image_size": SIZE, "weights": "random"}
    metrics["keras_backend"] = keras.backend.backend()
    (folder / "metrics.json").write_text(json.dumps({**metrics, "data_version": data_version}))
    return root / "models"


@dataclass(frozen=True)
class Candidate:
    """A candidate to log with `candidate_model.log_candidate` (an evaluation's CandidateResult in
    the flow)."""

    name: str
    members: tuple[str, ...]
    thresholds: Mapping[str, float]


def models_config(models_dir: Path, onnx: bool = False) -> Config:
    """The params of a project whose training output is `models_dir` (`write_models_dir`):
    CLASSES, POSITIVE and the default input (WINDOWS). Without `onnx` a logged candidate gets
    no ONNX files (the export takes about 10 s a member; the tests of it ask for it)."""
    return Config(
        root=models_dir.parent,
        classes=CLASSES,
        positive_class=POSITIVE,
        training=TrainingConfig(models_out=str(models_dir)),
        evaluation=EvaluationConfig(onnx=onnx),
    )
