"""Keras against onnxruntime for the registered model, and what a serving box installs, side
by side in one run.

1. Install size: the site-packages of a fresh venv holding only `.[serve]` at the locked
   versions (built with uv from its cache) against this project's full venv.
2. One backbone (--backbone) and a fold ensemble (--folds × --members) at --size px, random
   weights (latency does not depend on them), are registered in a temporary MLflow store
   exactly as evaluation registers a candidate: exported to ONNX and checked against Keras.
   For each engine, in a fresh Python process: load + first answer (imports, loading the
   models and one 512×512 slice predicted), then the p50 of --n batches of --batch slices.
3. `myelomet predict <one patient's folder> --per series --engine E` with the fold ensemble,
   wall time of the whole command (the 87 s of the README's fold ensemble on Keras).

Prints each figure for both engines and the ratio keras / onnx.

Usage: python bench/bench_onnx.py [--backbone MobileNetV2] [--size 64] [--folds 5]
       [--members MobileNet,MobileNetV2,EfficientNetB0] [--batch 16] [--n 10] [--slices 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.random_champion import register_random_champion  # noqa: E402
from components.config import BACKBONES  # noqa: E402
from tests.dicom_factory import stored_pixels, write_plain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("keras", "onnx")

# Run in a fresh interpreter per engine: imports, load, first answer, then batches.
_TIMED = """
import json, sys, time
start = time.perf_counter()
from components.registry.pyfunc import load_predictor
uri, engine, first = sys.argv[1:4]
batch, n = sys.argv[4:-1], int(sys.argv[-1])
predictor = load_predictor(uri, engine=engine)
rows = predictor.predict_sources([first])
assert not rows[0].get("error"), rows[0]
first_s = time.perf_counter() - start
times = []
for _ in range(n):
    t = time.perf_counter()
    predictor.predict_sources(batch)
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"first_s": first_s, "batch_p50_s": times[len(times) // 2]}))
"""


def _site_packages_mib(python: Path) -> float:
    """MiB under the site-packages of the venv of `python`."""
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    total = sum(f.stat().st_size for f in Path(site).rglob("*") if f.is_file())
    return total / 2**20


def _serve_venv(folder: Path) -> Path:
    """A venv with `.[serve]` at the versions of requirements.lock; its python."""
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run(
        [str(uv), "pip", "install", "-q", "--python", str(python)]
        + ["-c", str(ROOT / "requirements.lock"), f"{ROOT}[serve]"],
        check=True,
    )
    for module in ("tensorflow", "jax", "keras"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        if found.returncode == 0:
            raise RuntimeError(f"the serve install has {module}; it should not")
    return python


def _timed(env: dict[str, str], uri: str, engine: str, slices: list[Path], n: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _TIMED, uri, engine, str(slices[0]), *map(str, slices), str(n)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{engine}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _predict_command(env: dict[str, str], uri: str, engine: str, patient: Path) -> float:
    myelomet = Path(sys.executable).parent / "myelomet"
    start = time.perf_counter()
    done = subprocess.run(
        [str(myelomet), "predict", str(patient), "--per", "series", "--model", uri]
        + ["--engine", engine],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"predict --engine {engine}: {done.stderr.strip()[-300:]}")
    print(f"    {engine}: {done.stdout.strip()}")
    return wall


def _line(what: str, keras_s: float, onnx_s: float) -> None:
    ratio = keras_s / onnx_s
    print(f"{what:<52} keras {keras_s:8.3f} s  onnx {onnx_s:8.3f} s  keras/onnx {ratio:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="MobileNetV2", choices=BACKBONES)
    parser.add_argument("--size", type=int, default=64, help="input side in px (the demo's)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--members", default="MobileNet,MobileNetV2,EfficientNetB0")
    parser.add_argument("--batch", type=int, default=16, help="slices per timed batch")
    parser.add_argument("--n", type=int, default=10, help="timed batches")
    parser.add_argument("--slices", type=int, default=3, help="slices of the patient")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        root = Path(tmp)
        serve_python = _serve_venv(root / "serve-venv")
        serve_mib = _site_packages_mib(serve_python)
        full_mib = _site_packages_mib(Path(sys.executable))
        shutil.rmtree(root / "serve-venv")
        print(
            f"install size: serve {serve_mib:.0f} MiB, full {full_mib:.0f} MiB "
            f"(full/serve {full_mib / serve_mib:.1f}); the serve install has no "
            "tensorflow, jax or keras"
        )

        single = register_random_champion(
            root / "single", "single", {args.backbone: args.backbone}, args.size, onnx=True
        )
        members = {f"fold-{f}/{b}": b for f in range(args.folds) for b in args.members.split(",")}
        ensemble = register_random_champion(
            root / "folds", "folds", members, args.size, onnx=True, folds=True
        )
        slices = [
            write_plain(root / "slices" / f"{i}.dcm", pixels=stored_pixels(512, 512, seed=i)).path
            for i in range(args.batch)
        ]
        patient = root / "patient"
        patient.mkdir()
        for i in range(args.slices):
            shutil.copy(slices[i], patient / f"{i}.dcm")
        env = dict(os.environ)
        for label, name, tracking_uri in (
            (args.backbone, "single", single),
            (f"fold ensemble ({len(members)} models)", "folds", ensemble),
        ):
            env["MLFLOW_TRACKING_URI"] = tracking_uri
            uri = f"models:/{name}@champion"
            got = {e: _timed(env, uri, e, slices, args.n) for e in ENGINES}
            _line(f"{label}: load + first answer", got["keras"]["first_s"], got["onnx"]["first_s"])
            _line(
                f"{label}: batch of {args.batch}, p50",
                got["keras"]["batch_p50_s"],
                got["onnx"]["batch_p50_s"],
            )
        print(f"predict --per series, one patient of {args.slices} slices, fold ensemble:")
        walls = {e: _predict_command(env, "models:/folds@champion", e, patient) for e in ENGINES}
        _line("predict --per series (whole command)", walls["keras"], walls["onnx"])


if __name__ == "__main__":
    main()
