"""Grad-CAM heat maps: where a trained classifier looks on a CT slice.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the last convolutional feature map by the
spatially averaged gradient of a class score and keeps the positive part. The classifiers
of `components.training.backbones` hold the keras.applications backbone as a nested model, whose
inner layers are not reachable from the outer model's input; `feature_model` rebuilds the
outer graph around a copy of the backbone that also returns its feature map, reusing the
trained layers (no weights are copied or changed).

It runs on any Keras backend: the graph is cut at the feature map into a feature model and
a head, and the head's gradient comes from `components.training.runtime.input_gradient`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from components.config import Window
from components.data.dataset import apply_window, center_crop, model_input
from components.training.runtime import input_gradient, to_numpy


@dataclass(frozen=True)
class GradcamExample:
    """One slice to explain: its id, true class and HU pixels."""

    image_id: str
    label: str
    hu: np.ndarray


def _is_feature_map(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.InputLayer) or "Pooling" in type(layer).__name__:
        return False
    return len(layer.output.shape) == 4


def _last_feature_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The last layer with a 4-D output, or the nested model holding it; None when none."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            if _last_feature_layer(layer) is not None:
                return layer
        elif _is_feature_map(layer):
            return layer
    return None


def _functional(model: keras.Model) -> keras.Model:
    # Sequential models cannot be cloned with a call_function; their graph can be reused.
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _cut(model: keras.Model) -> tuple[Any, Any, Any]:
    """`model`'s graph with its last convolutional feature map as a tensor on the way from
    input to output: (input, feature map, output), sharing the layers of `model`. A nested
    model holding the map is called as its feature part, then its head."""
    graph = _functional(model)
    target = _last_feature_layer(graph)
    if target is None:
        raise ValueError(f"{model.name}: no convolutional feature map (4-D layer output) found")
    if not isinstance(target, keras.Model):
        return graph.inputs[0], target.output, graph.outputs[0]
    inner_input, inner_features, inner_output = _cut(target)
    features_of = keras.Model(inner_input, inner_features)
    head_of = None if inner_output is inner_features else keras.Model(inner_features, inner_output)
    captured = []

    def call(layer: keras.layers.Layer, *args: object, **kwargs: object) -> object:
        if layer is not target:
            return layer(*args, **kwargs)
        features = features_of(*args, **kwargs)
        captured.append(features)
        return features if head_of is None else head_of(features)

    graph = keras.models.clone_model(graph, clone_function=lambda layer: layer, call_function=call)
    return graph.inputs[0], captured[-1], graph.outputs[0]


def feature_model(model: keras.Model) -> keras.Model:
    """A model from `model`'s input to [last convolutional feature map, `model`'s output].

    Nested models (the backbone inside the classifier) are searched recursively; the
    returned model shares the trained layers of `model`.

    Args:
        model: a built Functional or Sequential classifier with one input and one output.

    Returns:
        The two-output model.

    Raises:
        ValueError: the model has no 4-D feature map.
    """
    inputs, features, outputs = _cut(model)
    return keras.Model(inputs, [features, outputs])


def class_scores(outputs: Any) -> Any:
    """One score column per class: softmax outputs as they are, a single sigmoid unit p
    as the two columns [1 - p, p] (backend tensors or numpy arrays)."""
    outputs = keras.ops.cast(outputs, "float32")
    if outputs.shape[-1] == 1:
        return keras.ops.concatenate([1.0 - outputs, outputs], axis=-1)
    return outputs


def gradcam(
    model: keras.Model, images: np.ndarray, target: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat maps of a batch of images, on any Keras backend.

    Args:
        model: the classifier (see `feature_model`).
        images: (n, height, width, channels), exactly as the model takes them.
        target: the class column (see `class_scores`) to explain; None explains each
            image's highest-scoring class.

    Returns:
        Heat maps (n, height, width), float32 in [0, 1] (all zero where no location
        raises the score), and the class scores (n, classes).

    Raises:
        ValueError: images are not a 4-D batch, or the model has no feature map.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (n, height, width, channels), got {images.shape}")
    inputs, features, outputs = _cut(model)
    head = keras.Model(features, outputs)  # the part whose gradient Grad-CAM takes
    features, outputs = keras.Model(inputs, [features, outputs])(
        np.asarray(images, np.float32), training=False
    )
    features = to_numpy(keras.ops.cast(features, "float32"))
    scores = to_numpy(class_scores(outputs))
    chosen = scores.argmax(axis=-1) if target is None else np.full(len(images), target)
    pick = keras.ops.convert_to_tensor(np.eye(scores.shape[1], dtype=np.float32)[chosen])

    def chosen_score(feature_map: Any) -> Any:
        # samples are independent in inference mode: d(sum)/d(map_i) = d(score_i)/d(map_i)
        return keras.ops.sum(class_scores(head(feature_map, training=False)) * pick)

    grads = input_gradient(chosen_score, features)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * features).sum(axis=-1), 0.0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    heat = np.stack([_resize(c, images.shape[1:3]) for c in cam])
    return np.clip(np.nan_to_num(heat), 0.0, 1.0).astype(np.float32), scores


def pick_examples(
    predictions: pd.DataFrame, classes: Sequence[str], per_class: int, seed: int = 0
) -> pd.DataFrame:
    """Test slices to explain: up to `per_class` of each class, each from another patient.

    Args:
        predictions: rows with image_id, patient, label and split (e.g. predictions.csv).
        classes: the classes, in the order wanted.
        per_class: slices per class.
        seed: seeds the random choice.

    Returns:
        The chosen rows, class by class.

    Raises:
        ValueError: a needed column is missing.
    """
    missing = [c for c in ("image_id", "patient", "label", "split") if c not in predictions]
    if missing:
        raise ValueError(f"predictions lack columns {missing}")
    rng = np.random.default_rng(seed)
    test = predictions[predictions["split"] == "test"].sort_values("image_id")
    parts = []
    for label in classes:
        rows = test[test["label"] == label]
        one_per_patient = rows.iloc[rng.permutation(len(rows))].drop_duplicates("patient")
        parts.append(one_per_patient.head(per_class))
    return pd.concat(parts, ignore_index=True)


def load_examples(rows: pd.DataFrame, slices_dir: str | Path) -> list[GradcamExample]:
    """Read the HU slice `<slices_dir>/<image_id>.npy` of each row (image_id, label).

    Raises:
        FileNotFoundError: a slice file is missing.
    """
    examples = []
    for row in rows.itertuples():
        path = Path(slices_dir) / f"{row.image_id}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no HU slice; run `myelomet ingest` again")
        examples.append(GradcamExample(str(row.image_id), str(row.label), np.load(path)))
    return examples


def _resize(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    image = Image.fromarray(heat, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image), 0.0, 1.0)


def gradcam_figure(
    model: keras.Model,
    examples: Sequence[GradcamExample],
    *,
    windows: Sequence[Window],
    size: int,
    display_window: Window,
    classes: Sequence[str],
    positive_class: str,
    title: str = "",
    alpha: float = 0.5,
    crop: float = 1.0,
) -> Figure:
    """Grad-CAM of each example's predicted class over its bone-window image.

    One row per class (true label), one column per example of that class.

    Args:
        model: the trained classifier; it takes `model_input` images (0..255) and applies its
            backbone's preprocessing itself, as the models of `components.training.backbones` do.
        examples: the slices to explain.
        windows: the three channel windows of the model input (InputConfig.channel_windows()).
        size: the model's input side in pixels.
        display_window: the window of the background image (e.g. the bone window).
        classes: class names in the order of `class_scores` columns (the model's outputs).
        positive_class: the class whose probability is printed.
        title: figure title, e.g. the model's name.
        alpha: opacity of the heat map where it is 1 (it fades out toward 0).
        crop: the centre crop of the model inputs (InputConfig.crop); the overlay shows it.

    Returns:
        The figure.

    Raises:
        ValueError: no examples, an example of an unknown class, or `positive_class` is not
            in `classes`.
    """
    if not examples:
        raise ValueError("no examples to explain; pick test slices with pick_examples")
    unknown = sorted({e.label for e in examples} - set(classes))
    if unknown or positive_class not in classes:
        raise ValueError(f"labels {unknown} or positive class {positive_class!r} not in {classes}")
    batch = np.stack([model_input(e.hu, windows, size, crop) for e in examples])
    heat, scores = gradcam(model, batch)
    positive = list(classes).index(positive_class)
    rows = [c for c in classes if any(e.label == c for e in examples)]
    cols = max(sum(e.label == c for e in examples) for c in rows)
    fig = Figure(figsize=(2.8 * cols + 0.8, 3.0 * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    filled = dict.fromkeys(rows, 0)
    cmap = colormaps["jet"]
    for i, example in enumerate(examples):
        r = rows.index(example.label)
        ax = axes[r, filled[example.label]]
        filled[example.label] += 1
        seen = center_crop(example.hu, crop)
        background = apply_window(seen, display_window) / 255.0
        overlay = cmap(_resize(heat[i], seen.shape))
        overlay[..., 3] = alpha * _resize(heat[i], seen.shape)
        ax.imshow(background, cmap="gray", vmin=0, vmax=1)
        ax.imshow(overlay)
        predicted = classes[int(scores[i].argmax())]
        ax.set_title(
            f"{example.label} → {predicted}\np({positive_class}) = {scores[i, positive]:.2f}",
            fontsize=9,
        )
        ax.text(
            0.02, 0.02, example.image_id[:12], color="white", fontsize=7, transform=ax.transAxes
        )
    fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap),
        ax=axes,
        shrink=0.6,
        label="Grad-CAM (predicted class)",
    )
    fig.suptitle(title or "Grad-CAM")
    return fig
