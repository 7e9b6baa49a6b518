"""ONNX at registration (`onnx_export`, `candidate_model.log_candidate`): each of the seven
backbones exports on the SavedModel route and passes the check against Keras, a wrong or
unreadable file and a model that cannot be exported are refused in one line, and a logged
candidate holds a checked ONNX file for every member, or none and a tag that says why."""

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from components import tracking
from components.config import Config
from components.data.dataset import model_input
from components.registered_models import download_model
from components.registry.candidate_model import log_candidate
from components.registry.onnx_export import (
    ONNX_CHECK_TAG,
    ONNX_TAG,
    TOLERANCE,
    check_onnx,
    check_slices,
    export_onnx,
    stderr_summary,
    synthetic_slices,
)
from components.registry.pyfunc import model_key, onnx_key
from components.registry.serving import MemberSpec
from components.training.backbones import REGISTRY, build_model, load_model
from components.training.loop import PreciseBatchNorm, predict
from tests.components.registry.registry_support import THRESHOLDS
from tests.model_factory import (
    BACKBONE,
    CLASSES,
    POSITIVE,
    SIZE,
    WINDOWS,
    Candidate,
    models_config,
    tiny_model,
    write_models_dir,
)

POSITIVE_INDEX = CLASSES.index(POSITIVE)
LOGIT_SPREAD = 0.1
FOLDS = (f"fold-0/{BACKBONE}", f"fold-1/{BACKBONE}")


def _member(backbone: str = BACKBONE, size: int = SIZE) -> MemberSpec:
    return MemberSpec(backbone=backbone, image_size=size, windows=WINDOWS)


def _varied_model(backbone: str, size: int) -> keras.Model:
    """A classifier on `backbone` with random weights whose probabilities vary with the
    slice, so that agreeing to within 1e-4 means something: a random BatchNorm network
    answers 0.5 to every image, so its BatchNorm statistics are set on the check's slices
    (precise BN) and the softmax scaled as in `model_factory.tiny_model`, to a logit spread
    of LOGIT_SPREAD. A random network's features vary little from slice to slice, so a wide
    spread magnifies float32 rounding: at a spread of 1, Keras on JAX and on TensorFlow
    already differ by 7e-5 on EfficientNetB0 (onnxruntime by 1.2e-4)."""
    keras.utils.set_random_seed(0)
    model = build_model(backbone, size, "none", head_units=(8,), dropout=0.0)
    x = np.stack([model_input(hu, WINDOWS, size) for hu in synthetic_slices().hu])
    PreciseBatchNorm(model)(x, np.arange(len(x)))
    hidden = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.get_layer("head_dense1").output)(x)
    )
    direction = np.random.default_rng(0).normal(size=hidden.shape[1])
    direction *= LOGIT_SPREAD / ((hidden @ direction).std() + 1e-12)
    offset = -(hidden @ direction).mean()
    kernel = np.stack([direction, -direction], axis=1) / 2
    model.get_layer("head_softmax").set_weights([kernel, np.array([offset / 2, -offset / 2])])
    return model


def _gap(p: np.ndarray) -> float:
    """A threshold in the widest gap between the probabilities: labels on both sides, none
    a rounding error away from it."""
    ordered = np.sort(p)
    widest = int(np.argmax(np.diff(ordered)))
    return float(ordered[widest : widest + 2].mean())


def _artifacts(model_folder: Path) -> dict[str, Path]:
    """The pyfunc's artifacts in a downloaded model: name -> file."""
    mlmodel = yaml.safe_load((model_folder / "MLmodel").read_text())
    config = mlmodel["flavors"]["python_function"]["artifacts"]
    return {name: model_folder / entry["path"] for name, entry in config.items()}


def test_the_summary_of_a_failed_export_is_its_error_line_not_the_logs():
    stderr = "\n".join(
        [
            "WARNING: All log messages before absl::InitializeLog() is called are written to",
            "I0000 00:00:1796623952.103575   13010 port.cc:153] oneDNN custom operations are on.",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "ValueError: Normalization constants are missing graph inputs",
            "2026-12-07 06:14:14,170 - INFO - Using opset <onnx, 17>",
            "WARNING:tf2onnx.tf_loader:'--tag' not specified for saved_model. Using --tag serve",
            "E0000 00:00:1796624268.370248   17333 cuda_platform.cc:52] failed call to cuInit",
            "",
        ]
    )
    assert (
        stderr_summary(stderr, 1) == "ValueError: Normalization constants are missing graph inputs"
    )
    assert stderr_summary("I0000 00:00:1.0 1 port.cc:1] noise\n", -9).startswith(
        "killed by signal 9"
    )
    assert stderr_summary("", 3) == "exit status 3"


