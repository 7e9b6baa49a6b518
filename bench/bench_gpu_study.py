"""The study's own training on one GPU: the seven backbones one after another, packed onto
the card, and packed again with a cold compilation cache, pass by pass, within a time budget.

Every backbone is trained by `python -m components.training.worker` (what `myelomet train` starts
in each backbone's process: `train_backbone`, MLflow tracking included) through the same
launcher and device pool as the train flow, on synthetic CT-like slices at each backbone's
native size (224 px, Xception 299) from random initialisation (no ImageNet weights offline).
The passes (`--passes`, any of them in the order given; default all three), each into fresh
model folders:

- `sequential`: one process at a time on the whole card, fastest backbone first, compile
  cache emptied first (cold);
- `packed`: every backbone at once on the card, slowest first, each process capped at its
  share of the memory (training.processes_per_gpu), cache as earlier passes (or an earlier
  call, `--cache`) left it: warm if it holds compiled programs;
- `packed-cold`: packed with the cache emptied first, so packing and caching are measured
  apart (the realistic first night).

Before training, checks of one line each (`preflight` in the JSON), made in a probe process
with a training process's environment: the training backend starts and sees the GPU that
nvidia-smi (or CUDA_VISIBLE_DEVICES) names, else the bench stops there (exit 2, nothing
trained); it computes in mixed precision on it (bfloat16 on JAX), else a warning; and how
the packed passes share the card (a warning when they run in waves). A backbone whose
process fails keeps its exit code, error and the last lines it wrote (stdout and stderr) in
the JSON; the others go on, and the bench exits 1.

Per backbone it reads what the run recorded (training images/s from metrics.json, the first
epoch's seconds, which hold the compilation, and the process's wall time), and from those it
extrapolates the paper preset: `--paper-epochs` (100) epochs over `--paper-images` (2667)
training images, compile included, for each pass that ran (sequential: one after another;
packed: the slowest packed backbone), against the goal of 10 minutes of wall time on one card.

The JSON (`--out`) is rewritten (atomically) after every backbone and every pass, so a run
stopped by a time limit keeps what finished. `--budget-s` counts from the bench's start: a
backbone is not started when the seconds spent plus what it is expected to take (its time in
an earlier pass, else the longest backbone so far) would pass it; the JSON lists it as
skipped, with the reason.

    KERAS_BACKEND=jax python bench/bench_gpu_study.py [--passes sequential packed packed-cold]
        [--epochs 3] [--images 480] [--backbones NAME ...] [--budget-s S] [--cache DIR]
        [--out gpu_study.json]

On the device: `bash .gpu/run.sh ARGS`, staged by ../shared/tools/gpu-stage.sh (README: "The GPU
study in one device call").
Tiny CPU mode, as the tests run it: `python bench/bench_gpu_study.py --tiny --out FILE`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_S = 600.0
# each pass: (every backbone at once on the card, compile cache emptied first)
PASSES = {"sequential": (False, True), "packed": (True, False), "packed-cold": (True, True)}
# the paper-preset estimate each pass gives, and how its backbones' estimates add up
ESTIMATES = (
    ("sequential", "one_after_another_s", sum),
    ("packed", "packed_s", max),
    ("packed-cold", "packed_cold_s", max),
)
# lines of a failed backbone's output kept in the JSON
TAIL_LINES = 40
# mixed precision the runtime chooses on a GPU ("auto"), per backend
GPU_PRECISION = {"jax": "bfloat16", "tensorflow": "float16"}
# run in a fresh process with a training process's environment: what the backend sees
PROBE = """
import json, sys
import keras
from components.training.runtime import configure_runtime
rt = configure_runtime(sys.argv[1], "auto", None, None)
info = {"backend": rt.backend, "gpus": rt.gpus, "precision": rt.precision,
        "policy": keras.config.dtype_policy().name}
if rt.backend == "jax":
    import jax
    info["devices"] = sorted({f"{d.platform} {d.device_kind}" for d in jax.devices()})
