"""The `myelomet` command line: a thin layer that parses arguments, loads params.yaml
once and calls one component per command. Heavy imports happen inside each command so
that `myelomet --help` stays fast."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components.config import Config, load_config

if TYPE_CHECKING:
    from components.pacs.send import Delivery, Target

Command = Callable[[argparse.Namespace, Config], int]


def _synthesize(args: argparse.Namespace, cfg: Config) -> int:
    from components.data.synthetic.cohort import synthesize_cohort

    out = Path(args.out) if args.out else cfg.path(cfg.synthetic.out)
    summary = synthesize_cohort(cfg.synthetic, cfg.classes, out)
    print(f"synthesized {summary.n_patients} patients, {summary.n_slices} slices into {out}")
    return 0


def _ingest(args: argparse.Namespace, cfg: Config) -> int:
    from components.data.deid import study_key
    from components.data.ingest import ingest

    root = Path(args.dicom_root) if args.dicom_root else cfg.path(cfg.data.dicom_root)
    out = Path(args.out) if args.out else cfg.path(cfg.ingest.out)
    labels = args.labels_csv or cfg.data.labels_csv
    key = study_key(root, cfg.ingest.key_env, cfg.path(cfg.ingest.key_file), exclude=out)
    summary = ingest(
        root,
        out,
        cfg.classes,
        key,
        labels_csv=cfg.path(labels) if labels else None,
        max_frame_pixels=cfg.ingest.max_frame_pixels,
        max_image_bytes=cfg.ingest.max_image_bytes,
    )
    # Real paths name patients' folders: they go to a person at a terminal, never to a log
    # (a pipe is the scheduler's or a stage log's), which gets the pseudonymised source.
    interactive = sys.stderr.isatty()
    for reject, (path, why) in zip(summary.rejects, summary.rejected_paths, strict=True):
        shown = path if interactive else reject.source
        print(f"rejected {shown}: {why}", file=sys.stderr)
    if summary.rejects and not interactive:
        print("(real paths of rejected files are shown on an interactive terminal only)")
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"ingested {summary.n_slices} slices of {summary.n_patients} patients into {out}; "
        f"{summary.n_rejects} files rejected (see {out / 'rejects.csv'})"
    )
    return 0


def _pull(args: argparse.Namespace, cfg: Config) -> int:
    from components.data.deid import real_data_key
    from components.pacs.pull import pull, remote_for
    from components.pacs.source import parse_source

    source = parse_source(args.source, Path(args.ca_bundle) if args.ca_bundle else None)
    key = real_data_key(cfg.ingest.key_env, cfg.path(cfg.ingest.key_file))
    remote = remote_for(source, cfg.pull)
    summary = pull(remote, Path(args.cohort), Path(args.out), cfg.classes, key, cfg.pull)
    for row in summary.rows:
        if row.status not in ("complete", "not_tried", "error"):  # an error is the fatal line
            print(f"cohort line {row.line}: {row.status}: {row.detail}", file=sys.stderr)
    if summary.fatal:
        print(f"myelomet pull: error: {summary.fatal}", file=sys.stderr)
    print(
        f"pulled {summary.fetched} new instances; {summary.complete_rows} of "
        f"{len(summary.rows)} cohort rows complete in {summary.out} (report: "
        f"{summary.report_path})"
    )
    return 0 if summary.ok else 1


def _split(args: argparse.Namespace, cfg: Config) -> int:
    from components.data.split import write_split

    outcome = write_split(cfg, args.mode)
    kind = (
        f"{outcome.folds}-fold {outcome.mode}-level" if outcome.folds else f"{outcome.mode}-level"
    )
    print(f"{kind} split written to {outcome.path}\n{outcome.table.to_string()}")
    return 0


def _params(args: argparse.Namespace, cfg: Config) -> Path:
    """The params file, as an absolute path (flows and processes may run elsewhere)."""
    return cfg.root / Path(args.params).name


def _prefect_defaults() -> None:
    """Settings that make a local, server-less Prefect run robust on a small machine; a user's
    own environment (a remote PREFECT_API_URL, say) still wins."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _validate(args: argparse.Namespace, cfg: Config) -> int:
    _prefect_defaults()
    from components.checks.results import DataValidationError
    from components.checks.summaries import success_line
    from flows.validate import validate

    try:
        report = validate(str(_params(args, cfg)))
    except DataValidationError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(success_line(report))
    return 0


