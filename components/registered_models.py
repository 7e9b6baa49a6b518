"""The model registry in MLflow: registered versions, their aliases, tags and descriptions,
the files of a registered model, and each registered model's promotion ledger. With
`components.tracking` (runs and the store), the only module besides the registry's pyfunc
flavour that imports MLflow.

Every function takes the store to use and leaves MLflow's global tracking URI alone, except
`register_version`, which MLflow offers only against the current store (`tracking.connect`).

The promotion ledger is the one compare-and-set that MLflow's stores enforce: aliases and
tags are written last-writer-wins (`session.merge`), but a run's params are keyed by
(run, key) and immutable, so a second, different value for a key is refused with
INVALID_PARAMETER_VALUE by the sqlite store and by a tracking server's database alike. Each
promotion claims the next generation `champion.<g>` of the ledger run; only one value can
hold it. The ledger runs live in the experiment `myelomet-promotions`; which run is a
model's ledger is fixed when the experiment `myelomet-promotions/<model>` is created with
the run's id as a tag, and experiment names are unique (RESOURCE_ALREADY_EXISTS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    BAD_REQUEST,
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.tracking import MlflowClient

from components.tracking import Store, connect

LEDGER_EXPERIMENT = "myelomet-promotions"
LEDGER_RUN_TAG = "myelomet.promotion_ledger_run"
GENERATION_PREFIX = "champion."
_NOTE_TAG = "mlflow.note.content"  # an experiment's or run's description in the MLflow UI


def _has_code(exc: MlflowException, code: int) -> bool:
    return exc.error_code == ErrorCode.Name(code)


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
        if _has_code(exc, RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    number = model.aliases.get(alias)
    if number is None:
        return None
    found = client.get_model_version(name, number)
    return RegisteredVersion(str(found.version), dict(found.tags), (alias,))


def registered_version(store: Store, name: str, version: str) -> RegisteredVersion | None:
    """A version of the registered model `name` with its tags and aliases, or None (no such
    version: deleted, say)."""
    client = MlflowClient(store.tracking_uri)
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        if _has_code(exc, RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return RegisteredVersion(str(found.version), dict(found.tags), tuple(found.aliases))


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
    client = MlflowClient(store.tracking_uri)
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        # MLflow writes an alias by SQLAlchemy's merge: an insert when it found no row. When
        # another process inserted the same alias first, the database refuses the second
        # insert, which the store reports as BAD_REQUEST (a local store and a server alike);
        # written again, it is an update.
        if not _has_code(exc, BAD_REQUEST):
            raise
        client.set_registered_model_alias(name, alias, version)


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


@dataclass(frozen=True)
class LedgerHead:
    """The newest entry of a promotion ledger: its generation (0: none yet), the version
    that became champion then, and the entry as written (`champion.<generation>`)."""

    generation: int
    version: str | None
    entry: str | None = None


def promotion_ledger(store: Store, name: str) -> str:
    """The id of the run that holds the promotion ledger of the registered model `name`,
    created on first use.

    Processes that create one at the same time agree on a single run: each creates a run in
    `myelomet-promotions`, then the experiment `myelomet-promotions/<name>` tagged with its
    id; the store lets one create that name, and the others mark their run KILLED (unused)
    and read it.

    Raises:
        ValueError: that experiment is deleted, or lacks the tag (someone edited it).
    """
    client = MlflowClient(store.tracking_uri)
    anchor_name = f"{LEDGER_EXPERIMENT}/{name}"
    anchor = client.get_experiment_by_name(anchor_name)
    if anchor is None:
        holder = _experiment_id(client, LEDGER_EXPERIMENT, store.artifact_location)
        run = client.create_run(
            holder,
            run_name=name,
            tags={
                _NOTE_TAG: f"Promotions of the registered model {name}: {GENERATION_PREFIX}"
                "<n> is the n-th version made champion (`<version> replaces <version>`)."
            },
        )
        run_id = run.info.run_id
        client.set_terminated(run_id)
        try:
            client.create_experiment(
                anchor_name,
                artifact_location=store.artifact_location,
                tags={
                    LEDGER_RUN_TAG: run_id,
                    _NOTE_TAG: f"Names the run in {LEDGER_EXPERIMENT} that holds the promotion "
                    f"ledger of the registered model {name}; do not delete or rename it.",
                },
            )
            return run_id
        except MlflowException as exc:
            if not _has_code(exc, RESOURCE_ALREADY_EXISTS):
                raise
            # another process created the ledger first; deleting this run would need more
            # than the EDIT permission a group member has on the experiment
            client.set_tag(run_id, _NOTE_TAG, f"Unused: another ledger of {name} won.")
            client.set_terminated(run_id, "KILLED")
            anchor = client.get_experiment_by_name(anchor_name)
    run_id = anchor.tags.get(LEDGER_RUN_TAG) if anchor is not None else None
    if anchor is None or anchor.lifecycle_stage != "active" or run_id is None:
        raise ValueError(
            f"the MLflow experiment {anchor_name!r} that names the promotion ledger of {name} "
            f"is deleted or lacks its tag {LEDGER_RUN_TAG}; restore it (`mlflow experiments "
            "restore`) or, to start a new ledger, delete it permanently (`mlflow gc`)"
        )
    return run_id


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of the active experiment `name`, created when missing."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:
            if not _has_code(exc, RESOURCE_ALREADY_EXISTS):
                raise
            found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage != "active":
        raise ValueError(
            f"the MLflow experiment {name!r} is deleted; restore it with `mlflow experiments "
            "restore` so that promotions can be recorded"
        )
    return found.experiment_id


def ledger_head(store: Store, ledger: str) -> LedgerHead:
    """The newest entry of the promotion ledger run `ledger`."""
    params = MlflowClient(store.tracking_uri).get_run(ledger).data.params
    entries = {
        int(key.removeprefix(GENERATION_PREFIX)): value
        for key, value in params.items()
        if key.startswith(GENERATION_PREFIX) and key.removeprefix(GENERATION_PREFIX).isdigit()
    }
    if not entries:
        return LedgerHead(0, None)
    generation = max(entries)
    entry = entries[generation]
    return LedgerHead(generation, entry.split()[0], entry)


def claim_generation(store: Store, ledger: str, generation: int, entry: str) -> bool:
    """Write `champion.<generation>` = `entry` into the ledger unless it holds another value.

    Args:
        store: where the ledger is.
        ledger: its run id (`promotion_ledger`).
        generation: the head's generation plus one.
        entry: `<version> replaces <version or none>`, a value no other process writes.

    Returns:
        True when the ledger holds `entry` at that generation (this claim or a retry of it),
        False when another entry took it first: the champion changed since it was read.
    """
    client = MlflowClient(store.tracking_uri)
    key = f"{GENERATION_PREFIX}{generation}"
    try:
        client.log_param(ledger, key, entry)
    except MlflowException as exc:
        if not _has_code(exc, INVALID_PARAMETER_VALUE):
            raise
        held = client.get_run(ledger).data.params.get(key)
        if held is None:  # refused for another reason: a deleted ledger run, say
            raise
        return held == entry
    return True