print("PROBE " + json.dumps(info))
"""
PROBE_TIMEOUT_S = 300


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from components.config import BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--passes", nargs="+", choices=list(PASSES), default=list(PASSES),
        help="the passes to run, in this order (default: all three)",
    )  # fmt: skip
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, help="default: all seven")
    parser.add_argument("--epochs", type=int, help="epochs per backbone and pass (3)")
    parser.add_argument("--images", type=int, help="synthetic slices in all (480)")
    parser.add_argument("--size", type=int, help="input size (default: native per backbone)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--per-gpu", default="auto", help="processes per GPU when packed")
    parser.add_argument(
        "--budget-s", type=float,
        help="seconds from the start: start no backbone expected to end past them",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path,
        help="compile cache folder, kept afterwards (default: in the work folder)",
    )  # fmt: skip
    parser.add_argument("--paper-epochs", type=int, default=100)
    parser.add_argument("--paper-images", type=int, default=2667)
    parser.add_argument("--tiny", action="store_true", help="CPU check: one small backbone")
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: temp)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    args.passes = list(dict.fromkeys(args.passes))
    tiny = {"backbones": ["MobileNet"], "epochs": 2, "images": 40, "size": 32}
    full = {"backbones": list(BACKBONES), "epochs": 3, "images": 480, "size": None}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _write_project(root: Path, args: argparse.Namespace) -> Path:
    """Synthetic HU slices (a bright disk for MM, a dark hole for OMBT on noisy soft
    tissue), a manifest, a patient split and params.yaml; returns params.yaml."""
    import pandas as pd
    import yaml

    rng = np.random.default_rng(0)
    side = 256
    yy, xx = np.mgrid[:side, :side]
    folder = root / "data" / "processed"
    (folder / "slices").mkdir(parents=True, exist_ok=True)
    rows, split = [], []
    per_patient = 4
    for i in range(args.images):
        label = ("MM", "OMBT")[i % 2]
        patient = f"{label.lower()}{i // (2 * per_patient):03d}"
        hu = rng.normal(40, 30, (side, side))
        cy, cx = rng.uniform(0.3 * side, 0.7 * side, 2)
        hu[(yy - cy) ** 2 + (xx - cx) ** 2 < (rng.uniform(0.05, 0.1) * side) ** 2] = (
            1200 if label == "MM" else -800
        )
        image_id = f"im{i:05d}"
        np.save(folder / "slices" / f"{image_id}.npy", hu.astype(np.int16))
        rows.append((image_id, patient, label, f"slices/{image_id}.npy", hu.min(), hu.max()))
        part = ("train", "train", "train", "val", "test")[(i // (2 * per_patient)) % 5]
        split.append((image_id, patient, label, part))
    columns = ["image_id", "patient", "label", "file", "hu_min", "hu_max"]
    pd.DataFrame(rows, columns=columns).to_csv(folder / "manifest.csv", index=False)
    (root / "data" / "splits").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(split, columns=["image_id", "patient", "label", "split"]).to_csv(
        root / "data" / "splits" / "split.csv", index=False
    )
    training = {
        "image_size": args.size,
        "batch_size": args.batch,
        "epochs": args.epochs,
        "patience": args.epochs,
        "weights": "none",
        "backbones": args.backbones,
        "processes_per_gpu": args.per_gpu if args.per_gpu == "auto" else int(args.per_gpu),
        "compile_cache": str(args.cache.resolve()) if args.cache else ".cache/compile",
    }
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"training": training}))
    return params


def expected_s(name: str, cold: bool, passes: dict[str, dict[str, Any]]) -> float:
    """Seconds backbone `name` is expected to take in a pass with a cold (or warm) cache:
    its longest time in earlier passes with the same cache, else in any earlier pass, else
    the longest of any backbone so far; 0 while nothing has been measured."""
    timed = [
        (backbone, run["cache"] == ("cold" if cold else "warm"), row["wall_s"])
        for run in passes.values()
        for backbone, row in run["backbones"].items()
        if "wall_s" in row
    ]
    mine = [(same, wall) for backbone, same, wall in timed if backbone == name]
    for walls in ([w for same, w in mine if same], [w for _, w in mine], [w for *_, w in timed]):
        if walls:
            return max(walls)
    return 0.0


def over_budget(budget_s: float | None, spent_s: float, expected: float) -> str | None:
    """Why work expected to take `expected` seconds must not start now, or None."""
    if budget_s is None or spent_s + expected <= budget_s:
        return None
    return f"not started: {spent_s:.0f} s spent + {expected:.0f} s expected > {budget_s:g} s budget"


def _check(name: str, status: str, message: str) -> dict[str, str]:
    return {"check": name, "status": status, "message": message}


def _gpu_check(gpus: list[str], memory: dict[str, int], probe: dict[str, Any]) -> dict[str, str]:
    """The GPU that nvidia-smi (or CUDA_VISIBLE_DEVICES) names against the ones the backend
    sees: an error when it sees none of them."""
    backend, seen = probe["backend"], probe["gpus"]
    devices = ", ".join(probe.get("devices", [])) or f"{seen} GPU"
    listed = ", ".join(f"GPU {g} ({memory[g]} MiB)" if g in memory else f"GPU {g}" for g in gpus)
    if gpus and not seen:
        hint = "install its CUDA build (jax[cuda12]) or fix the driver; nothing trained"
        return _check(
            "gpu", "error", f"{listed} listed but {backend} sees no GPU ({devices}): {hint}"
        )
    if gpus:
        return _check("gpu", "ok", f"{listed}; {backend} sees {devices}")
    if seen:
        message = f"nvidia-smi lists no GPU but {backend} sees {devices}: memory shares unknown"
        return _check("gpu", "warning", message)
    return _check("gpu", "ok", f"no GPU: {backend} trains on the CPU")


def _precision_check(probe: dict[str, Any], mixed_precision: str) -> dict[str, str]:
    """On a GPU, the mixed precision the runtime should choose (bfloat16 on JAX)."""
    backend, precision = probe["backend"], probe["precision"]
    if not probe["gpus"]:
        return _check("precision", "ok", f"{precision} on the CPU (mixed precision is for GPUs)")
    if precision != GPU_PRECISION[backend]:
        message = (
            f"{GPU_PRECISION[backend]} not used: {backend} computes in {precision} on the GPU "
            f"(training.mixed_precision: {mixed_precision}); the figures are {precision}'s"
        )
        return _check("precision", "warning", message)
    return _check("precision", "ok", f"policy {probe['policy']}")


def packing_check(
    gpus: list[str], card_mb: int | None, per_gpu: int, backbones: int, cpus: int
) -> dict[str, str]:
    """How the packed passes share the machine: a warning when they cannot start every
    backbone at once (they then run in waves)."""
    from components.training.devices import MEMORY_SHARE

    if not gpus:
        return _check("packing", "ok", f"backbones: {backbones} at once on {cpus} CPU cores")
    share = f", each capped at {MEMORY_SHARE / per_gpu:.1%} of {card_mb} MiB" if per_gpu > 1 else ""
    at_once = min(per_gpu, backbones)
    message = f"backbones: {at_once} of {backbones} at once on GPU {gpus[0]}{share}"
    if at_once < backbones:
        waves = -(-backbones // at_once)
        return _check("packing", "warning", f"{message}: the packed passes run in {waves} waves")
    return _check("packing", "ok", message)


def preflight(
    gpus: list[str],
    memory: dict[str, int],
    probe: dict[str, Any] | None,
    probe_error: str,
    packing: dict[str, str],
    mixed_precision: str,
) -> list[dict[str, str]]:
    """The checks made before training, each {check, status (ok, warning, error), message};
    an error means that training would measure nothing worth the device time."""
    if probe is None:
        message = f"the training backend did not start in a probe process: {probe_error}"
        first = [_check("backend", "error", message)]
    else:
        first = [_gpu_check(gpus, memory, probe), _precision_check(probe, mixed_precision)]
    return [*first, packing]


def _probe(env: dict[str, str], mixed_precision: str) -> tuple[dict[str, Any] | None, str]:
    """What the training backend sees in a fresh process with `env` (taking no GPU memory):
    the probe's findings, or None and the end of its output."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, mixed_precision],
            cwd=ROOT, env={**os.environ, **env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"no answer in {PROBE_TIMEOUT_S} s"
    for line in done.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line.removeprefix("PROBE ")), ""
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return None, f"exit {done.returncode}: " + " | ".join(tail)