def _check_tracking(cfg: Config) -> None:
    """Fail in one line, before a flow starts, when the MLflow store is damaged or its
    tracking server does not answer or refuses the credentials."""
    from components.tracking import check_store, resolve_store

    check_store(resolve_store(cfg.tracking, cfg.root))


def _train(args: argparse.Namespace, cfg: Config) -> int:
    _check_tracking(cfg)
    _prefect_defaults()
    from flows.train import task_runner, train

    runner = train.with_options(task_runner=task_runner(cfg))
    outcome = runner(str(_params(args, cfg)), args.backbone)
    for name, error in outcome["failures"].items():
        print(f"{name}: FAILED: {error}", file=sys.stderr)
    done = len(outcome["results"])
    what = f"models ({cfg.split.folds} folds)" if cfg.split.folds else "backbones"
    print(
        f"trained {done} of {done + len(outcome['failures'])} {what}; "
        f"MLflow parent run {outcome['parent_run_id']}"
    )
    return 1 if outcome["failures"] else 0


def _evaluate(args: argparse.Namespace, cfg: Config) -> int:
    _check_tracking(cfg)
    _prefect_defaults()
    from flows.evaluate import evaluate

    outcome = evaluate(str(_params(args, cfg)))
    print(
        f"selected {outcome['selected']} on validation; registered as version "
        f"{outcome['version']} ({outcome['alias']}); report: {outcome['report']}"
    )
    return 0


def _study(args: argparse.Namespace, cfg: Config) -> int:
    _check_tracking(cfg)
    _prefect_defaults()
    from components.pipeline.stages import StageFailed
    from flows.study import study

    try:
        outcome = study(str(_params(args, cfg)))
    except StageFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"study done: {len(outcome['stages'])} stages up to date; champion "
        f"{outcome['champion'] or 'none'}, challenger {outcome['challenger'] or 'none'}"
    )
    return 0


def _leakage(args: argparse.Namespace, cfg: Config) -> int:
    from components.evaluation.leakage import run_leakage

    result = run_leakage(cfg, _params(args, cfg), print)
    if result is None:
        print("leakage comparison off (leakage.enabled: false)")
    else:
        print(
            f"{result['backbone']} on the image-level split: validation AUC "
            f"{result['val_auc']:.3f} (patients shared between train and test)"
        )
    return 0


def _predict(args: argparse.Namespace, cfg: Config) -> int:
    """One JSON line per slice (or per series) on stdout; 0 when at least one was predicted,
    1 when every item errored or an answer could not be sent, 2 when the model cannot be
    loaded or the destinations are wrong."""
    import json

    from components.registry.engines import EngineUnavailable
    from components.registry.pyfunc import load_predictor
    from components.relocation import check_not_moved
    from components.tracking import TrackingError, check_store, resolve_store

    send_to = []
    if args.dicom_out or args.stow or args.cstore:
        from components.pacs.send import targets

        ca_bundle = Path(args.ca_bundle) if args.ca_bundle else None
        send_to = targets(args.dicom_out, args.stow, args.cstore, cfg.pull.calling_aet, ca_bundle)
    if send_to and args.per != "series":
        print(
            "myelomet predict: error: --dicom-out, --stow and --cstore answer each series: "
            "add --per series",
            file=sys.stderr,
        )
        return 2
    model = args.model or f"models:/{cfg.evaluation.registered_model}@champion"
    store = resolve_store(cfg.tracking, cfg.root)
    if model.startswith(("models:/", "runs:/")):
        check_store(store)
        check_not_moved(store)
    try:
        predictor = load_predictor(model, store.tracking_uri, args.engine)
    except EngineUnavailable as exc:
        print(f"myelomet predict: error: {model}: {exc}", file=sys.stderr)
        return 2
    except (TrackingError, TypeError) as exc:
        message = exc.message if isinstance(exc, TrackingError) else str(exc)
        print(
            f"myelomet predict: error: cannot load {model} from {store.tracking_uri}: "
            f"{message}; register a model with `myelomet evaluate` or pass --model URI",
            file=sys.stderr,
        )
        return 2
    predictor.max_frame_pixels = cfg.ingest.max_frame_pixels
    if send_to and predictor.engine != "keras":
        print(
            "myelomet predict: error: --dicom-out, --stow and --cstore draw a Grad-CAM of each "
            "series, which needs the models on Keras: use --engine keras",
            file=sys.stderr,
        )
        return 2
    if send_to:
        results = predictor.series_with_slices(args.paths)
        rows: Iterable[dict] = [row for row, _ in results]
    elif args.per == "series":
        rows = predictor.predict_series(args.paths)
    else:
        rows = predictor.iter_predictions(args.paths)
    n_rows = n_errors = 0
    for row in rows:
        print(json.dumps(row), flush=True)
        n_rows += 1
        n_errors += "error" in row
    if n_errors == n_rows:
        return 1
    if send_to:
        from components.pacs.answers import model_identity
        from components.pacs.send import deliver

        delivery = deliver(
            results, predictor, model_identity(model, store), send_to, cfg.pull.timeout_s
        )
        return _delivered(delivery, send_to)
    return 0


