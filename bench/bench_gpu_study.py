"""The study's own training on one GPU: the seven backbones one after another, then packed
onto the card, with a cold and then a warm compilation cache.

Every backbone is trained by `python -m components.training.worker` (what `myelomet train` starts
in each backbone's process: `train_backbone`, MLflow tracking included) through the same
launcher and device pool as the train flow, on synthetic CT-like slices at each backbone's
native size (224 px, Xception 299) from random initialisation (no ImageNet weights offline).
Three passes, each into fresh model folders:

1. `sequential`: one process at a time on the whole card, compile cache empty (cold);
2. `packed`: every backbone at once on the card, each process capped at its share of the
   memory (training.processes_per_gpu), cache as the first pass left it (warm);
3. `packed-cold`: packed again with the cache emptied first, so packing and caching are
   measured apart.

Per backbone it reads what the run recorded (training images/s from metrics.json, the
first epoch's seconds, which hold the compilation, and the process's wall time), and from
those it extrapolates the paper preset: `--paper-epochs` (100) epochs over
`--paper-images` (2667) training images, compile included, packed vs one after another,
against the goal of 10 minutes of wall time on one card. One JSON (`--out`) and a table.

    KERAS_BACKEND=jax python bench/bench_gpu_study.py [--epochs 3] [--images 480]
        [--backbones NAME ...] [--out gpu_study.json]

Tiny CPU mode, as CI runs it: `python bench/bench_gpu_study.py --tiny --out FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_S = 600.0
PASSES = ("sequential", "packed", "packed-cold")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from components.config import BACKBONES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--epochs", type=int, default=3, help="epochs per backbone and pass")
    parser.add_argument("--images", type=int, default=480, help="synthetic slices in all")
    parser.add_argument("--size", type=int, help="input size (default: native per backbone)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--per-gpu", default="auto", help="processes per GPU when packed")
    parser.add_argument("--paper-epochs", type=int, default=100)
    parser.add_argument("--paper-images", type=int, default=2667)
    parser.add_argument("--tiny", action="store_true", help="CPU check: one small backbone")
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: temp)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.backbones, args.epochs, args.images, args.size = ["MobileNet"], 2, 40, 32
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
    (folder / "slices").mkdir(parents=True)
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
    (root / "data" / "splits").mkdir(parents=True)
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
    }
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"training": training}))
    return params


def _train_all(
    params: Path, names: list[str], out: Path, pool: Any, parallel: int
) -> dict[str, dict[str, Any]]:
    """Each backbone in its own process through the launcher, `parallel` at a time."""
    import pandas as pd

    from components import tracking
    from components.config import load_config
    from components.training.launcher import run_backbone_process

    cfg = load_config(params)
    store = tracking.resolve_store(cfg.tracking, cfg.root)
    parent = tracking.start_study(store, run_name=f"bench {out.name}", root=cfg.root)

    def one(name: str) -> dict[str, Any]:
        start = time.perf_counter()
        with pool.lease() as env:
            result = run_backbone_process(name, params, out / name, parent, env, lambda line: None)
        wall = time.perf_counter() - start
        metrics = json.loads((out / name / "metrics.json").read_text())
        seconds = pd.read_csv(out / name / "history.csv")["seconds"].tolist()
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
        }

    with ThreadPoolExecutor(max_workers=parallel) as threads:
        done = dict(zip(names, threads.map(one, names), strict=True))
    tracking.end_study(store, parent, "FINISHED")
    return done


def _paper_estimate(row: dict[str, Any], args: argparse.Namespace) -> float:
    """Seconds for the paper preset: the measured first epoch (compilation) plus every
    later epoch at the measured rate, validation scaled with the training images."""
    later = row["later_epoch_s"] or row["first_epoch_s"]
    per_image = later / max(1, row["n_train"])
    return row["first_epoch_s"] + (args.paper_epochs - 1) * per_image * args.paper_images


def _report(passes: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    sequential, packed = passes["sequential"]["backbones"], passes["packed"]["backbones"]
    estimate_sequential = sum(_paper_estimate(r, args) for r in sequential.values())
    estimate_packed = max(_paper_estimate(r, args) for r in packed.values())
    return {
        "machine": platform.node(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "passes": passes,
        "paper_preset": {
            "epochs": args.paper_epochs,
            "train_images": args.paper_images,
            "one_after_another_s": round(estimate_sequential),
            "packed_s": round(estimate_packed),
            "goal_s": GOAL_S,
            "packed_over_goal": round(estimate_packed / GOAL_S, 2),
        },
    }


def _table(report: dict[str, Any]) -> str:
    passes = report["passes"]
    lines = [
        f"{'backbone':15s} {'px':>4s} "
        + " ".join(f"{p + ' wall s':>18s} {'1st ep s':>8s} {'img/s':>7s}" for p in PASSES)
    ]
    for name in passes["sequential"]["backbones"]:
        cells = []
        for p in PASSES:
            r = passes[p]["backbones"][name]
            cells.append(
                f"{r['wall_s']:18.1f} {r['first_epoch_s']:8.1f} {r['train_images_per_s']:7.1f}"
            )
        size = passes["sequential"]["backbones"][name]["image_size"]
        lines.append(f"{name:15s} {size:4d} " + " ".join(cells))
    lines.append("all: " + ", ".join(f"{p} {passes[p]['wall_s']:.0f} s" for p in PASSES))
    paper = report["paper_preset"]
    lines.append(
        f"paper preset ({paper['epochs']} epochs x {paper['train_images']} images), "
        f"extrapolated: one after another {paper['one_after_another_s']} s, packed "
        f"{paper['packed_s']} s = {paper['packed_over_goal']}x the {paper['goal_s']:.0f} s goal"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from components.config import load_config
    from components.training.devices import (
        DevicePool,
        gpu_memory_mb,
        processes_per_gpu,
        usable_cpus,
        visible_gpus,
    )

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-study-"))
    params = _write_project(workdir, args)
    cache = load_config(params).path(load_config(params).training.compile_cache)
    gpus, memory = visible_gpus()[:1], gpu_memory_mb()
    names = list(args.backbones)
    per_gpu = processes_per_gpu(args.per_gpu, memory.get(gpus[0]) if gpus else None, len(names))
    cpus = usable_cpus()
    whole = DevicePool.for_machine(gpus, 1, cpus)
    shared = DevicePool.for_machine(
        gpus, len(names), cpus, per_gpu=per_gpu if gpus else 1, memory_mb=memory
    )
    parallel = per_gpu if gpus else len(names)
    passes: dict[str, dict[str, Any]] = {}
    for name, pool, width, cold in (
        ("sequential", whole, 1, True),
        ("packed", shared, parallel, False),
        ("packed-cold", shared, parallel, True),
    ):
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        start = time.perf_counter()
        rows = _train_all(params, names, workdir / "models" / name, pool, width)
        passes[name] = {
            "wall_s": round(time.perf_counter() - start, 1),
            "processes_at_once": width,
            "cache": "cold" if cold else "warm",
            "backbones": rows,
        }
        print(f"{name}: {passes[name]['wall_s']} s", flush=True)
    report = _report(passes, args)
    report["gpus"] = gpus
    print(_table(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