def _entries(folder: Path) -> int:
    """How many files a compile cache holds."""
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


class Record:
    """The report as it grows, written atomically to `out` after every change (thread-safe)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.RLock()
        self.started = time.perf_counter()
        self.gpus: list[str] = []
        self.checks: list[dict[str, str]] = []
        self.passes: dict[str, dict[str, Any]] = {}

    def spent_s(self) -> float:
        """Seconds since the bench started."""
        return time.perf_counter() - self.started

    def report(self) -> dict[str, Any]:
        """The JSON report of what has run so far."""
        with self.lock:
            skipped = [
                f"{name}/{backbone}: {row['reason']}"
                for name, run in self.passes.items()
                for backbone, row in run["backbones"].items()
                if row["status"] == "skipped"
            ]
            args = vars(self.args).items()
            return copy.deepcopy(
                {
                    "machine": platform.node(),
                    "gpus": self.gpus,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in args},
                    "elapsed_s": round(self.spent_s(), 1),
                    "preflight": self.checks,
                    "passes": self.passes,
                    "skipped": skipped,
                    "paper_preset": paper_preset(self.passes, self.args),
                }
            )

    def save(self) -> None:
        """Replace the JSON file with the report (never a half-written file)."""
        from components import atomic

        out = self.args.out
        if out is None:
            return
        with self.lock:
            atomic.write_text(out, json.dumps(self.report(), indent=2))


def _trained_row(out: Path, result: dict[str, Any], wall: float) -> dict[str, Any]:
    import pandas as pd

    metrics = json.loads((out / "metrics.json").read_text())
    seconds = pd.read_csv(out / "history.csv")["seconds"].tolist()
    return {
        "status": result["status"],
        "image_size": result["image_size"],
        "wall_s": round(wall, 1),
        "first_epoch_s": round(seconds[0], 1),
        "later_epoch_s": round(float(np.median(seconds[1:])), 2) if seconds[1:] else None,
        "train_images_per_s": round(metrics["train_images_per_s"], 1),
        "n_train": metrics["n_train"],
        "n_val": metrics["n_val"],
        "backend": metrics["keras_backend"],
        "precision": metrics["precision"],
        # where the process's time went (setup, inputs, train, predict, total); the rest of
        # wall_s is the process's start (imports) and its MLflow logging
        "timings_s": {k: round(v, 1) for k, v in metrics["timings"].items()},
    }


def _train_one(
    pass_name: str, backbone: str, params: Path, out: Path, parent: str, env: dict[str, str]
) -> dict[str, Any]:
    """Train one backbone in its own process: what it measured, or how it failed (exit code,
    error, the last lines it wrote)."""
    from components.training.launcher import (
        BackboneFailed,
        describe_progress,
        run_backbone_process,
    )

    tail: deque[str] = deque(maxlen=TAIL_LINES)
    began = time.perf_counter()
    try:
        result = run_backbone_process(
            backbone, params, out, parent, env, tail.append,
            on_progress=lambda p: print(f"{pass_name} {describe_progress(p)}", flush=True),
        )  # fmt: skip
    except BackboneFailed as exc:
        return {
            "status": "failed",
            "wall_s": round(time.perf_counter() - began, 1),
            "exit_code": exc.exit_code,
            "error": exc.detail,
            "output_tail": list(tail),
        }
    return _trained_row(out, result, time.perf_counter() - began)


def _run_pass(
    record: Record, name: str, params: Path, names: list[str], pool: Any, width: int
) -> None:
    """One pass: each backbone in its own process through the launcher, `width` at a time
    (sequential: fastest first; packed: slowest first), none started past the budget; the
    record is saved after each backbone."""
    from components import tracking
    from components.config import load_config

    cfg = load_config(params)
    packed, cold = PASSES[name]
    cache = cfg.path(cfg.training.compile_cache)
    if cold:
        shutil.rmtree(cache, ignore_errors=True)
    models = cfg.root / "models" / name
    shutil.rmtree(models, ignore_errors=True)
    entries = _entries(cache)
    run: dict[str, Any] = {
        "status": "running",
        "wall_s": 0.0,
        "processes_at_once": width,
        "cache": "warm" if entries else "cold",
        "cache_entries_at_start": entries,
        "backbones": {},
    }
    with record.lock:
        record.passes[name] = run
    record.save()
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    study: list[str] = []  # the pass's MLflow parent run, opened when a backbone starts
    study_lock = threading.Lock()
    start = time.perf_counter()

    def parent() -> str:
        with study_lock:
            if not study:
                study.append(tracking.start_study(store, run_name=f"bench {name}", root=cfg.root))
            return study[0]

    def one(backbone: str) -> None:
        with pool.lease() as env:
            with record.lock:
                expected = expected_s(backbone, run["cache"] == "cold", record.passes)
                reason = over_budget(record.args.budget_s, record.spent_s(), expected)
            if reason is None:
                row = _train_one(name, backbone, params, models / backbone, parent(), env)
            else:
                row = {"status": "skipped", "reason": reason}
        with record.lock:
            run["backbones"][backbone] = row
            run["wall_s"] = round(time.perf_counter() - start, 1)
        record.save()
        print(f"{name} {backbone}: {_describe(row)}", flush=True)

    with ThreadPoolExecutor(max_workers=width) as threads:
        list(threads.map(one, names if packed else names[::-1]))
    statuses = {row["status"] for row in run["backbones"].values()}
    if study:
        tracking.end_study(store, study[0], "FAILED" if "failed" in statuses else "FINISHED")
    with record.lock:
        run["status"] = "skipped" if statuses == {"skipped"} else "finished"
        run["wall_s"] = round(time.perf_counter() - start, 1)
        run["cache_entries_at_end"] = _entries(cache)
    record.save()


def _describe(row: dict[str, Any]) -> str:
    if row["status"] == "skipped":
        return row["reason"]
    if row["status"] == "failed":
        last = row["output_tail"][-1] if row["output_tail"] else "no output"
        return f"FAILED (exit {row['exit_code']}) after {row['wall_s']} s: {last}"
    return (
        f"{row['status']} in {row['wall_s']} s, first epoch {row['first_epoch_s']} s, "
        f"{row['train_images_per_s']} img/s, {row['backend']} {row['precision']}"
    )


def _paper_estimate(row: dict[str, Any], args: argparse.Namespace) -> float:
    """Seconds for the paper preset: the measured first epoch (compilation) plus every
    later epoch at the measured rate, validation scaled with the training images."""
    later = row["later_epoch_s"] or row["first_epoch_s"]
    per_image = later / max(1, row["n_train"])
    return row["first_epoch_s"] + (args.paper_epochs - 1) * per_image * args.paper_images


def paper_preset(passes: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The paper preset extrapolated from each pass that trained something: one after another
    from `sequential`, the slowest backbone from a packed pass, and which backbones each
    estimate covers (fewer than asked for: a lower bound)."""
    preset: dict[str, Any] = {
        "epochs": args.paper_epochs,
        "train_images": args.paper_images,
        "goal_s": GOAL_S,
        "covers": {},
    }
    for name, key, combine in ESTIMATES:
        backbones = passes.get(name, {}).get("backbones", {})
        rows = {b: r for b, r in backbones.items() if "first_epoch_s" in r}
        if not rows:
            continue
        seconds = combine(_paper_estimate(r, args) for r in rows.values())
        preset[key] = round(seconds)
        preset["covers"][key] = [b for b in args.backbones if b in rows]
        if name != "sequential":
            preset[key.removesuffix("_s") + "_over_goal"] = round(seconds / GOAL_S, 2)
    return preset