def _delivered(delivery: Delivery, send_to: Sequence[Target]) -> int:
    """Print one line per answer not delivered and a summary on stderr; 1 when any was not
    delivered, else 0."""
    for line in delivery.failures:
        print(f"myelomet predict: {line}", file=sys.stderr)
    where = ", ".join(str(t) for t in send_to)
    print(
        f"answered {delivery.answered} series as DICOM (an SR and a Grad-CAM Secondary Capture "
        f"each) to {where}; {len(delivery.failures)} not delivered",
        file=sys.stderr,
    )
    return 1 if delivery.failures else 0


def _doctor(args: argparse.Namespace, cfg: Config) -> int:
    from components.relocation import check_not_moved, relocate
    from components.tracking import check_store, resolve_store
    from components.tracking_server import is_server

    store = resolve_store(cfg.tracking, cfg.root)
    check_store(store, thorough=True)
    if is_server(store.tracking_uri):
        print(
            f"MLflow server {store.tracking_uri}: answers and takes the credentials; it keeps "
            "the artifacts itself (mlflow-artifacts:/), so there is nothing to relocate"
        )
        return 0
    if args.relocate:
        moved = relocate(store)
        if moved is not None:
            print(
                f"relocated the MLflow store: {moved.rows} stored locations {moved.old} -> "
                f"{moved.new}; the database before is in {moved.backup}"
            )
    check_not_moved(store)
    print(
        f"MLflow store {store.tracking_uri}: artifacts in {store.artifact_location}; "
        "database integrity checked (ok)"
    )
    return 0