def test_the_check_runs_on_validation_slices_spread_over_the_split_and_capped(tmp_path):
    cfg = Config(root=tmp_path)
    processed = cfg.path(cfg.ingest.out)
    (processed / "slices").mkdir(parents=True)
    rows, files = [], []
    for i in range(10):
        image_id = f"img{i:02d}"
        np.save(processed / "slices" / f"{image_id}.npy", np.full((8, 8), i, dtype=np.int16))
        files.append({"image_id": image_id, "file": f"slices/{image_id}.npy"})
        split = "val" if i % 2 else "train"
        rows.append({"image_id": image_id, "patient": f"p{i}", "label": "MM", "split": split})
    pd.DataFrame(files).to_csv(processed / "manifest.csv", index=False)
    cfg.path(cfg.split.out).parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(cfg.path(cfg.split.out), index=False)

    every = check_slices(cfg)
    capped = check_slices(cfg, limit=3)

    assert [int(hu[0, 0]) for hu in every.hu] == [1, 3, 5, 7, 9]
    assert every.source == "5 validation slices"
    assert [int(hu[0, 0]) for hu in capped.hu] == [1, 5, 9]


def test_without_a_validation_split_the_check_uses_synthetic_ct_like_slices(tmp_path):
    slices = check_slices(Config(root=tmp_path))

    assert slices.source == "16 synthetic slices"
    assert np.ptp([float(hu.mean()) for hu in slices.hu]) > 1000  # soft tissue to bone
    assert all(np.array_equal(a, b) for a, b in zip(slices.hu, synthetic_slices().hu, strict=True))


def test_a_file_that_is_not_onnx_is_refused_in_one_line(tmp_path):
    planted = tmp_path / "model.onnx"
    planted.write_bytes(b"not an ONNX graph")

    check = check_onnx(planted, tiny_model(), _member(), POSITIVE_INDEX, 0.4, synthetic_slices())

    assert check.problem is not None
    assert check.problem.startswith("onnxruntime cannot run the file (InvalidProtobuf")
    assert "\n" not in check.problem


@pytest.fixture(scope="module")
def seven_exports(tmp_path_factory):
    """Each backbone with the project's head at its smallest input size (`_varied_model`),
    and a damaged model file, exported in one call: member -> (model file, size, result)."""
    folder = tmp_path_factory.mktemp("backbones")
    files, sizes = {}, {}
    for name, backbone in REGISTRY.items():
        files[name] = folder / f"{name}.keras"
        sizes[name] = backbone.min_size
        _varied_model(name, backbone.min_size).save(files[name])
    files["damaged"] = folder / "damaged.keras"
    files["damaged"].write_bytes(b"PK\x03\x04 cut short")
    exported = export_onnx(files, folder / "onnx")
    return {name: (files[name], sizes.get(name), exported[name]) for name in files}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(REGISTRY))
def test_each_backbone_exports_and_passes_the_check(seven_exports, backbone):
    model_file, size, exported = seven_exports[backbone]

    assert isinstance(exported, Path), exported
    model = load_model(model_file)
    slices = synthetic_slices()
    x = np.stack([model_input(hu, WINDOWS, size) for hu in slices.hu])
    p = predict(model, x)[:, POSITIVE_INDEX]
    assert np.std(p) > 0.01  # a constant answer would pass any check
    check = check_onnx(exported, model, _member(backbone, size), POSITIVE_INDEX, _gap(p), slices)
    assert check.problem is None
    assert check.max_difference is not None and check.max_difference <= TOLERANCE


@pytest.mark.slow
def test_a_model_that_cannot_be_exported_is_named_in_one_line(seven_exports):
    _, _, exported = seven_exports["damaged"]

    assert isinstance(exported, str)
    assert exported.startswith("export failed: ModelFileError: ")
    assert "is truncated or not a .keras archive" in exported
    assert "\n" not in exported and "Traceback" not in exported


@pytest.fixture(scope="module")
def fold_candidate(store, study, tmp_path_factory):
    """Two fold models of one backbone (different weights) logged as a cross-validated
    candidate: the cfg, the logged candidate and its downloaded files. The tests below that
    log a candidate of the same name do so in a study of their own (`other_study`): in the
    same study it would be the same run, and its tags this one's."""
    root = tmp_path_factory.mktemp("folds")
    for seed, member in enumerate(FOLDS, start=1):
        models_dir = write_models_dir(root, tiny_model(seed), backbone=member)
    cfg = models_config(models_dir, onnx=True)
    candidate = Candidate(BACKBONE, FOLDS, THRESHOLDS)
    logged = log_candidate(store, study, candidate, cfg, data_version="dv-all")
    return cfg, logged, Path(download_model(logged.model_uri, store.tracking_uri))


