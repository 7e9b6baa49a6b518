import json
from pathlib import Path

import keras
import numpy as np
import pytest

from components.config import BACKBONES
from components.training import backbones
from components.training.backbones import (
    REGISTRY,
    WeightsChecksumError,
    WeightsSource,
    WeightsUnavailable,
    build_head,
    build_model,
    copy_head,
    fetch_weights,
    get_backbone,
    resolve_weights,
    set_trainable,
    weights_dir_from,
)

# Keras 3 with NumPy 2 warns inside model.save; not this code's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _plant(folder: Path, name: str, size: int = 32) -> keras.Model:
    """A valid weights file under the backbone's ImageNet file name, and its manifest entry."""
    spec = get_backbone(name)
    base = spec.builder(include_top=False, weights=None, input_shape=(size, size, 3))
    folder.mkdir(parents=True, exist_ok=True)
    base.save(folder / spec.weights_file)  # legacy .h5, the format of Keras' published files
    entry = {"sha256": backbones.sha256_file(folder / spec.weights_file)}
    manifest = folder / backbones.WEIGHTS_MANIFEST
    files = json.loads(manifest.read_text())["files"] if manifest.exists() else {}
    manifest.write_text(json.dumps({"format": 1, "files": {**files, spec.weights_file: entry}}))
    return base


def test_registry_is_the_seven_of_the_config_with_their_sizes():
    assert set(REGISTRY) == set(BACKBONES)
    assert {n: s.native_size for n, s in REGISTRY.items()} == {
        **{n: 224 for n in BACKBONES},
        "Xception": 299,
    }
    assert get_backbone("Xception").input_size(64) == 71
    assert get_backbone("VGG16").input_size(None) == 224
    assert get_backbone("VGG16").input_size(96) == 96
    with pytest.raises(KeyError, match="known"):
        get_backbone("ResNet50")


@pytest.mark.parametrize("name", BACKBONES)
def test_each_backbone_builds_the_papers_head_with_softmax(name):
    size = get_backbone(name).input_size(32)
    model = build_model(name, size, "none")
    assert model.input_shape == (None, size, size, 3)
    assert [model.get_layer(f"head_dense{i}").units for i in (1, 2)] == [512, 256]
    probs = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3))))
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer(backbones.OUTPUT_LAYER).dtype_policy.compute_dtype == "float32"


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("DenseNet121", keras.applications.densenet),  # torch mode
        ("EfficientNetB0", keras.applications.efficientnet),  # inside the model
        ("MobileNetV2", keras.applications.mobilenet_v2),  # tf mode
        ("VGG16", keras.applications.vgg16),  # caffe mode: BGR, mean subtracted
    ],
)
def test_preprocess_layer_is_the_backbones_own_preprocess_input(name, module):
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    layer = backbones.BackbonePreprocess(name)
    np.testing.assert_allclose(
        np.asarray(layer(x)), module.preprocess_input(x.copy()), rtol=1e-5, atol=1e-4
    )


def test_model_below_minimum_size_is_refused():
    with pytest.raises(ValueError, match="at least 71 px"):
        build_model("Xception", 64, "none")


def test_saved_model_loads_back_with_identical_outputs(tmp_path):
    model = build_model("MobileNet", 32, "none", head_units=(8,), dropout=0.0)
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = backbones.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_trainable_modes_freeze_what_they_say():
    model = build_model("MobileNetV2", 32, "none", head_units=(8,))
    layers = backbones.backbone_layers(model)
    assert set_trainable(model, "head") == 0
    assert not any(layer.trainable for layer in layers)
    assert model.get_layer("head_dense1").trainable
    n_top = set_trainable(model, "top", 0.2)
    top = layers[-int(np.ceil(len(layers) * 0.2)) :]
    assert 0 < n_top < len(top)  # BatchNorm stays frozen
    assert all(
        layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in top
    )
    assert not any(layer.trainable for layer in layers[: -len(top)])
    assert set_trainable(model, "all") == len(layers)


