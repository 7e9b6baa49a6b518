from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from components import tracking
from components.config import TrackingConfig
from components.registered_models import (
    RegisteredVersion,
    describe_version,
    download_model,
    model_versions,
    register_version,
    set_alias,
    tag_version,
    version_by_alias,
)
from components.training.runtime import framework_requirements


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.resolve_store(TrackingConfig(experiment="test"), tmp_path)


def _logged_model(store: tracking.Store) -> tuple[str, str]:
    """A tiny Keras model logged in a run of the store: its model URI and run id."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    x = np.zeros((1, 2), dtype=np.float32)
    with tracking.backbone_run(store, "Tiny", system_metrics=False) as run:
        uri = run.log_model(model, x, model.predict(x, verbose=0), framework_requirements())
    return uri, run.run_id


def test_versions_are_registered_tagged_and_found_by_alias(store):
    uri, run_id = _logged_model(store)
    assert version_by_alias(store, "tiny", "champion") is None  # not registered yet
    assert model_versions(store.tracking_uri, "tiny") == []
    first = register_version(store, uri, "tiny", {"candidate": "Tiny"})
    second = register_version(store, uri, "tiny", {"candidate": "Tiny"})
    set_alias(store, "tiny", "champion", first)
    assert version_by_alias(store, "tiny", "challenger") is None
    set_alias(store, "tiny", "champion", second)
    set_alias(store, "tiny", "challenger", first)
    tag_version(store, "tiny", second, {"promotion.reason": "better"})
    describe_version(store, "tiny", second, run_id, "# card", "card.md")

    champion = version_by_alias(store, "tiny", "champion")
    assert champion == RegisteredVersion(
        second, {"candidate": "Tiny", "promotion.reason": "better"}, ("champion",)
    )
    versions = {v.version: v.aliases for v in model_versions(store.tracking_uri, "tiny")}
    assert versions == {first: ("challenger",), second: ("champion",)}
    client = MlflowClient(store.tracking_uri)
    assert client.get_model_version("tiny", second).description == "# card"
    assert Path(client.download_artifacts(run_id, "card.md")).read_text() == "# card"


def test_a_model_is_fetched_from_the_store_named_not_the_global_one(store, tmp_path):
    uri, _ = _logged_model(store)
    version = register_version(store, uri, "tiny", {})
    set_alias(store, "tiny", "champion", version)
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    for model_uri in ("models:/tiny@champion", f"models:/tiny/{version}", uri):
        folder = Path(download_model(model_uri, store.tracking_uri))
        assert (folder / "MLmodel").is_file(), model_uri
    assert mlflow.get_tracking_uri() == elsewhere
    with pytest.raises(tracking.TrackingError, match="challenger"):
        download_model("models:/tiny@challenger", store.tracking_uri)
