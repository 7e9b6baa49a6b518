"""The one place that talks to MLflow.

A study is one parent run; each backbone trains in its own process under a child run tagged
`backbone=<name>` whose parent run id is passed in. The store is `tracking.uri` resolved
against the project root (a relative `sqlite:///mlruns/mlflow.db` becomes an absolute path),
with artifacts under `tracking.artifacts`; MLFLOW_TRACKING_URI, when set, wins.

A group's tracking server (`http(s)://`, credentials from MLFLOW_TRACKING_USERNAME/PASSWORD)
keeps the artifacts itself (`mlflow-artifacts:/`), so nothing here records a path of the
project: dataset sources and the run's source name are relative to it. A server that refuses
the credentials or a request, or stops answering, is a `tracking_server.TrackingServerError`
of one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import mlflow
import psutil
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.config import TrackingConfig
from components.machine import machine_description, machine_tags
from components.relocation import check_not_moved
from components.tracking_server import check_server, on_server

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger(__name__)

BACKBONE_TAG = "backbone"
FOLD_TAG = "fold"
KIND_TAG = "myelomet.kind"
# The experiment's kind in MLflow 3's UI (its kind picker). The 3.17 UI opens an experiment by
# its own GenAI / Model training toggle instead (README: `?workflowType=machine_learning`).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
OWNER_TAG = "myelomet.owner"
ENV_URI = "MLFLOW_TRACKING_URI"  # the user's choice of store: it wins over params.yaml
PARENT_TAG = "mlflow.parentRunId"
SOURCE_NAME_TAG = "mlflow.source.name"  # MLflow's own: the program, as an absolute path
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
# What MLflow raises (no such run, model or alias; a store that refuses): code outside this
# module catches it by this name rather than importing MLflow.
TrackingError = MlflowException


@dataclass(frozen=True)
class Store:
    """Where runs go: tracking URI, artifact root for new experiments, experiment name."""

    tracking_uri: str
    artifact_location: str | None
    experiment: str


def _resolve_local(uri: str, root: Path) -> tuple[str, Path | None]:
    """Make a relative sqlite or file store absolute; return it and the folder it needs."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else root / path
        return f"sqlite:///{path}", path.parent
    if uri.startswith("file:") or "://" not in uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        path = path if path.is_absolute() else root / path
        return path.as_uri(), path
    return uri, None


def resolve_store(cfg: TrackingConfig, root: Path) -> Store:
    """The store of params.yaml's tracking section, or MLFLOW_TRACKING_URI when set.

    Args:
        cfg: the tracking section.
        root: project root, against which relative paths are resolved.
    """
    uri = os.environ.get(ENV_URI) or cfg.uri
    uri, local = _resolve_local(uri, root)
    artifacts = Path(cfg.artifacts)
    artifacts = artifacts if artifacts.is_absolute() else root / artifacts
    return Store(uri, artifacts.as_uri() if local is not None else None, cfg.experiment)


def store_folder(store: Store) -> Path | None:
    """The local folder of a sqlite (its database's folder) or file store; None for a
    tracking server."""
    return _resolve_local(store.tracking_uri, Path.cwd())[1]


class StoreDamaged(ValueError):
    """The local store's sqlite database is corrupt, truncated, not a database, or locked."""


# How long a check waits for another process's lock on the database before it says so.
STORE_BUSY_TIMEOUT_S = 5.0


