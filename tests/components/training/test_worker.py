import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components import artifacts, code_closure, tracking
from components.config import BACKBONES, TrainingConfig, load_config
from components.machine import machine_description, machine_record
from components.training import backbones, batches, devices, loop, runtime, worker
from components.training.backbones import WeightsUnavailable, get_backbone
from components.training.plan import plan_run
from tests.project_factory import write_tiny_project
from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[3]
# Keras 3 with NumPy 2 warns inside model.save; not this code's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_tiny_project(root)
    return root


@pytest.fixture(scope="module")
def store(project):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield tracking.resolve_store(load_config(project / "params.yaml").tracking, project)


def _cfg(project: Path, **training_params):
    cfg = load_config(project / "params.yaml")
    return cfg.model_copy(update={"training": cfg.training.model_copy(update=training_params)})


def _plant_weights(folder: Path, name: str) -> None:
    spec = get_backbone(name)
    folder.mkdir(parents=True, exist_ok=True)
    spec.builder(include_top=False, weights=None, input_shape=(32, 32, 3)).save(
        folder / spec.weights_file
    )
    entry = {"sha256": backbones.sha256_file(folder / spec.weights_file)}
    (folder / backbones.WEIGHTS_MANIFEST).write_text(
        json.dumps({"format": 1, "files": {spec.weights_file: entry}})
    )


def test_data_version_follows_the_split_contents(project, tmp_path):
    manifest = project / "data" / "processed" / "manifest.csv"
    split = tmp_path / "split.csv"
    split.write_bytes((project / "data" / "splits" / "split.csv").read_bytes())
    before = batches.data_version(manifest, split)
    assert batches.data_version(manifest, split) == before
    split.write_text(split.read_text().replace(",train", ",val", 1))
    assert batches.data_version(manifest, split) != before


def test_class_weights_balance_the_training_labels():
    weights = batches.class_weights(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(weights, [4 / 6, 2.0])


@pytest.mark.backends
def test_batch_norm_recalibration_sets_the_training_statistics():
    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization(momentum=0.999)
    model = keras.Model(inputs, bn(inputs))
    x = np.random.default_rng(0).normal([5.0, -2.0, 0.0], [2.0, 0.5, 1.0], (256, 3))
    assert loop.PreciseBatchNorm(model)(x.astype(np.float32), np.arange(256)) == 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), x.mean(axis=0), atol=1e-4
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance), x.var(axis=0), rtol=0.05
    )
    assert bn.momentum == 0.999


def test_missing_split_says_which_stage_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text("{}")
    with pytest.raises(FileNotFoundError, match="myelomet ingest"):
        worker.train_backbone("MobileNet", load_config(tmp_path / "params.yaml"), tmp_path / "m")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    # one small backbone also runs under JAX (CI's backend subset)
    [pytest.param(n, marks=pytest.mark.backends) if n == "MobileNetV2" else n for n in BACKBONES],
)
def test_each_backbone_trains_an_epoch_from_scratch_into_mlflow(name, project, store):
    parent = tracking.start_study(store, "test-study")
    out = project / "models" / name
    result = worker.train_backbone(name, _cfg(project), out, store, parent)

    assert (result.status, result.weights, result.epochs_run, result.best_epoch) == (
        "trained", "random", 1, 1,
    )  # fmt: skip
    assert result.image_size == get_backbone(name).input_size(32)
    for file in ("model.keras", "metrics.json", "history.csv", "training_curves.png"):
        assert (out / file).is_file()
    assert not (out / artifacts.CHECKPOINT_DIR).exists()
    predictions = pd.read_csv(out / artifacts.PREDICTIONS_FILE)
    assert list(predictions.columns) == ["image_id", "patient", "label", "split", "p_mm"]
    assert set(predictions["split"]) == {"val", "test"}
    assert predictions["p_mm"].between(0, 1).all()
    metrics = json.loads((out / artifacts.METRICS_FILE).read_text())
    assert metrics["weights"] == "random" and metrics["val_auc"] == result.val_auc
    assert (metrics["bn_recalibrated_layers"] > 0) == (name != "VGG16")
    assert metrics["machine"] == machine_record(machine_description())

    client = MlflowClient(store.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["backbone"] == name and run.data.tags["weights"] == "random"
    assert run.data.tags[tracking.PARENT_TAG] == parent
    assert run.data.tags["machine.keras"] == machine_description()["libraries"]["keras"]
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [1]
    assert {"loss", "accuracy", "auc", "val_accuracy", "val_auc"} <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(result.run_id)} == {
        "metrics.json", "history.csv", "predictions.csv", "training_curves.png",
    }  # fmt: skip
    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{result.run_id}'",
        output_format="list",
    )
    assert [m.name for m in logged] == ["model"]