@pytest.fixture
def other_study(store, request):
    """A study of the test's own."""
    return tracking.start_study(store, request.node.name)


@pytest.mark.slow
def test_a_logged_candidate_holds_a_checked_onnx_file_for_every_member(store, fold_candidate):
    cfg, logged, folder = fold_candidate
    artifacts = _artifacts(folder)

    assert logged.tags[ONNX_TAG] == "yes"
    assert logged.tags[ONNX_CHECK_TAG].startswith("max difference ")
    assert logged.tags[ONNX_CHECK_TAG].endswith(" to Keras on 16 synthetic slices")
    run_tags = mlflow.MlflowClient(store.tracking_uri).get_run(logged.run_id).data.tags
    assert run_tags[ONNX_TAG] == "yes"
    for member in FOLDS:
        assert model_key(member) in artifacts
        model = load_model(cfg.path(cfg.training.models_out) / member / "model.keras")
        check = check_onnx(
            artifacts[onnx_key(member)],
            model,
            _member(member),
            POSITIVE_INDEX,
            THRESHOLDS["slice"],
            synthetic_slices(),
        )
        assert check.problem is None


@pytest.mark.slow
def test_a_wrong_onnx_file_is_refused_in_one_line_and_the_version_gets_none(
    store, other_study, fold_candidate
):
    cfg, _, folder = fold_candidate
    artifacts = _artifacts(folder)
    # fold 1's export planted as fold 0's: the same network with other weights
    planted = {member: artifacts[onnx_key(FOLDS[1])] for member in FOLDS}

    logged = log_candidate(
        store,
        other_study,
        Candidate(BACKBONE, FOLDS, THRESHOLDS),
        cfg,
        data_version="dv-all",
        onnx_files=planted,
    )

    reason = logged.tags[ONNX_TAG]
    assert reason.startswith(f"no: {FOLDS[0]}: max difference ")
    assert reason.endswith(" to Keras on 16 synthetic slices (limit 0.0001)")
    assert FOLDS[1] not in reason and "\n" not in reason
    run_tags = mlflow.MlflowClient(store.tracking_uri).get_run(logged.run_id).data.tags
    assert run_tags[ONNX_TAG] == reason
    logged_artifacts = _artifacts(Path(download_model(logged.model_uri, store.tracking_uri)))
    assert not [name for name in logged_artifacts if name.startswith("onnx_")]
    assert all(model_key(member) in logged_artifacts for member in FOLDS)


@pytest.mark.slow
def test_a_label_that_differs_at_the_threshold_is_refused(fold_candidate):
    cfg, _, folder = fold_candidate
    onnx_file = _artifacts(folder)[onnx_key(FOLDS[0])]
    model = load_model(cfg.path(cfg.training.models_out) / FOLDS[0] / "model.keras")
    slices = synthetic_slices()
    passed = check_onnx(onnx_file, model, _member(), POSITIVE_INDEX, 0.5, slices)
    gaps = np.abs(passed.keras_p - passed.onnx_p)
    if not gaps.max() > 0:
        pytest.skip("onnxruntime and Keras agree to the last bit on every slice here")
    worst = int(np.argmax(gaps))
    between = float((passed.keras_p[worst] + passed.onnx_p[worst]) / 2)

    check = check_onnx(onnx_file, model, _member(), POSITIVE_INDEX, between, slices)

    assert check.problem == (
        f"1 of 16 labels at threshold {between:g} differ from Keras' on 16 synthetic slices"
    )


def test_with_onnx_off_a_candidate_is_logged_without_onnx_and_the_tag_says_so(
    store, other_study, tmp_path
):
    cfg = models_config(write_models_dir(tmp_path, tiny_model()), onnx=False)

    logged = log_candidate(store, other_study, Candidate(BACKBONE, (BACKBONE,), THRESHOLDS), cfg)

    assert logged.tags[ONNX_TAG] == "no: not exported (params evaluation.onnx is false)"
    artifacts = _artifacts(Path(download_model(logged.model_uri, store.tracking_uri)))
    assert model_key(BACKBONE) in artifacts
    assert not [name for name in artifacts if name.startswith("onnx_")]
