"""The model registry in MLflow: registered versions, their aliases, tags and descriptions,
and the files of a registered model. With `components.tracking` (runs and the store), the
only module besides the registry's pyfunc flavour that imports MLflow.

Every function takes the store to use and leaves MLflow's global tracking URI alone, except
`register_version`, which MLflow offers only against the current store (`tracking.connect`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.tracking import MlflowClient

from components.tracking import Store, connect


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model: its number, tags and the aliases it holds."""

    version: str
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()


def version_by_alias(store: Store, name: str, alias: str) -> RegisteredVersion | None:
    """The version an alias points at, or None (no such alias or registered model)."""
    client = MlflowClient(store.tracking_uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    number = model.aliases.get(alias)
    if number is None:
        return None
    found = client.get_model_version(name, number)
    return RegisteredVersion(str(found.version), dict(found.tags), (alias,))


def model_versions(tracking_uri: str, name: str) -> list[RegisteredVersion]:
    """Every version of the registered model `name` with its tags and aliases (empty when
    the model is not registered yet)."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = client.search_model_versions(f"name = '{name}'")
    # search results leave aliases out; the registered model holds them
    aliases = client.get_registered_model(name).aliases if found else {}
    return [
        RegisteredVersion(
            str(v.version),
            dict(v.tags),
            tuple(sorted(a for a, n in aliases.items() if str(n) == str(v.version))),
        )
        for v in found
    ]


def download_model(model_uri: str, tracking_uri: str | None = None) -> str:
    """The files of a registered or logged model (`models:/<name>@<alias>`,
    `models:/<name>/<version>`, `models:/<model id>`, `runs:/...`) in a local folder.

    Looked up in `tracking_uri` (MLflow's current store when None) without setting MLflow's
    global tracking URI: MLflow itself resolves a `models:/` URI in the global registry only.

    Raises:
        TrackingError: no such model, version or alias in the store.
    """
    if tracking_uri is not None and model_uri.startswith("models:/"):
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        model, path = ModelsArtifactRepository.split_models_uri(model_uri)
        found = get_model_name_and_version(client, model)
        location = (
            client.get_logged_model(found[0]).artifact_location
            if len(found) == 1
            else client.get_model_version_download_uri(*found)
        )
        model_uri = f"{location.rstrip('/')}/{path}" if path else location
    return mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=tracking_uri)


def register_version(store: Store, model_uri: str, name: str, tags: Mapping[str, str]) -> str:
    """Register a logged model as a new version of `name` (created when missing).

    Returns:
        The new version's number.
    """
    connect(store)
    return str(mlflow.register_model(model_uri, name, tags=dict(tags)).version)


def set_alias(store: Store, name: str, alias: str, version: str) -> None:
    """Point `alias` of the registered model at `version`."""
    MlflowClient(store.tracking_uri).set_registered_model_alias(name, alias, version)


def tag_version(store: Store, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Set tags on a model version."""
    client = MlflowClient(store.tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def describe_version(
    store: Store, name: str, version: str, run_id: str, text: str, file: str
) -> None:
    """A model version's description (markdown), also kept as `file` in the run that
    logged it."""
    client = MlflowClient(store.tracking_uri)
    client.log_text(run_id, text, file)
    client.update_model_version(name, version, description=text)