@pytest.mark.slow
@pytest.mark.backends
def test_interrupted_run_resumes_after_its_last_epoch(project, store):
    cfg, out = _cfg(project, epochs=2), project / "models" / "resume"
    paused = worker.train_backbone("MobileNet", cfg, out, store, epoch_limit=1)
    assert (paused.status, paused.epochs_run) == ("paused", 1)
    state = json.loads((out / artifacts.CHECKPOINT_DIR / "state.json").read_text())
    assert state["epoch"] == 1 and state["last_file"] == "epoch-0001.keras"
    assert [p.name for p in (out / artifacts.CHECKPOINT_DIR).glob("*.keras")] == [
        "epoch-0001.keras"
    ]

    resumed = worker.train_backbone("MobileNet", cfg, out, store)
    assert (resumed.status, resumed.epochs_run) == ("resumed", 2)
    assert pd.read_csv(out / artifacts.HISTORY_FILE)["epoch"].tolist() == [1, 2]
    assert resumed.run_id == paused.run_id
    client = MlflowClient(store.tracking_uri)
    assert [m.step for m in client.get_metric_history(resumed.run_id, "loss")] == [1, 2]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_command_line_trains_falling_back_to_scratch_then_skips(project, tmp_path, capsys, caplog):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["training"].update(weights="imagenet", weights_dir=str(tmp_path / "no-weights"))
    (project / "fallback.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    argv = ["--backbone", "MobileNet", "--params", str(project / "fallback.yaml")]
    argv += ["--out", str(out), "--no-tracking"]

    with caplog.at_level("WARNING", logger="components.training.worker"):
        assert worker.main(argv) == artifacts.EXIT_OK
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["status"] == "trained" and first["weights"] == "random"
    assert json.loads((out / artifacts.RESULT_FILE).read_text()) == first
    assert "random initialisation (weights=random)" in caplog.text
    assert "not found" in json.loads((out / artifacts.METRICS_FILE).read_text())["weights_note"]

    stamp = (out / artifacts.MODEL_FILE).stat().st_mtime_ns
    assert worker.main(argv) == artifacts.EXIT_OK
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["status"] == "skipped" and again["inputs_hash"] == first["inputs_hash"]
    assert (out / artifacts.MODEL_FILE).stat().st_mtime_ns == stamp

    cfg = load_config(project / "fallback.yaml")
    changed = cfg.model_copy(update={"training": cfg.training.model_copy(update={"dropout": 0.5})})
    assert plan_run("MobileNet", changed).inputs_hash != first["inputs_hash"]


def test_editing_the_training_code_or_adding_a_training_field_retrains(
    project, tmp_path, monkeypatch
):
    cfg = _cfg(project)
    base = plan_run("MobileNet", cfg).inputs_hash
    copy = tmp_path / "source"
    for package in code_closure.FIRST_PARTY:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("*.pyc"))
    monkeypatch.setattr(code_closure, "ROOT", copy)
    assert plan_run("MobileNet", cfg).inputs_hash == base
    unrelated = copy / "components" / "data" / "synthetic" / "cohort.py"
    unrelated.write_text(unrelated.read_text() + "\n# not training code\n")
    assert plan_run("MobileNet", cfg).inputs_hash == base
    loop_source = copy / "components" / "training" / "loop.py"
    loop_source.write_text(loop_source.read_text() + "\n# a change to the training loop\n")
    assert plan_run("MobileNet", cfg).inputs_hash != base
    monkeypatch.undo()

    class WithNewField(TrainingConfig):
        new_field: int = 0

    extended = WithNewField(**cfg.training.model_dump())
    assert plan_run("MobileNet", cfg.model_copy(update={"training": extended})).inputs_hash != base
    placed = cfg.training.model_copy(update={"max_parallel": 7, "retries": 3})
    assert plan_run("MobileNet", cfg.model_copy(update={"training": placed})).inputs_hash == base