def test_head_weights_move_between_head_and_full_model():
    model = build_model("MobileNet", 32, "none", head_units=(16, 8))
    head = build_head(model.get_layer(backbones.POOL_LAYER).output.shape[-1], (16, 8), 0.3)
    for layer in head.layers:
        layer.set_weights([np.full_like(w, 0.5) for w in layer.get_weights()])
    copy_head(head, model)
    assert np.all(model.get_layer("head_dense2").get_weights()[0] == 0.5)
    assert np.all(model.get_layer(backbones.OUTPUT_LAYER).get_weights()[1] == 0.5)


def test_weights_none_is_a_random_source():
    source = resolve_weights("VGG16", "none")
    assert source.kind == "random" and source.path is None


def test_offline_weights_file_is_checked_and_loaded(tmp_path):
    base = _plant(tmp_path / "weights", "MobileNetV2")
    source = resolve_weights("MobileNetV2", "imagenet", tmp_path / "weights")
    assert source.kind == "imagenet" and source.sha256 == backbones.sha256_file(source.path)
    model = build_model("MobileNetV2", 48, source)  # weights do not depend on the input size
    np.testing.assert_array_equal(
        model.get_layer("Conv1").get_weights()[0], base.get_layer("Conv1").get_weights()[0]
    )


def test_offline_weights_checksum_mismatch_is_a_clear_error(tmp_path):
    folder = tmp_path / "weights"
    _plant(folder, "MobileNet")
    path = folder / get_backbone("MobileNet").weights_file
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(WeightsChecksumError, match="does not match.*fetch it again"):
        resolve_weights("MobileNet", "imagenet", folder)


def test_offline_folder_without_the_file_or_its_checksum(tmp_path):
    folder = tmp_path / "weights"
    _plant(folder, "MobileNet")
    with pytest.raises(WeightsUnavailable, match="not found.*fetch-weights"):
        resolve_weights("VGG16", "imagenet", folder)
    (folder / backbones.WEIGHTS_MANIFEST).unlink()
    with pytest.raises(WeightsChecksumError, match="no checksum"):
        resolve_weights("MobileNet", "imagenet", folder)


def _no_network(*args, **kwargs):
    raise Exception("URL fetch failure on https://x: None -- [Errno -2] Name or service not known")


def test_failed_download_is_weights_unavailable_with_one_line_reason(monkeypatch):
    monkeypatch.setattr(keras.utils, "get_file", _no_network)
    with pytest.raises(WeightsUnavailable) as info:
        resolve_weights("VGG16", "imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "Name or service not known" in message and "weights: none" in message


def test_fetch_weights_fills_a_folder_that_resolves_offline(tmp_path, monkeypatch):
    def fake_get_file(fname, origin, cache_subdir, file_hash):
        path = Path(cache_subdir) / fname
        path.write_bytes(origin.encode())
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    manifest = fetch_weights(["VGG16", "Xception"], tmp_path / "w")
    files = json.loads(manifest.read_text())["files"]
    assert {f["backbone"] for f in files.values()} == {"VGG16", "Xception"}
    source = resolve_weights("Xception", "imagenet", tmp_path / "w")
    assert source.sha256 == files[get_backbone("Xception").weights_file]["sha256"]


def test_weights_dir_environment_variable_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MYELOMET_WEIGHTS_DIR", raising=False)
    assert weights_dir_from(None, "MYELOMET_WEIGHTS_DIR", tmp_path) is None
    assert weights_dir_from("w", "MYELOMET_WEIGHTS_DIR", tmp_path) == tmp_path / "w"
    monkeypatch.setenv("MYELOMET_WEIGHTS_DIR", "/opt/weights")
    assert weights_dir_from("w", "MYELOMET_WEIGHTS_DIR", tmp_path) == Path("/opt/weights")


def test_random_source_says_why():
    assert WeightsSource.random("offline").reason == "offline"
