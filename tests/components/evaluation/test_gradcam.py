"""Grad-CAM on tiny untrained classifiers: the study's own (components.training.backbones), a
backbone nested as a model inside the classifier, and a Sequential with a sigmoid output."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from components.config import InputConfig
from components.data.dataset import model_input
from components.evaluation.figures import save_png
from components.evaluation.gradcam import (
    GradcamExample,
    class_scores,
    feature_model,
    gradcam,
    gradcam_figure,
    load_examples,
    pick_examples,
)
from components.training.backbones import build_model, load_model

SIZE = 64
pytestmark = pytest.mark.backends
CLASSES = ("MM", "OMBT")
WINDOWS = InputConfig().channel_windows()


def _nested() -> keras.Model:
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None
    )
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def _sequential_sigmoid() -> keras.Model:
    inner_in = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inner_in)
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, activation="relu")(x), name="cnn")
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            inner,
            keras.layers.MaxPooling2D(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    return {
        "study": build_model("MobileNetV2", SIZE, weights="none", head_units=(8,)),
        "nested": _nested(),
        "sequential": _sequential_sigmoid(),
    }


def _hu(seed: int, shape: tuple[int, int] = (80, 96)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 300, shape)
    hu[20:60, 30:70] += 700  # a bright "vertebra"
    return hu.astype(np.int16)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.stack([model_input(_hu(i), WINDOWS, SIZE) for i in range(3)])


@pytest.mark.parametrize("kind", ["study", "nested", "sequential"])
def test_feature_model_gives_the_last_feature_map_and_the_prediction(models, batch, kind):
    model = models[kind]
    features, outputs = feature_model(model)(batch, training=False)
    assert features.ndim == 4 and features.shape[0] == len(batch)
    assert features.shape[1] < SIZE  # a convolutional map, not the input image
    np.testing.assert_allclose(outputs, model(batch, training=False), atol=1e-5)


@pytest.mark.parametrize("kind", ["study", "nested", "sequential"])
def test_gradcam_heat_maps_are_finite_and_within_0_1(models, batch, kind):
    heat, scores = gradcam(models[kind], batch)
    assert heat.shape == (len(batch), SIZE, SIZE)
    assert heat.dtype == np.float32
    assert np.all(np.isfinite(heat))
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() > 0.5  # gradients reached the feature map
    assert scores.shape == (len(batch), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_gradcam_of_a_saved_and_loaded_study_model(models, batch, tmp_path):
    path = tmp_path / "model.keras"
    models["study"].save(path)
    heat, scores = gradcam(load_model(path), batch, target=0)
    expected_heat, expected_scores = gradcam(models["study"], batch, target=0)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(heat, expected_heat, atol=1e-4)


def test_class_scores_expand_a_sigmoid_unit():
    scores = keras.ops.convert_to_numpy(class_scores(np.array([[0.2], [0.9]], dtype=np.float32)))
    np.testing.assert_allclose(scores, [[0.8, 0.2], [0.1, 0.9]], atol=1e-6)


def test_gradcam_rejects_what_it_cannot_explain(models, batch):
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="no convolutional feature map"):
        gradcam(dense, np.zeros((1, 4, 1, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="batch"):
        gradcam(models["study"], batch[0])


def test_gradcam_figure_overlays_each_example(models, tmp_path):
    examples = [GradcamExample(f"im-{i}", CLASSES[i % 2], _hu(i)) for i in range(4)]
    fig = gradcam_figure(
        models["study"],
        examples,
        windows=WINDOWS,
        size=SIZE,
        display_window=InputConfig().windows["bone"],
        classes=CLASSES,
        positive_class="MM",
        title="MobileNetV2",
    )
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(examples)
    assert all("p(MM) = " in ax.get_title() for ax in panels)
    assert all(ax.images[1].get_array().shape[:2] == (80, 96) for ax in panels)
    path = save_png(fig, tmp_path / "gradcam.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no examples"):
        gradcam_figure(
            models["study"],
            [],
            windows=WINDOWS,
            size=SIZE,
            display_window=WINDOWS[0],
            classes=CLASSES,
            positive_class="MM",
        )
    with pytest.raises(ValueError, match="not in"):
        gradcam_figure(
            models["study"],
            [GradcamExample("im-x", "other", _hu(9))],
            windows=WINDOWS,
            size=SIZE,
            display_window=WINDOWS[0],
            classes=CLASSES,
            positive_class="MM",
        )


def _predictions() -> pd.DataFrame:
    rows = [
        {
            "image_id": f"{split}-{label}-{p}-{s}",
            "patient": f"{split}-{label}-{p}",
            "label": label,
            "split": split,
        }
        for split in ("val", "test")
        for label in CLASSES
        for p in range(3 if label == "MM" else 1)
        for s in range(4)
    ]
    return pd.DataFrame(rows)


def test_pick_examples_takes_test_slices_of_distinct_patients():
    chosen = pick_examples(_predictions(), CLASSES, per_class=2, seed=3)
    assert (chosen["split"] == "test").all()
    assert chosen["label"].tolist() == ["MM", "MM", "OMBT"]  # one OMBT test patient only
    assert not chosen["patient"].duplicated().any()
    again = pick_examples(_predictions(), CLASSES, per_class=2, seed=3)
    pd.testing.assert_frame_equal(chosen, again)
    with pytest.raises(ValueError, match="patient"):
        pick_examples(_predictions().drop(columns="patient"), CLASSES, 2)


def test_load_examples_reads_hu_slices(tmp_path):
    np.save(tmp_path / "im-1.npy", _hu(1))
    rows = pd.DataFrame({"image_id": ["im-1"], "label": ["MM"]})
    (example,) = load_examples(rows, tmp_path)
    assert example.label == "MM" and example.hu.dtype == np.int16
    with pytest.raises(FileNotFoundError, match="myelomet ingest"):
        load_examples(pd.DataFrame({"image_id": ["im-2"], "label": ["MM"]}), tmp_path)
