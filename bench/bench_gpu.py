"""Training and inference speed of the seven backbones on one GPU, in the paper's configuration.

For every backbone the project's own classifier (`components.training.backbones.build_model`, random
initialisation, every layer training) at its native input size (224 px, Xception 299) is built
under a Keras dtype policy, compiled with Adam and sparse categorical crossentropy with XLA
(`jit_compile=True`) and driven with `train_on_batch` on random 0..255 images. Measured:

- the one-off cost of the first training step (tracing and XLA compilation) and of the first
  inference batch, reported apart from the speeds;
- training images/s at batch 16 over `--steps` timed steps after `--warmup` untimed ones;
- inference images/s at batch 64 (`predict_on_batch`) the same way.

Each call returns the loss (or the predictions) as host values, so every timed step waits for
the device. Under a mixed policy the output layer must compute in float32 (the softmax is kept
in float32); the script checks that and counts a model that breaks it as a failure. Unless
`--no-float32`, every backbone is also run under float32 in the same process, so the ratio
mixed/float32 is measured on one card in one run. From the training speed it estimates the
paper's preset: `--epochs` (100) epochs over `--train-images` (1000) training images, per
backbone and for all seven one after another on one GPU (training steps only: no validation,
no data loading). The second precision of a backbone runs in the same process right after the
first and reuses what its compilation cached, so its compile time reads lower than a cold one.

On an H200 (JAX 0.11, Keras 3.15) XLA compilation dominates: the seven backbones with both
precisions take about 12-15 minutes, so a device call of at most 10 minutes needs `--budget-s`
and a second call for the backbones it skipped (`--backbones ...`).

    KERAS_BACKEND=jax python bench/bench_gpu.py [--precision mixed_bfloat16] [--no-float32]
        [--backbones NAME ...] [--size PX] [--steps 20] [--warmup 3] [--infer-steps 10]
        [--batch 16] [--infer-batch 64] [--train-images 1000] [--epochs 100]
        [--budget-s SECONDS] [--out gpu_bench.json]

Tiny CPU check: `python bench/bench_gpu.py --size 32 --steps 2 --backbones MobileNet`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# cheapest XLA compile first, so a run cut short by --budget-s still covers the most backbones
DEFAULT_ORDER = (
    "MobileNet",
    "VGG16",
    "MobileNetV2",
    "EfficientNetB0",
    "Xception",
    "DenseNet121",
    "DenseNet169",
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=PRECISIONS, default="mixed_bfloat16")
    parser.add_argument(
        "--no-float32",
        dest="float32",
        action="store_false",
        help="skip the float32 comparison run",
    )
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_ORDER))
    parser.add_argument("--size", type=int, help="input side for every backbone (default native)")
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--infer-batch", type=int, default=64, help="inference batch")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps, the first included")
    parser.add_argument("--infer-steps", type=int, default=10, help="timed inference batches")
    parser.add_argument("--train-images", type=int, default=1000, help="images per epoch")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the preset")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="start no further model once this many seconds have passed (0: no limit)",
    )
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.infer_steps < 1:
        parser.error("--warmup, --steps and --infer-steps must be at least 1")
    return args


def _devices(keras: Any) -> list[str]:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return [d.name for d in gpus] or ["cpu"]
    except Exception as exc:  # a description only; the benchmark itself decides
        return [f"unknown ({exc})"]
    return ["unknown"]


def _softmax_dtype(model: Any, output_layer: str) -> tuple[str, str]:
    """The output layer's compute dtype and the model output's dtype."""
    layer = model.get_layer(output_layer)
    return str(layer.dtype_policy.compute_dtype), str(model.outputs[0].dtype)


def _bench_one(
    keras: Any,
    backbones: Any,
    name: str,
    precision: str,
    args: argparse.Namespace,
    rng: np.random.Generator,
    row: dict[str, Any],
) -> None:
    """Measure one backbone under one policy, filling `row` as it goes (what was measured
    before a failure stays in it)."""
    spec = backbones.get_backbone(name)
    size = spec.input_size(args.size)
    keras.backend.clear_session()
    gc.collect()
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    row["size"] = size

    start = time.perf_counter()
    model = backbones.build_model(name, size, "none")
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        jit_compile=True,
    )
    row["build_s"] = time.perf_counter() - start
    row["params"] = int(model.count_params())

    compute, out_dtype = _softmax_dtype(model, backbones.OUTPUT_LAYER)
    body = [
        layer
        for layer in backbones.backbone_layers(model)
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)
    ]
    row["softmax_compute_dtype"] = compute
    row["output_dtype"] = out_dtype
    row["backbone_compute_dtype"] = str(body[0].dtype_policy.compute_dtype) if body else None
    row["softmax_float32"] = compute == "float32" and out_dtype == "float32"
    if not row["softmax_float32"]:
        raise AssertionError(
            f"{name} under {precision}: output layer computes in {compute}, output {out_dtype}; "
            f"the softmax must stay float32"
        )

    x = rng.uniform(0, 255, (args.batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 2, args.batch).astype(np.int32)
    start = time.perf_counter()
    loss = float(model.train_on_batch(x, y))
    row["train_compile_s"] = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        loss = float(model.train_on_batch(x, y))
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = float(model.train_on_batch(x, y))
    train_s = time.perf_counter() - start
    row["train_step_ms"] = 1e3 * train_s / args.steps
    row["train_img_s"] = args.batch * args.steps / train_s
    row["last_loss"] = loss
    row["loss_finite"] = bool(math.isfinite(loss))

    xi = rng.uniform(0, 255, (args.infer_batch, size, size, 3)).astype(np.float32)
    start = time.perf_counter()
    probs = np.asarray(model.predict_on_batch(xi))
    row["infer_compile_s"] = time.perf_counter() - start
    row["predictions_dtype"] = str(probs.dtype)
    start = time.perf_counter()
    for _ in range(args.infer_steps):
        probs = np.asarray(model.predict_on_batch(xi))
    infer_s = time.perf_counter() - start
    row["infer_img_s"] = args.infer_batch * args.infer_steps / infer_s
    row["probs_sum_ok"] = bool(np.allclose(probs.astype(np.float64).sum(axis=1), 1.0, atol=1e-3))

    row["preset_hours"] = args.epochs * args.train_images / row["train_img_s"] / 3600
    del model


def _summary(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ok = {
        (r["backbone"], r["precision"]): r for r in rows if "train_img_s" in r and "error" not in r
    }
    per: dict[str, dict[str, Any]] = {}
    for name in args.backbones:
        entry: dict[str, Any] = {}
        main = ok.get((name, args.precision))
        ref = ok.get((name, "float32"))
        if main and ref and main is not ref:
            entry["train_ratio"] = main["train_img_s"] / ref["train_img_s"]
            entry["infer_ratio"] = main["infer_img_s"] / ref["infer_img_s"]
        per[name] = entry
    totals: dict[str, Any] = {}
    for precision in {args.precision, "float32"}:
        done = [ok[(n, precision)] for n in args.backbones if (n, precision) in ok]
        if not done:
            continue
        totals[precision] = {
            "backbones": len(done),
            "preset_hours": sum(r["preset_hours"] for r in done),
            "compile_s": sum(r["train_compile_s"] + r["infer_compile_s"] for r in done),
            "complete": len(done) == len(args.backbones),
        }
    return {"per_backbone": per, "all_seven_one_gpu": totals}


def _table(
    rows: list[dict[str, Any]], args: argparse.Namespace, backbones_size: dict[str, int]
) -> str:
    ok = {
        (r["backbone"], r["precision"]): r for r in rows if "train_img_s" in r and "error" not in r
    }
    mp, fp = args.precision, "float32"
    compare = args.float32 and mp != fp
    head = f"{'backbone':15s} {'px':>3s} {'Mparam':>6s}  {'train img/s':>11s}"
    if compare:
        head += f" {'f32':>7s} {'ratio':>5s}  {'infer img/s':>11s} {'f32':>7s} {'ratio':>5s}"
        head += f"  {'compile s':>9s} {'f32':>5s}  {'100-ep h':>8s} {'f32':>6s}"
    else:
        head += f"  {'infer img/s':>11s}  {'compile s':>9s}  {'100-ep h':>8s}"
    lines = [f"{mp}{' vs float32' if compare else ''}; compile s = first train step + first "
             f"inference batch; 100-ep h = {args.epochs} epochs x {args.train_images} images",
             head]  # fmt: skip

    def num(r: dict[str, Any] | None, key: str, fmt: str, width: int) -> str:
        return format(r[key], fmt) if r else "-".rjust(width)

    def comp(r: dict[str, Any] | None, width: int) -> str:
        return format(r["train_compile_s"] + r["infer_compile_s"], f"{width}.1f") if r else "-"

    for name in args.backbones:
        m, f = ok.get((name, mp)), ok.get((name, fp))
        size = (m or f or {}).get("size") or backbones_size.get(name, 0)
        params = (m or f or {}).get("params", 0) / 1e6
        line = f"{name:15s} {size:3d} {params:6.1f}  {num(m, 'train_img_s', '11.1f', 11)}"
        if compare:
            tr = f"{m['train_img_s'] / f['train_img_s']:5.2f}" if m and f else "    -"
            ir = f"{m['infer_img_s'] / f['infer_img_s']:5.2f}" if m and f else "    -"
            line += f" {num(f, 'train_img_s', '7.1f', 7)} {tr}"
            line += (
                f"  {num(m, 'infer_img_s', '11.1f', 11)} {num(f, 'infer_img_s', '7.1f', 7)} {ir}"
            )
            line += f"  {comp(m, 9):>9s} {comp(f, 5):>5s}"
            line += f"  {num(m, 'preset_hours', '8.2f', 8)} {num(f, 'preset_hours', '6.2f', 6)}"
        else:
            line += f"  {num(m, 'infer_img_s', '11.1f', 11)}  {comp(m, 9):>9s}"
            line += f"  {num(m, 'preset_hours', '8.2f', 8)}"
        lines.append(line)
    for precision, total in _summary(rows, args)["all_seven_one_gpu"].items():
        lines.append(
            f"all {total['backbones']} one after another, {precision}: "
            f"{total['preset_hours']:.2f} h training + {total['compile_s']:.0f} s compile"
            f"{'' if total['complete'] else ' (incomplete: some backbones missing)'}"
        )
    for r in rows:
        if "error" in r:
            lines.append(f"FAILED {r['backbone']} {r['precision']}: {r['error']}")
        elif "skipped" in r:
            lines.append(f"SKIPPED {r['backbone']} {r['precision']}: {r['skipped']}")
    return "\n".join(lines)


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    import keras

    from components.training import backbones

    import_s = time.perf_counter() - started
    unknown = [n for n in args.backbones if n not in backbones.REGISTRY]
    if unknown:
        print(f"unknown backbones {unknown}; known: {sorted(backbones.REGISTRY)}", file=sys.stderr)
        return 2
    precisions = [args.precision]
    if args.float32 and args.precision != "float32":
        precisions.append("float32")
    env = {
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "devices": _devices(keras),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "import_s": import_s,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if env["backend"] == "jax":
        import jax

        env["jax"] = jax.__version__
        # None: XLA's default, which lets float32 convolutions and matmuls use TF32 on GPUs
        env["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    print(
        f"keras {env['keras']} on {env['backend']}, devices {env['devices']}; "
        f"precisions {precisions}; batch {args.batch} train / {args.infer_batch} infer, "
        f"{args.warmup} warm-up + {args.steps} timed steps; import {import_s:.1f} s",
        flush=True,
    )
    report: dict[str, Any] = {"args": {**vars(args), "out": str(args.out)}, "env": env}
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for name in args.backbones:
        # both precisions of one backbone back to back, and the budget checked only between
        # backbones: a run cut short still has its ratios
        elapsed = time.perf_counter() - started
        over = bool(args.budget_s) and elapsed > args.budget_s
        for precision in precisions:
            if over:
                row = {"backbone": name, "precision": precision}
                row["skipped"] = f"{elapsed:.0f} s past --budget-s {args.budget_s:.0f}"
                rows.append(row)
                print(f"{name:15s} {precision:15s} skipped: {row['skipped']}", flush=True)
                continue
            start = time.perf_counter()
            row = {"backbone": name, "precision": precision}
            try:
                _bench_one(keras, backbones, name, precision, args, rng, row)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["traceback"] = traceback.format_exc()
                print(row["traceback"], file=sys.stderr, flush=True)
            row["wall_s"] = time.perf_counter() - start
            rows.append(row)
            if "error" not in row:
                print(
                    f"{name:15s} {precision:15s} {row['size']}px "
                    f"softmax {row['softmax_compute_dtype']} "
                    f"(body {row['backbone_compute_dtype']}); "
                    f"compile {row['train_compile_s']:.1f}"
                    f" + {row['infer_compile_s']:.1f} s; train {row['train_img_s']:.1f} img/s "
                    f"({row['train_step_ms']:.1f} ms/step), infer {row['infer_img_s']:.1f} img/s; "
                    f"loss {row['last_loss']:.3f}; wall {row['wall_s']:.0f} s",
                    flush=True,
                )
            report.update(rows=rows, summary=_summary(rows, args))
            report["total_s"] = time.perf_counter() - started
            _write(args.out, report)
    sizes = {n: backbones.get_backbone(n).input_size(args.size) for n in args.backbones}
    table = _table(rows, args, sizes)
    print("\n" + table, flush=True)
    report.update(rows=rows, summary=_summary(rows, args), table=table)
    checked = [r["softmax_float32"] for r in rows if "softmax_float32" in r]
    report["softmax_float32_checked"] = len(checked)
    report["softmax_float32_all"] = bool(checked) and all(checked)
    print(
        f"float32 softmax: {'held' if report['softmax_float32_all'] else 'BROKEN'} in "
        f"{sum(checked)} of {len(checked)} models checked",
        flush=True,
    )
    report["skipped"] = [f"{r['backbone']} {r['precision']}" for r in rows if "skipped" in r]
    report["failed"] = [f"{r['backbone']} {r['precision']}" for r in rows if "error" in r]
    report["total_s"] = time.perf_counter() - started
    _write(args.out, report)
    print(f"total {report['total_s']:.0f} s", flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
