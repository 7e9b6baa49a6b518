"""The seven keras.applications backbones of the study and the classifier built on each.

A model built here takes what `components.data.dataset.model_input` returns (float32, 0..255,
three CT windows as channels) and applies its backbone's own `preprocess_input` as its first
layer, so a saved model needs nothing but `model_input` in front of it. The head is the
paper's: global average pooling, Dense 512 ReLU, Dense 256 ReLU, softmax over the classes,
with dropout after each hidden layer.

ImageNet weights come from the Keras cache (downloaded on first use) or, offline, from a
folder filled by `fetch_weights` on a connected machine whose `weights.json` holds each
file's sha256; every offline file is checked against it before use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from components.training.model_files import ModelFileError

WEIGHTS_MANIFEST = "weights.json"
DOWNLOAD_TIMEOUT_S = 20.0

PREPROCESS_LAYER = "preprocess"
POOL_LAYER = "head_pool"
OUTPUT_LAYER = "head_softmax"

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications"


class WeightsUnavailable(RuntimeError):
    """ImageNet weights cannot be had here (no download, no offline file)."""


class WeightsChecksumError(ValueError):
    """An offline weights file is not the one its manifest names."""


@dataclass(frozen=True)
class Backbone:
    """One keras.applications backbone and what the study needs to know about it."""

    name: str
    builder: Callable[..., keras.Model]
    preprocess: Callable[[Any], Any]
    native_size: int
    min_size: int
    weights_file: str
    weights_url: str
    weights_md5: str | None

    def input_size(self, requested: int | None) -> int:
        """The input side to use: native when none is asked for, never below the minimum."""
        return self.native_size if requested is None else max(requested, self.min_size)


def _registry() -> dict[str, Backbone]:
    apps = keras.applications
    return {
        b.name: b
        for b in (
            Backbone(
                "DenseNet121",
                apps.DenseNet121,
                apps.densenet.preprocess_input,
                224,
                32,
                "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                f"{_KERAS_APPS}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "30ee3e1110167f948a6b9946edeeb738",
            ),
            Backbone(
                "DenseNet169",
                apps.DenseNet169,
                apps.densenet.preprocess_input,
                224,
                32,
                "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
                f"{_KERAS_APPS}/densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "b8c4d4c20dd625c148057b9ff1c1176b",
            ),
            Backbone(
                "EfficientNetB0",
                apps.EfficientNetB0,
                apps.efficientnet.preprocess_input,
                224,
                32,
                "efficientnetb0_notop.h5",
                "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
                "50bc09e76180e00e4465e1a485ddc09d",
            ),
            Backbone(
                "MobileNet",
                apps.MobileNet,
                apps.mobilenet.preprocess_input,
                224,
                32,
                "mobilenet_1_0_224_tf_no_top.h5",
                f"{_KERAS_APPS}/mobilenet/mobilenet_1_0_224_tf_no_top.h5",
                None,
            ),
            Backbone(
                "MobileNetV2",
                apps.MobileNetV2,
                apps.mobilenet_v2.preprocess_input,
                224,
                32,
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                f"{_KERAS_APPS}/mobilenet_v2/"
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                None,
            ),
            Backbone(
                "VGG16",
                apps.VGG16,
                apps.vgg16.preprocess_input,
                224,
                32,
                "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                f"{_KERAS_APPS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "6d6bbae143d832006294945121d1f1fc",
            ),
            Backbone(
                "Xception",
                apps.Xception,
                apps.xception.preprocess_input,
                299,
                71,
                "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                f"{_KERAS_APPS}/xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "b0042744bf5b25fce3cb969f33bebb97",
            ),
        )
    }


REGISTRY: dict[str, Backbone] = _registry()


def get_backbone(name: str) -> Backbone:
    """The registry entry of a backbone.

    Raises:
        KeyError: the name is not one of the seven.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(REGISTRY)}") from None


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's initial weights come from.

    `kind` is "imagenet" (path and sha256 of the file) or "random" (no file; reason says why).
    """

    kind: Literal["imagenet", "random"]
    path: Path | None = None
    sha256: str | None = None
    reason: str = ""

    @classmethod
    def random(cls, reason: str) -> WeightsSource:
        return cls("random", reason=reason)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict[str, dict[str, str]]:
    path = folder / WEIGHTS_MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["files"]


def _offline_weights(spec: Backbone, folder: Path) -> WeightsSource:
    path = folder / spec.weights_file
    if not path.is_file():
        raise WeightsUnavailable(
            f"{spec.name}: {path} not found; run `myelomet fetch-weights --out DIR` on a "
            f"connected machine and copy DIR here (training.weights_dir or MYELOMET_WEIGHTS_DIR)"
        )
    entry = _read_manifest(folder).get(spec.weights_file)
    if entry is None:
        raise WeightsChecksumError(
            f"{path}: no checksum in {folder / WEIGHTS_MANIFEST}; fetch the weights again with "
            f"`myelomet fetch-weights` so the folder carries its manifest"
        )
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise WeightsChecksumError(
            f"{path}: sha256 {actual[:12]}… does not match {entry['sha256'][:12]}… in "
            f"{WEIGHTS_MANIFEST}; the file is damaged or replaced: fetch it again"
        )
    return WeightsSource("imagenet", path, actual)


def _download(spec: Backbone, cache_subdir: str) -> Path:
    """keras.utils.get_file with a socket timeout, so a firewalled network fails instead of
    hanging; returns the cached file at once when it is already there."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        path = keras.utils.get_file(
            spec.weights_file,
            spec.weights_url,
            cache_subdir=cache_subdir,
            file_hash=spec.weights_md5,
        )
    except Exception as exc:  # get_file raises bare Exception for network failures
        reason = str(exc).rsplit(" -- ", 1)[-1].strip() or type(exc).__name__
        raise WeightsUnavailable(
            f"{spec.name}: ImageNet weights could not be downloaded ({reason}); fetch them on a "
            f"connected machine (`myelomet fetch-weights --out DIR`) and set "
            f"training.weights_dir or MYELOMET_WEIGHTS_DIR, or set training.weights: none"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return Path(path)


def resolve_weights(
    name: str,
    weights: Literal["imagenet", "none"] = "imagenet",
    weights_dir: Path | None = None,
) -> WeightsSource:
    """Find a backbone's ImageNet weights file, downloading it only when no folder is given.

    Args:
        name: backbone name.
        weights: "imagenet" or "none" (random initialisation, nothing is looked up).
        weights_dir: offline folder made by `fetch_weights`; when given, nothing is downloaded.

    Returns:
        The source to pass to `build_model`.

    Raises:
        WeightsUnavailable: no offline file, or the download failed.
        WeightsChecksumError: an offline file does not match its manifest.
    """
    spec = get_backbone(name)
    if weights == "none":
        return WeightsSource.random("training.weights is none")
    if weights_dir is not None:
        return _offline_weights(spec, Path(weights_dir))
    path = _download(spec, cache_subdir="models")
    return WeightsSource("imagenet", path, sha256_file(path))


def fetch_weights(names: Iterable[str], dest: Path) -> Path:
    """Download the ImageNet weights of backbones into a folder for offline use.

    Keras' published md5 is checked where it has one; the folder's `weights.json` records
    each file's sha256, which `resolve_weights` checks before every use.

    Args:
        names: backbone names.
        dest: folder to fill (created).

    Returns:
        The path of the manifest.

    Raises:
        WeightsUnavailable: a download failed.
    """
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    files = _read_manifest(dest)
    for name in names:
        spec = get_backbone(name)
        path = _download(spec, cache_subdir=str(dest))
        files[spec.weights_file] = {
            "backbone": spec.name,
            "url": spec.weights_url,
            "sha256": sha256_file(path),
        }
    manifest = dest / WEIGHTS_MANIFEST
    manifest.write_text(json.dumps({"format": 1, "files": files}, indent=2, sort_keys=True))
    return manifest


def weights_dir_from(configured: str | None, env_var: str, root: Path) -> Path | None:
    """The offline weights folder: the environment variable wins over the configured path.

    Args:
        configured: training.weights_dir (relative to root), or None.
        env_var: name of the variable (training.weights_dir_env).
        root: project root.
    """
    value = os.environ.get(env_var) or configured
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


@keras.saving.register_keras_serializable(package="myelomet")
class BackbonePreprocess(keras.layers.Layer):
    """A backbone's keras.applications preprocess_input as the model's first layer."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess = get_backbone(backbone).preprocess

    def call(self, inputs: Any) -> Any:
        return self._preprocess(inputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


def _head(features: Any, head_units: Sequence[int], dropout: float, n_classes: int) -> Any:
    x = features
    for i, units in enumerate(head_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"head_dropout{i}")(x)
    # float32 softmax: under mixed precision float16 probabilities saturate and the loss breaks
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(
        x
    )


def build_model(
    name: str,
    size: int,
    weights: WeightsSource | Literal["imagenet", "none"] = "imagenet",
    head_units: Sequence[int] = (512, 256),
    dropout: float = 0.3,
    n_classes: int = 2,
    weights_dir: Path | None = None,
) -> keras.Model:
    """The classifier on one backbone: input 0..255 (model_input), output class probabilities.

    Args:
        name: backbone name.
        size: input side in pixels; at least the backbone's minimum.
        weights: a resolved source, "imagenet" (resolved here) or "none".
        head_units: widths of the hidden Dense layers.
        dropout: dropout rate after each hidden layer.
        n_classes: number of softmax outputs.
        weights_dir: offline weights folder when weights is "imagenet".

    Returns:
        An uncompiled keras Model with every layer trainable.

    Raises:
        ValueError: size is below the backbone's minimum.
        WeightsUnavailable, WeightsChecksumError: as `resolve_weights`.
    """
    spec = get_backbone(name)
    if size < spec.min_size:
        raise ValueError(f"{name} needs inputs of at least {spec.min_size} px, got {size}")
    source = (
        weights
        if isinstance(weights, WeightsSource)
        else resolve_weights(name, weights, weights_dir)
    )
    inputs = keras.Input((size, size, 3), name="image")
    x = BackbonePreprocess(name, name=PREPROCESS_LAYER, dtype="float32")(inputs)
    base = spec.builder(
        include_top=False,
        weights=str(source.path) if source.path is not None else None,
        input_tensor=x,
    )
    features = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(base.output)
    outputs = _head(features, head_units, dropout, n_classes)
    return keras.Model(inputs, outputs, name=f"myelomet_{name.lower()}")


def build_head(
    n_features: int, head_units: Sequence[int], dropout: float, n_classes: int = 2
) -> keras.Model:
    """The head alone, on pooled backbone features; its layer names match `build_model`'s,
    so `copy_head` moves its weights into the full model."""
    inputs = keras.Input((n_features,), name="features")
    return keras.Model(inputs, _head(inputs, head_units, dropout, n_classes), name="head")


def head_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers after pooling that carry weights."""
    return [
        layer.name for layer in model.layers if layer.name.startswith("head_") and layer.weights
    ]


def copy_head(source: keras.Model, target: keras.Model) -> None:
    """Copy the head's weights from one model to another (head-only or full)."""
    for name in head_layer_names(source):
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def feature_extractor(model: keras.Model) -> keras.Model:
    """The model up to the pooled backbone features (the head's input)."""
    return keras.Model(model.inputs, model.get_layer(POOL_LAYER).output)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in topological order, without input, preprocessing and head."""
    skip = {PREPROCESS_LAYER}
    return [
        layer
        for layer in model.layers
        if layer.name not in skip
        and not layer.name.startswith("head_")
        and not isinstance(layer, keras.layers.InputLayer)
    ]


def set_trainable(
    model: keras.Model, mode: Literal["head", "top", "all"], fraction: float = 0.2
) -> int:
    """Choose which layers train.

    "head": the backbone is frozen (its BatchNorm layers then run in inference mode).
    "top": the top `fraction` of backbone layers train too, BatchNorm excepted, which stays
    frozen as in Keras' fine-tuning guide. "all": everything trains (training from scratch).

    Returns:
        The number of backbone layers that train.
    """
    layers = backbone_layers(model)
    if mode == "all":
        first = 0
    elif mode == "top":
        first = len(layers) - math.ceil(len(layers) * fraction)
    else:
        first = len(layers)
    for i, layer in enumerate(layers):
        frozen_bn = mode == "top" and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= first and not frozen_bn
    for layer in model.layers:
        if layer.name.startswith("head_"):
            layer.trainable = True
    return sum(1 for layer in layers if layer.trainable)


def scratch_initialise(model: keras.Model, x: np.ndarray, seed: int) -> int:
    """Initialise a backbone without BatchNorm (VGG16) for training from scratch: kernels
    He-normal, biases zero, then each convolution in turn scaled so that its output on the
    training images `x` has unit root mean square (layer-sequential unit variance).

    Keras draws the applications' kernels Glorot-uniform, for ImageNet weights to overwrite:
    in a deep ReLU stack without BatchNorm that shrinks the signal layer by layer, while
    He-normal alone keeps the 0..255 input's scale and saturates the softmax; either way
    training from scratch stays at chance. Networks with BatchNorm normalise their own
    activations and are left as built.

    Returns:
        How many kernels were redrawn (0 for networks with BatchNorm).
    """
    if batch_norm_layers(model):
        return 0
    convs = [layer for layer in backbone_layers(model) if isinstance(layer, keras.layers.Conv2D)]
    for i, layer in enumerate(convs):
        layer.kernel.assign(keras.initializers.HeNormal(seed=seed + i)(layer.kernel.shape))
        if layer.bias is not None:
            layer.bias.assign(keras.ops.zeros(layer.bias.shape))
        # ReLU after a bias-free convolution is positively homogeneous: one rescale is exact
        rms = float(np.sqrt(np.mean(np.square(keras.Model(model.inputs, layer.output)(x)))))
        if rms > 0:
            layer.kernel.assign(layer.kernel / rms)
    return len(convs)


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of the model."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def custom_objects() -> dict[str, type]:
    """What keras.saving.load_model / mlflow.keras.load_model need for these models."""
    return {"BackbonePreprocess": BackbonePreprocess}


def load_model(path: Path) -> keras.Model:
    """Load a model saved by training (`model.keras`).

    Raises:
        ModelFileError: the file is missing, truncated or not a model of this project; the
            message names the file and what to do.
    """
    path = Path(path)
    restore = "restore it (`dvc checkout`, or download the MLflow artifact again) or retrain"
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file; {restore}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is truncated or not a .keras archive; {restore}")
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects())
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path} cannot be loaded ({first_line}); {restore}") from exc