def _fetch_weights(args: argparse.Namespace, cfg: Config) -> int:
    from components.training.backbones import fetch_weights

    names = args.backbone or list(cfg.training.backbones)
    manifest = fetch_weights(names, Path(args.out))
    print(
        f"ImageNet weights of {len(names)} backbones in {manifest.parent} (checksums: {manifest});"
        f" copy the folder to the offline machine and set training.weights_dir or "
        f"{cfg.training.weights_dir_env} to it"
    )
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="myelomet",
        description="Multiple myeloma vs osteolytic bone metastasis on spinal CT.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: ./params.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synthesize", help="write the synthetic demo cohort as CT DICOM files")
    p.add_argument("--out", help="output root (default: params synthetic.out)")
    p.set_defaults(run=_synthesize)

    p = sub.add_parser("ingest", help="DICOM folders -> de-identified HU slices, manifest, rejects")
    p.add_argument(
        "--dicom-root", help="raw root <CLASS>/<patient>/** (default: params data.dicom_root)"
    )
    p.add_argument("--out", help="output folder (default: params ingest.out)")
    p.add_argument("--labels-csv", help="CSV patient_id,label keyed by DICOM PatientID")
    p.set_defaults(run=_ingest)

    p = sub.add_parser("pull", help="fetch a labelled cohort from a PACS, de-identified")
    p.add_argument(
        "--source",
        required=True,
        help="http(s)://HOST:PORT/dicom-web or dimse://AET@HOST:PORT; credentials from "
        "MYELOMET_PACS_USER/MYELOMET_PACS_PASSWORD or netrc, never here",
    )
    p.add_argument("--cohort", required=True, help="CSV accession_number,label or patient_id,label")
    p.add_argument("--out", required=True, help="raw root to fill, e.g. data/raw/<name>")
    p.add_argument("--ca-bundle", help="CA certificates to trust for an https source")
    p.set_defaults(run=_pull)

    p = sub.add_parser("split", help="patient-level stratified train/val/test split")
    p.add_argument("--mode", choices=["patient", "image"], help="default: params split.mode")
    p.set_defaults(run=_split)

    p = sub.add_parser("validate", help="Great Expectations checks of manifest, pixels and split")
    p.set_defaults(run=_validate)

    p = sub.add_parser("train", help="fine-tune the backbones, one process each (Prefect flow)")
    p.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    p.set_defaults(run=_train)

    p = sub.add_parser("leakage", help="train one backbone on the paper's image-level split")
    p.set_defaults(run=_leakage)

    p = sub.add_parser("evaluate", help="metrics with CIs, register and promote, study report")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser(
        "study",
        help="the whole pipeline, one Prefect task per dvc.yaml stage (what prefect.yaml deploys)",
    )
    p.set_defaults(run=_study)

    p = sub.add_parser("predict", help="p_mm of every CT slice of DICOM files or folders (JSON)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders")
    p.add_argument("--model", help="model URI (default: models:/<registered_model>@champion)")
    p.add_argument(
        "--per",
        choices=["slice", "series"],
        default="slice",
        help="one line per slice (default) or per series: the mean slice probability "
        "against the patient threshold chosen on validation",
    )
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="with --per series: write each series' answer (an SR and a Grad-CAM Secondary "
        "Capture, in the original study, with the patient's identity) into DIR",
    )
    p.add_argument(
        "--stow",
        metavar="URL",
        help="with --per series: store the answers by STOW-RS into this DICOMweb root "
        "(credentials from MYELOMET_PACS_USER/MYELOMET_PACS_PASSWORD or netrc)",
    )
    p.add_argument(
        "--cstore",
        metavar="AET@HOST:PORT",
        help="with --per series: store the answers by C-STORE into this DICOM peer",
    )
    p.add_argument("--ca-bundle", help="CA certificates to trust for an https --stow URL")
    p.add_argument(
        "--engine",
        choices=["keras", "onnx"],
        help="run the models on Keras (the default where it is installed) or on onnxruntime "
        "from the version's ONNX files (no TensorFlow or JAX; default of a serve install); "
        "default: MYELOMET_ENGINE, else as said",
    )
    p.set_defaults(run=_predict)

    p = sub.add_parser("doctor", help="check the project's MLflow store after a move or copy")
    p.add_argument(
        "--relocate",
        action="store_true",
        help="rewrite the store's artifact locations to this folder (backs the database up)",
    )
    p.set_defaults(run=_doctor)

    p = sub.add_parser(
        "fetch-weights", help="download ImageNet weights on a connected machine for offline use"
    )
    p.add_argument("--out", required=True, help="folder to fill (with a checksum manifest)")
    p.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    p.set_defaults(run=_fetch_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `myelomet` console script."""
    args = _build_parser().parse_args(argv)
    try:
        cfg = load_config(args.params)
        return args.run(args, cfg)
    except (OSError, ValueError) as exc:
        print(f"myelomet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"myelomet {args.command}: error: {_missing_package(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        database = _database_error(exc)
        if database is None:
            raise
        print(
            f"myelomet {args.command}: error: the MLflow database failed "
            f"({type(database).__name__}: {' '.join(str(database).split())}); when another "
            "process (a training, `mlflow ui`) holds it, run the command again once it is done, "
            "else run `myelomet doctor` to check it",
            file=sys.stderr,
        )
        return 2


def _missing_package(exc: ImportError) -> str:
    """What to do about a package that cannot be imported, in one line."""
    name = exc.name or "a package"
    if name.partition(".")[0] in ("torch", "jax", "tensorflow"):
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        return (
            f"KERAS_BACKEND={backend} needs {name}, which is not installed here; set "
            "KERAS_BACKEND to tensorflow or jax, the backends myelomet installs"
        )
    return f"cannot import {name}; install the project's dependencies again (`make install`)"


def _database_error(exc: BaseException) -> sqlite3.Error | None:
    """The sqlite error behind `exc` (SQLAlchemy keeps it as `orig`, MLflow as the cause)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, sqlite3.Error):
            return seen
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
