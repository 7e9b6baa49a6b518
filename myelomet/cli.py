"""The `myelomet` command line: a thin layer that parses arguments, loads params.yaml
once and calls one component per command. Heavy imports happen inside each command so
that `myelomet --help` stays fast."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from components.config import Config, load_config

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
    synthetic = cfg.path(cfg.synthetic.out)
    key = study_key(root, synthetic, cfg.ingest.key_env, cfg.path(cfg.ingest.key_file))
    summary = ingest(
        root,
        out,
        cfg.classes,
        key,
        labels_csv=cfg.path(labels) if labels else None,
        max_frame_pixels=cfg.ingest.max_frame_pixels,
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
        f"{summary.n_rejects} files rejected (see {out / 'rejects.csv'}); "
        f"{summary.redacted} retained tag values redacted"
    )
    return 0


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


def _train(args: argparse.Namespace, cfg: Config) -> int:
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
    _prefect_defaults()
    from flows.evaluate import evaluate

    outcome = evaluate(str(_params(args, cfg)))
    print(
        f"selected {outcome['selected']} on validation; registered as version "
        f"{outcome['version']} ({outcome['alias']}); report: {outcome['report']}"
    )
    return 0


def _study(args: argparse.Namespace, cfg: Config) -> int:
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
    1 when every item errored, 2 when the model cannot be loaded."""
    import json

    from mlflow.exceptions import MlflowException

    from components.registry.pyfunc import load_predictor
    from components.registry.relocation import check_not_moved
    from components.tracking import resolve_store

    model = args.model or f"models:/{cfg.evaluation.registered_model}@champion"
    store = resolve_store(cfg.tracking, cfg.root)
    if model.startswith(("models:/", "runs:/")):
        check_not_moved(store)
    try:
        predictor = load_predictor(model, store.tracking_uri)
    except (MlflowException, TypeError) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        print(
            f"myelomet predict: error: cannot load {model} from {store.tracking_uri}: "
            f"{message}; register a model with `myelomet evaluate` or pass --model URI",
            file=sys.stderr,
        )
        return 2
    if args.per == "series":
        rows: Iterable[dict] = predictor.predict_series(args.paths)
    else:
        rows = predictor.iter_predictions(args.paths)
    n_rows = n_errors = 0
    for row in rows:
        print(json.dumps(row), flush=True)
        n_rows += 1
        n_errors += "error" in row
    return 1 if n_errors == n_rows else 0


def _doctor(args: argparse.Namespace, cfg: Config) -> int:
    from components.registry.relocation import check_not_moved, relocate
    from components.tracking import resolve_store

    store = resolve_store(cfg.tracking, cfg.root)
    if args.relocate:
        moved = relocate(store)
        if moved is not None:
            print(
                f"relocated the MLflow store: {moved.rows} stored locations {moved.old} -> "
                f"{moved.new}; the database before is in {moved.backup}"
            )
    check_not_moved(store)
    print(f"MLflow store {store.tracking_uri}: artifacts in {store.artifact_location} (ok)")
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


if __name__ == "__main__":
    sys.exit(main())
