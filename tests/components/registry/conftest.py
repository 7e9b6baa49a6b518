"""Fixtures the registry tests share: an MLflow store, a trained tiny model, a study run, the
model logged as a candidate pyfunc, CT files and a params file pointing at the store."""

from pathlib import Path

import pytest
import yaml

from components import tracking
from components.config import TrackingConfig
from components.registry.candidate_model import log_candidate
from tests.components.registry.registry_support import THRESHOLDS
from tests.dicom_factory import write_ct_files
from tests.model_factory import (
    BACKBONE,
    Candidate,
    models_config,
    tiny_model,
    write_models_dir,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield tracking.resolve_store(TrackingConfig(experiment="registry-test"), root)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return write_models_dir(tmp_path_factory.mktemp("training"), tiny_model())


@pytest.fixture(scope="module")
def study(store):
    return tracking.start_study(store, "study")


@pytest.fixture(scope="module")
def logged(store, study, models_dir):
    candidate = Candidate(BACKBONE, (BACKBONE,), THRESHOLDS)
    return log_candidate(store, study, candidate, models_config(models_dir))


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    return write_ct_files(tmp_path_factory.mktemp("dicom"), 3)


@pytest.fixture
def params(store) -> Path:
    """A params file in the project root of the module's store."""
    path = Path(store.tracking_uri.removeprefix("sqlite:///")).parents[1] / "params.yaml"
    path.write_text(yaml.safe_dump({"tracking": {"experiment": store.experiment}}))
    return path