@pytest.mark.slow
def test_a_backbone_override_applies_to_that_backbone_and_its_inputs_hash(project, tmp_path):
    other = _cfg(project, overrides={"VGG16": {"epochs": 5}})
    mine = _cfg(project, overrides={"MobileNet": {"epochs": 2, "scratch_learning_rate": 5e-4}})
    base = plan_run("MobileNet", _cfg(project)).inputs_hash
    assert plan_run("MobileNet", other).inputs_hash == base

    result = worker.train_backbone("MobileNet", mine, tmp_path / "out")
    assert result.epochs_run == 2 and result.inputs_hash != base
    history = pd.read_csv(tmp_path / "out" / artifacts.HISTORY_FILE)
    assert history["learning_rate"].tolist() == [5e-4, 5e-4]


@pytest.mark.parametrize(
    ("monitor", "better", "worse"),
    [
        ("val_loss", {"loss": 0.4, "auc": 0.6}, {"loss": 0.5, "auc": 0.9}),
        ("val_auc", {"loss": 0.5, "auc": 0.9}, {"loss": 0.4, "auc": 0.6}),
        ("val_auc", {"loss": 0.9, "auc": 0.5}, {"loss": 0.1, "auc": float("nan")}),
    ],
)
def test_the_monitored_score_is_lower_for_the_better_epoch(monitor, better, worse):
    assert loop._monitored(better, monitor) < loop._monitored(worse, monitor)


def test_required_pretrained_weights_that_cannot_be_had_stop_the_run(project, tmp_path):
    cfg = _cfg(project, weights="imagenet", require_pretrained=True, weights_dir=str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="not found"):
        worker.train_backbone("MobileNet", cfg, tmp_path / "out")
    assert not (tmp_path / "out" / artifacts.RESULT_FILE).exists()