def table(report: dict[str, Any]) -> str:
    """The passes side by side, one backbone a line, and the paper preset's estimates."""
    passes, names = report["passes"], report["args"]["backbones"]
    width = 35
    lines = [
        f"{'backbone':15s} {'px':>4s} "
        + " ".join(f"{p + ' wall s':>18s} {'1st ep s':>8s} {'img/s':>7s}" for p in passes)
    ]
    for name in names:
        rows = [run["backbones"].get(name, {"status": "not reached"}) for run in passes.values()]
        sizes = [r["image_size"] for r in rows if "image_size" in r]
        cells = [
            f"{r['wall_s']:18.1f} {r['first_epoch_s']:8.1f} {r['train_images_per_s']:7.1f}"
            if "first_epoch_s" in r
            else f"{r['status']:>{width}s}"
            for r in rows
        ]
        size = f"{sizes[0]:4d}" if sizes else f"{'-':>4s}"
        lines.append(f"{name:15s} {size} " + " ".join(cells))
    lines.append(
        "all: "
        + ", ".join(
            f"{p} {run['wall_s']:.0f} s ({run['cache']} cache, {run['processes_at_once']} at once)"
            for p, run in passes.items()
        )
    )
    lines += [f"skipped {line}" for line in report["skipped"]]
    paper = report["paper_preset"]
    estimates = []
    for _, key, _ in ESTIMATES:
        if key not in paper:
            continue
        label = key.removesuffix("_s").replace("_", " ")
        text = f"{label} {paper[key]} s"
        if key != "one_after_another_s":
            text += f" = {paper[key.removesuffix('_s') + '_over_goal']}x the {GOAL_S:.0f} s goal"
        if len(paper["covers"][key]) < len(names):
            text += f" ({len(paper['covers'][key])} of {len(names)} backbones)"
        estimates.append(text)
    lines.append(
        f"paper preset ({paper['epochs']} epochs x {paper['train_images']} images), "
        f"extrapolated: {', '.join(estimates) or 'nothing trained'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the passes; 0 when every backbone started trained, 1 when one failed, 2 when a
    check before training failed (nothing trained)."""
    args = _parse(argv)
    record = Record(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from components.config import load_config, slowest_first
    from components.training.devices import (
        DevicePool,
        gpu_memory_mb,
        processes_per_gpu,
        usable_cpus,
        visible_gpus,
    )

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-study-"))
    try:
        params = _write_project(workdir, args)
        cfg = load_config(params)
        gpus, memory = visible_gpus()[:1], gpu_memory_mb()
        names = slowest_first(args.backbones)
        card = memory.get(gpus[0]) if gpus else None
        per_gpu = processes_per_gpu(args.per_gpu, card, len(names))
        cpus = usable_cpus()
        whole = DevicePool.for_machine(gpus, 1, cpus)
        shared = DevicePool.for_machine(
            gpus, len(names), cpus, per_gpu=per_gpu if gpus else 1, memory_mb=memory
        )
        parallel = per_gpu if gpus else len(names)
        packing = packing_check(gpus, card, per_gpu, len(names), len(cpus))
        with whole.lease() as env:
            probe, probe_error = _probe(env, cfg.training.mixed_precision)
        record.gpus = gpus
        record.checks = preflight(
            gpus, memory, probe, probe_error, packing, cfg.training.mixed_precision
        )
        for check in record.checks:
            print(f"preflight {check['check']}: {check['status']}: {check['message']}", flush=True)
        record.save()
        if any(check["status"] == "error" for check in record.checks):
            return 2
        for name in args.passes:
            packed = PASSES[name][0]
            pool, width = (shared, parallel) if packed else (whole, 1)
            _run_pass(record, name, params, names, pool, width)
            print(f"{name}: {record.passes[name]['wall_s']} s", flush=True)
        report = record.report()
        print(table(report))
        failed = any(
            row["status"] == "failed"
            for run in report["passes"].values()
            for row in run["backbones"].values()
        )
        return 1 if failed else 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