def check_store(store: Store, thorough: bool = False) -> None:
    """Open a local sqlite store read-only and run sqlite's own check of it: `quick_check`
    (every page read, fast), or with `thorough` `integrity_check` (indexes too, for
    `myelomet doctor`). A tracking server is asked whether it answers and takes the
    credentials (`check_server`); a database not created yet is not checked.

    Raises:
        StoreDamaged: the database is corrupt, truncated or not sqlite, or another process
            held a lock on it for STORE_BUSY_TIMEOUT_S.
        TrackingServerError: the tracking server refused the credentials or did not answer.
    """
    check_server(store.tracking_uri)
    path = Path(store.tracking_uri.removeprefix("sqlite:///"))
    if path == Path(store.tracking_uri) or not path.is_file():
        return
    check = "integrity_check" if thorough else "quick_check"
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=STORE_BUSY_TIMEOUT_S)
        ) as db:
            problems = [row[0] for row in db.execute(f"PRAGMA {check}")]
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise _damaged(path, str(exc)) from None
        raise StoreDamaged(
            f"the MLflow database {path} stayed locked by another process for "
            f"{STORE_BUSY_TIMEOUT_S:.0f} s; wait for it (a training or a `mlflow ui`) to "
            "finish, or stop it, and run the command again"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise _damaged(path, str(exc)) from None
    if problems != ["ok"]:
        raise _damaged(path, f"{len(problems)} problems, the first: {problems[0]}")


def _damaged(path: Path, problem: str) -> StoreDamaged:
    return StoreDamaged(
        f"the MLflow database {path} is damaged ({' '.join(problem.split())}); restore it "
        "from a backup of mlruns/, or move it aside to start a new, empty store"
    )


class StoreMismatch(ValueError):
    """The tracking store is not the one the study was trained into."""


def require_run(store: Store, run_id: str) -> None:
    """Check, creating nothing, that the store holds the run (the study's parent run), so
    that a missing or other store fails before anything is written to its registry.

    Raises:
        StoreMismatch: no store at a local URI, or no such run in it.
        StoreDamaged: its database is damaged or locked (`check_store`).
        ProjectMoved: the store's artifacts are in another folder (a moved or copied project).
        TrackingServerError: the tracking server refused or did not answer.
    """
    check_store(store)
    hint = (
        f"the study run {run_id} that `myelomet train` opened is not in {store.tracking_uri}; "
        "restore mlruns/ or set MLFLOW_TRACKING_URI to the store training used (or run "
        "`myelomet train` again); nothing was registered"
    )
    database = store.tracking_uri.removeprefix("sqlite:///")
    if database != store.tracking_uri and not Path(database).is_file():
        raise StoreMismatch(hint)
    try:
        with on_server(store.tracking_uri, f"reading the study run {run_id}"):
            MlflowClient(store.tracking_uri).get_run(run_id)
    except MlflowException:
        raise StoreMismatch(hint) from None
    check_not_moved(store)


def _point_mlflow_at(uri: str) -> None:
    """Set MLflow's tracking URI in this process, leaving MLFLOW_TRACKING_URI as the user set
    it: `mlflow.set_tracking_uri` also exports it, and `resolve_store` reads it as the user's
    choice, so the next project in the same process (a Prefect worker, a notebook) would
    otherwise log into this one's store."""
    user_uri = os.environ.get(ENV_URI)
    mlflow.set_tracking_uri(uri)
    if user_uri is None:
        os.environ.pop(ENV_URI, None)
    else:
        os.environ[ENV_URI] = user_uri


def connect(store: Store) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment.

    Raises:
        ValueError: the experiment exists but is deleted.
        StoreDamaged: its database is damaged or locked (`check_store`).
        ProjectMoved: the store's artifacts are in another folder (a moved or copied project).
        TrackingServerError: the tracking server refused the credentials or a request, or
            did not answer.
    """
    check_store(store)
    check_not_moved(store)
    folder = store_folder(store)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    _point_mlflow_at(store.tracking_uri)
    with on_server(store.tracking_uri, f"opening experiment {store.experiment!r}"):
        return _experiment_id(store)


def _experiment_id(store: Store) -> str:
    """The experiment's id, created (tagged with its kind) when missing."""
    client = MlflowClient(store.tracking_uri)
    experiment = client.get_experiment_by_name(store.experiment)
    if experiment is None:
        try:
            return client.create_experiment(
                store.experiment,
                artifact_location=store.artifact_location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:  # another process created it first
            experiment = client.get_experiment_by_name(store.experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {store.experiment!r} is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            f"or set another tracking.experiment"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def project_path(path: Path, root: Path | None = None) -> str:
    """A path as the store keeps it: relative to the project root (the working folder when
    None), or its name alone outside it, so that no run records where a checkout lies."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to((root or Path.cwd()).resolve()).as_posix()
    except ValueError:
        return path.name


def source_name(root: Path | None = None) -> str:
    """The run's source (MLflow's `mlflow.source.name`): this program as `project_path`
    gives it, where MLflow would record its absolute path."""
    return project_path(Path(sys.argv[0] or "python"), root)


def git_commit(root: Path) -> str | None:
    """The commit checked out at root, with "-dirty" when tracked files differ; None outside
    git. `dvc.lock` does not count: `dvc repro` rewrites it as each stage finishes, so a
    clean checkout would read as dirty from the second stage on."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":!dvc.lock"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to MLflow params: keys joined with dots, values as strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def start_study(
    store: Store,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    root: Path | None = None,
    owner: str | None = None,
    datasets: Sequence[DatasetInput] = (),
) -> str:
    """Open the parent run of a study and leave it running for the backbone runs.

    Study runs left RUNNING by a process of this machine that is gone (killed, say) are
    closed first as KILLED, with their RUNNING backbone runs. The run is tagged with the
    machine it runs on (`machine.*`: CPU, float-relevant instruction sets, library versions,
    kernel pins; see `components.machine`), which its numbers depend on.

    Args:
        store: where to log.
        run_name: the study's name in the MLflow UI.
        params: logged flattened.
        tags: extra tags.
        root: project root, for the git commit tag.
        owner: `process_identity()` of the process that will end the study; this one's by
            default.
        datasets: the data the study trains on (`dataset_inputs`), shown in the runs
            table's Dataset column.

    Returns:
        The parent run id, to pass to `backbone_run` (in any process) and `end_study`.

    Raises:
        TrackingServerError: the tracking server refused or did not answer; no run opened.
    """
    experiment_id = connect(store)
    with on_server(store.tracking_uri, "opening the study run"):
        return _open_study(store, experiment_id, run_name, params, tags, root, owner, datasets)


def _open_study(
    store: Store,
    experiment_id: str,
    run_name: str,
    params: Mapping[str, Any] | None,
    tags: Mapping[str, str] | None,
    root: Path | None,
    owner: str | None,
    datasets: Sequence[DatasetInput],
) -> str:
    client = MlflowClient(store.tracking_uri)
    for stale in close_stale_studies(store, experiment_id):
        log.warning("study run %s was left RUNNING by a process that is gone: marked KILLED", stale)
    all_tags = {
        SOURCE_NAME_TAG: source_name(root),
        KIND_TAG: "study",
        OWNER_TAG: owner or process_identity(),
        **machine_tags(machine_description()),
        **(tags or {}),
    }
    commit = git_commit(root) if root is not None else None
    if commit:
        all_tags["git_commit"] = commit
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    for key, value in flatten(params or {}).items():
        client.log_param(run.info.run_id, key, value)
    if datasets:
        client.log_inputs(run.info.run_id, datasets=list(datasets))
    return run.info.run_id


def process_identity() -> str:
    """`host:pid:start` of this process; `start` is its start time in seconds since the
    epoch (psutil: Linux, macOS, Windows), so that a reused pid is not mistaken for it."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()):.2f}"


def _start_time(pid: int) -> float:
    """When process `pid` started (seconds since the epoch); raises psutil.NoSuchProcess
    when there is none (or only a zombie) and psutil.AccessDenied where it may not be read."""
    process = psutil.Process(pid)
    if process.status() == psutil.STATUS_ZOMBIE:
        raise psutil.NoSuchProcess(pid)
    return process.create_time()


# Start times of one process read twice agree to 10 ms; a reused pid starts later than that.
_SAME_START_S = 0.05


def _is_gone(identity: str) -> bool:
    """Whether the process named by `process_identity` has ended; False where unknown
    (another host, no such tag, or a process this user may not inspect)."""
    parts = identity.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid, start = int(parts[1]), parts[2]
    try:
        started = _start_time(pid)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    try:
        return abs(started - float(start)) > _SAME_START_S
    except ValueError:  # no start recorded: the pid alone says it is alive
        return False


def close_stale_studies(store: Store, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING study runs whose owning process is gone, and their RUNNING
    backbone runs; returns the study run ids closed."""
    client = MlflowClient(store.tracking_uri)
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KIND_TAG}` = 'study' and attributes.status = 'RUNNING'",
    )
    closed = []
    for run in running:
        if not _is_gone(run.data.tags.get(OWNER_TAG, "")):
            continue
        children = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}' "
            "and attributes.status = 'RUNNING'",
        )
        for stale in [*children, run]:
            client.set_tag(stale.info.run_id, "myelomet.closed_by", "next study start")
            client.set_terminated(stale.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def end_study(store: Store, run_id: str, status: RunStatus = "FINISHED") -> None:
    """Close a study's parent run."""
    with on_server(store.tracking_uri, f"closing the study run {run_id}"):
        MlflowClient(store.tracking_uri).set_terminated(run_id, status)


def tag_run(store: Store, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on any run (a study's parent run, say) from any process."""
    client = MlflowClient(store.tracking_uri)
    with on_server(store.tracking_uri, f"tagging run {run_id}"):
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value))


def _system_metrics_available() -> bool:
    if importlib.util.find_spec("psutil") is None:
        log.warning("psutil is not installed: MLflow system metrics are off")
        return False
    return True


def outcome_tags(results: Mapping[str, Mapping[str, Any]], failures: Mapping[str, str]) -> dict:
    """Tags for a study's parent run: which backbones failed, and which were reused from an
    earlier study (already trained with the same inputs) together with the run that trained
    them, since a reused backbone gets no child run of its own."""
    tags: dict[str, str] = {}
    if failures:
        tags["failed_backbones"] = ",".join(sorted(failures))
    reused = sorted(name for name, r in results.items() if r.get("status") == "skipped")
    if reused:
        tags["reused_backbones"] = ",".join(reused)
        tags.update({f"reused.{name}.run_id": str(results[name].get("run_id")) for name in reused})
    return tags


def dataset_inputs(
    files: Mapping[str, Path], digest: str, root: Path | None = None
) -> list[DatasetInput]:
    """The manifest and split (name -> CSV) as MLflow dataset inputs of the data version
    `digest`: the runs table's Dataset column. Only their schema and row counts are stored,
    and as source their paths relative to `root` (`project_path`)."""
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return [
        DatasetInput(
            from_pandas(
                pd.read_csv(path), source=project_path(path, root), name=name, digest=digest[:36]
            )._to_mlflow_entity(),
            [InputTag(MLFLOW_DATASET_CONTEXT, "training")],
        )
        for name, path in files.items()
    ]


def candidate_run(
    store: Store,
    parent_run_id: str,
    candidate: str,
    members: Sequence[str],
    datasets: Sequence[DatasetInput] = (),
    cross_validated: bool = False,
) -> str:
    """The run of a candidate in the study, where its evaluation metrics and, once chosen,
    its registered model go (MLflow's Compare view ranks these runs): the backbone's
    training run, or a new child run for the ensemble and for a backbone whose training was
    reused from an earlier study. A cross-validated candidate (its folds pooled) always has
    a run of its own beside the folds' training runs.
    """
    with on_server(store.tracking_uri, f"opening the run of candidate {candidate}"):
        return _candidate_run(store, parent_run_id, candidate, members, datasets, cross_validated)


def _candidate_run(
    store: Store,
    parent_run_id: str,
    candidate: str,
    members: Sequence[str],
    datasets: Sequence[DatasetInput],
    cross_validated: bool,
) -> str:
    client = MlflowClient(store.tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    own = f" and tags.`{KIND_TAG}` = 'candidate'" if cross_validated else ""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' "
        f"and tags.`{BACKBONE_TAG}` = '{candidate}'{own}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {
        PARENT_TAG: parent_run_id,
        BACKBONE_TAG: candidate,
        KIND_TAG: "candidate",
        "members": ",".join(members),
    }
    run_id = client.create_run(experiment_id, run_name=candidate, tags=tags).info.run_id
    if datasets:
        client.log_inputs(run_id, datasets=list(datasets))
    client.set_terminated(run_id)
    return run_id


def log_run_metrics(store: Store, run_id: str, metrics: Mapping[str, float]) -> None:
    """Log metrics (finite ones, at step 0) into a run, open or closed; a value logged again
    replaces the shown one."""
    now = int(time.time() * 1000)
    finite = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)]
    client = MlflowClient(store.tracking_uri)
    with on_server(store.tracking_uri, f"logging the metrics of run {run_id}"):
        for start in range(0, len(finite), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=finite[start : start + 1000])


class BackboneRun:
    """The active run of one backbone; every method logs to it."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.status: RunStatus = "FINISHED"

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params(flatten(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if finite:
            mlflow.log_metrics(finite, step=step)

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback that logs each epoch's `logs` at step epoch + 1."""
        import keras

        run = self

        class MlflowEpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
                run.log_metrics(logs or {}, step=epoch + 1)

        return MlflowEpochLogger()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_inputs(self, datasets: Sequence[DatasetInput]) -> None:
        MlflowClient().log_inputs(self.run_id, datasets=list(datasets))

    def log_model(
        self,
        model: keras.Model,
        inputs: np.ndarray,
        outputs: np.ndarray,
        requirements: Sequence[str],
        name: str = "model",
    ) -> str:
        """Log a Keras model with a signature inferred from a sample batch and its outputs.

        No input_example: with Keras models it breaks logging in MLflow 3.x (mlflow#16183).
        Requirements are pinned by the caller (`runtime.framework_requirements`) rather than
        inferred, which would load the model in a subprocess that does not know the custom
        preprocessing layer.

        Returns:
            The logged model's URI.
        """
        from mlflow.models import infer_signature

        info = mlflow.keras.log_model(
            model,
            name=name,
            signature=infer_signature(inputs, outputs),
            pip_requirements=list(requirements),
            tags={SOURCE_NAME_TAG: source_name()},
        )
        return info.model_uri


@contextlib.contextmanager
def backbone_run(
    store: Store,
    backbone: str,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    system_metrics: bool = True,
    fold: int | None = None,
) -> Iterator[BackboneRun]:
    """Open (or reopen, to resume) the child run of one backbone.

    The run ends FINISHED, or FAILED when the block raises, or whatever `run.status` was set to
    (KILLED for a paused run that will be resumed).

    Args:
        store: where to log.
        backbone: backbone name, the `backbone` tag and run name.
        parent_run_id: the study run to nest under; it may live in another process.
        run_id: an earlier run of this backbone to continue; a new run when it is gone.
        tags: extra tags.
        system_metrics: sample CPU, memory (and GPU with pynvml) while the run is open.
        fold: the cross-validation fold it trains (the `fold` tag, in the run name).
    """
    experiment_id = connect(store)
    log_system = system_metrics and _system_metrics_available()
    active = None
    if run_id is not None:
        try:
            active = mlflow.start_run(run_id=run_id, log_system_metrics=log_system)
        except MlflowException as exc:
            log.warning("cannot reopen MLflow run %s (%s); starting a new one", run_id, exc)
    if active is None:
        all_tags = {
            SOURCE_NAME_TAG: source_name(),
            BACKBONE_TAG: backbone,
            KIND_TAG: "backbone",
            **machine_tags(machine_description()),
            **(tags or {}),
        }
        if fold is not None:
            all_tags[FOLD_TAG] = str(fold)
        if parent_run_id:
            # the tag, not start_run(parent_run_id=...), which insists the parent be active
            # in this process' view and fails for a study that has already been closed
            all_tags[PARENT_TAG] = parent_run_id
        with on_server(store.tracking_uri, f"opening the run of {backbone}"):
            active = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=backbone if fold is None else f"{backbone} fold {fold}",
                tags=all_tags,
                log_system_metrics=log_system,
            )
    run = BackboneRun(active.info.run_id)
    try:
        yield run
    except BaseException:
        try:
            mlflow.end_run("FAILED")
        except MlflowException as exc:  # the server is gone: the next study start closes it
            log.warning("could not mark run %s FAILED: %s", run.run_id, exc.message[:300])
        raise
    with on_server(store.tracking_uri, f"closing the run of {backbone}"):
        mlflow.end_run(run.status)


def log_study_outputs(
    store: Store, run_id: str, files: list[Path], metrics: Mapping[str, float]
) -> None:
    """Attach the study's report files and headline metrics to its parent run.

    Args:
        store: where the run lives.
        run_id: the study's parent run (it may be closed already).
        files: files or folders to log as artifacts under `study/`.
        metrics: name -> value; non-finite values are left out.
    """
    client = MlflowClient(store.tracking_uri)
    with on_server(store.tracking_uri, f"logging the study's outputs into run {run_id}"):
        for path in files:
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), f"study/{Path(path).name}")
            else:
                client.log_artifact(run_id, str(path), "study")
        for key, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                client.log_metric(run_id, key, float(value))
