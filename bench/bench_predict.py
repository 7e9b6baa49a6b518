"""Single-slice latency of the registered pyfunc in process and behind `mlflow models serve`,
measured in one run.

Builds a classifier on --backbone at --size px (random weights: latency does not depend on
them), logs and registers it as `myelomet@champion` in a temporary MLflow store, writes one
512x512 CT slice, then times, on that slice:
- in process: `PyFuncModel.predict` of a one-row DataFrame of the file's bytes, the model
  loaded once, --n calls after a warm-up;
- served: the same model under `mlflow models serve --env-manager local` on 127.0.0.1, POST
  /invocations (dataframe_split, base64), first from one client (the latency a request pays
  for HTTP, JSON and base64), then from --clients concurrent clients (throughput), --n
  requests each.

Prints p50 and p95 of each, the requests/s of each, and the ratios server p50 / in-process p50
(one client, and --clients clients, where requests also queue).

Usage: python bench/bench_predict.py [--backbone MobileNetV2] [--size 64] [--n 50] [--clients 4]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.random_champion import register_random_champion  # noqa: E402
from components.config import BACKBONES  # noqa: E402
from tests.dicom_factory import stored_pixels, write_plain  # noqa: E402
from tests.serving_server import mlflow_model_server  # noqa: E402

NAME = "myelomet"
STARTUP_TIMEOUT_S = 180


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000.0, [50, 95])
    return float(p50), float(p95)


def _in_process(tracking_uri: str, data: bytes, n: int) -> list[float]:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = pd.DataFrame({"dicom": [data]})
    model.predict(frame)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        model.predict(frame)
        times.append(time.perf_counter() - start)
    return times


def _served(url: str, data: bytes, n: int, clients: int) -> tuple[list[float], float]:
    """Latencies of every request and the wall time of all of them."""
    body = {"dataframe_split": {"columns": ["dicom"], "data": [[base64.b64encode(data).decode()]]}}
    times: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            session.post(f"{url}/invocations", json=body, timeout=60)  # warm-up, not timed
            barrier.wait()
            for _ in range(n):
                start = time.perf_counter()
                response = session.post(f"{url}/invocations", json=body, timeout=60)
                elapsed = time.perf_counter() - start
                with lock:
                    times.append(elapsed)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return times, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="MobileNetV2", choices=BACKBONES)
    parser.add_argument("--size", type=int, default=64, help="input side in px")
    parser.add_argument("--n", type=int, default=50, help="calls in process; requests per client")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        root = Path(tmp)
        tracking_uri = register_random_champion(
            root, NAME, {args.backbone: args.backbone}, args.size, onnx=False
        )
        data = write_plain(root / "slice.dcm", pixels=stored_pixels(512, 512)).path.read_bytes()

        in_process = _in_process(tracking_uri, data, args.n)
        with mlflow_model_server(
            f"models:/{NAME}@champion",
            {"MLFLOW_TRACKING_URI": tracking_uri},
            cwd=root,
            startup_timeout_s=STARTUP_TIMEOUT_S,
        ) as url:
            single = _served(url, data, args.n, 1)
            loaded = _served(url, data, args.n, args.clients)
    local = _percentiles(in_process)
    print(f"{args.backbone} at {args.size} px, one 512x512 CT slice ({len(data)} bytes) per call")
    print(
        f"in process: p50 {local[0]:.1f} ms, p95 {local[1]:.1f} ms, "
        f"{len(in_process) / sum(in_process):.1f} calls/s ({args.n} calls)"
    )
    for clients, (times, wall) in ((1, single), (args.clients, loaded)):
        p50, p95 = _percentiles(times)
        print(
            f"served, {clients} client{'s' if clients > 1 else ''}: p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms, {len(times) / wall:.1f} requests/s ({len(times)} requests); "
            f"server p50 / in-process p50 = {p50 / local[0]:.2f}"
        )


if __name__ == "__main__":
    main()