@pytest.mark.slow
def test_head_phase_features_are_cached_and_reused(project, tmp_path):
    weights = tmp_path / "weights"
    _plant_weights(weights, "MobileNet")
    cache = str(tmp_path / "cache")
    cfg = _cfg(project, weights="imagenet", weights_dir=str(weights), epochs=2, cache_dir=cache)
    first = worker.train_backbone("MobileNet", cfg, tmp_path / "a")
    assert first.weights == "imagenet"
    metrics = json.loads((tmp_path / "a" / artifacts.METRICS_FILE).read_text())
    assert metrics["feature_cache"] == "miss"
    cached = list((tmp_path / "cache" / "features" / "MobileNet").glob("*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert set(pd.read_csv(tmp_path / "a" / artifacts.HISTORY_FILE)["phase"]) == {"head"}

    worker.train_backbone("MobileNet", cfg, tmp_path / "b")
    metrics = json.loads((tmp_path / "b" / artifacts.METRICS_FILE).read_text())
    assert metrics["feature_cache"] == "hit"
    assert cached[0].stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.backends
def test_fine_tuning_follows_the_head_phase(project, tmp_path):
    weights = tmp_path / "weights"
    _plant_weights(weights, "MobileNet")
    cfg = _cfg(project, weights="imagenet", weights_dir=str(weights), finetune_epochs=1)
    result = worker.train_backbone("MobileNet", cfg, tmp_path / "out")
    history = pd.read_csv(tmp_path / "out" / artifacts.HISTORY_FILE)
    assert history["phase"].tolist() == ["head", "finetune"]
    assert history["learning_rate"].tolist() == [1e-3, 1e-5]
    assert result.epochs_run == 2 and result.best_epoch == 2
    assert backbones.load_model(tmp_path / "out" / artifacts.MODEL_FILE).input_shape == (
        None, 32, 32, 3,
    )  # fmt: skip


def test_entry_point_exit_codes_and_error_file(project, tmp_path):
    assert worker.main(["--backbone", "MobileNet", "--params", str(tmp_path / "no.yaml")]) == 2
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["training"].update(weights="imagenet", require_pretrained=True, weights_dir="nowhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for sub in ("data/processed", "data/splits"):
        (tmp_path / sub).mkdir(parents=True)
        for file in (project / sub).glob("*.csv"):
            (tmp_path / sub / file.name).write_bytes(file.read_bytes())
    argv = ["--backbone", "VGG16", "--params", str(tmp_path / "params.yaml"), "--no-tracking"]
    assert worker.main(argv) == artifacts.EXIT_WEIGHTS
    error = json.loads((tmp_path / "models" / "VGG16" / artifacts.ERROR_FILE).read_text())
    assert error["exit_code"] == 3 and "not found" in error["error"]


@pytest.mark.slow
def test_module_entry_point_reports_missing_data_with_its_exit_code(tmp_path):
    (tmp_path / "params.yaml").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "components.training.worker", "--backbone", "VGG16",
         "--params", str(tmp_path / "params.yaml"), "--no-tracking"],
        capture_output=True, text=True, timeout=300, env=project_env({"PYTHONPATH": str(ROOT)}),
    )  # fmt: skip
    assert done.returncode == artifacts.EXIT_DATA, done.stderr[-2000:]
    error = json.loads((tmp_path / "models" / "VGG16" / artifacts.ERROR_FILE).read_text())
    assert "myelomet ingest" in error["error"]


@pytest.mark.backends
def test_the_training_step_minimises_the_weighted_loss_and_reports_the_whole_epoch():
    """Each step returns the class-weighted loss and the training-mode outputs it took the
    gradient at; the epoch's metrics are over all its batches, and the loss goes down."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(np.int32)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    loop.compile_model(model, 0.05)
    weights = batches.class_weights(y, 2)[y]
    before = loop.predict(model, x)
    loss, outputs = runtime.train_step(model, loop.weighted_loss)(x, y, weights)
    np.testing.assert_allclose(outputs, before, rtol=1e-5)  # outputs before the update
    ce = -np.log(before[np.arange(40), y])
    assert loss == pytest.approx(float((ce * weights).mean()), rel=1e-5)

    step = runtime.train_step(model, loop.weighted_loss)
    data = batches.Batches(x, y, weights, np.arange(40), 8, shuffle=True)
    epochs = [loop.fit_epoch(step, data, e, "", positive=1) for e in range(15)]
    assert epochs[-1]["loss"] < 0.7 * epochs[0]["loss"]
    assert epochs[-1]["accuracy"] > 0.8 and epochs[-1]["auc"] > 0.9
    assert 0 < epochs[0]["accuracy"] < 1  # over 40 images, not one batch of 8


@pytest.mark.slow
def test_training_on_a_cpu_gives_the_same_predictions_on_any_number_of_cores(tmp_path):
    root = tmp_path / "project"
    write_tiny_project(root, patients_per_class=6, slices=2)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["training"].update(epochs=2, cpu_threads=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cpus = devices.usable_cpus()
    outputs = []
    for pinned in (cpus[:1], cpus):  # one core, then every core this machine has
        out = tmp_path / f"on-{len(pinned)}-cores"
        command = [sys.executable, "-m", "components.training.worker", "--backbone", "MobileNetV2"]
        command += ["--params", str(root / "params.yaml"), "--out", str(out), "--no-tracking"]
        env = project_env({devices.CPUS_ENV: ",".join(map(str, pinned))})
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append((out / artifacts.PREDICTIONS_FILE).read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_training_from_scratch_learns_a_separable_cohort(tmp_path):
    root = tmp_path / "project"
    write_tiny_project(root, patients_per_class=10, slices=3)
    cfg = _cfg(root, epochs=6, monitor="val_auc", cpu_threads=1)
    result = worker.train_backbone("MobileNetV2", cfg, tmp_path / "out")
    assert result.weights == "random" and result.val_auc > 0.9, result
