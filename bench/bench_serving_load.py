"""A bounded load on the scoring server over loopback: requests, errors and latency.

Registers the tests' tiny model (VGG16 at 32 px, tests/model_factory.py) as
`myelomet@champion` in a temporary MLflow store and serves it with `mlflow models serve
--env-manager local` on 127.0.0.1 (or takes the --url of a server already running), writes
--slices CT slices of --side x --side px, asks for each slice's prediction alone once (the
single-request answer, and the warm-up), then sends --requests POST /invocations from
--concurrency threads, cycling through ten bodies:

- 8 good: every slice, base64 in a `dicom` column (dataframe_split), each must come back
  predicted (no error, probability in [0, 1]);
- 1 garbage: the first slice and bytes that are not DICOM (dataframe_records): a 200 whose
  garbage row has an error and whose slice row is predicted;
- 1 not JSON: a body that does not parse, which must come back 400.

Reports, per kind and in all: requests, HTTP errors (no answer, 5xx or another status than
expected), good items not predicted, bad items not flagged, p50/p95/max latency, and the
requests/s of the whole run, with the largest difference between a slice's probability under
load and its single-request answer. Exits 1 when any request or item was answered wrongly;
nothing is timed against a goal.

Usage: python bench/bench_serving_load.py [--requests 400] [--concurrency 8] [--slices 2]
    [--side 512] [--url http://127.0.0.1:PORT] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOOD, GARBAGE, NOT_JSON = "good", "garbage", "not_json"
CYCLE = (GOOD,) * 8 + (GARBAGE, NOT_JSON)
GARBAGE_NAME = "garbage.bin"
GARBAGE_BYTES = b"\x00\xffthis is not a DICOM file" * 8
NOT_JSON_BODY = b"\x00this is not json{"
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Payload:
    """One request body and what a correct server answers to it.

    Attributes:
        kind: GOOD, GARBAGE or NOT_JSON.
        body: the bytes POSTed as application/json.
        status: the HTTP status expected.
        good: names of the items that must come back predicted.
        bad: names of the items that must come back with an error row.
    """

    kind: str
    body: bytes
    status: int
    good: tuple[str, ...] = ()
    bad: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What one request got.

    Attributes:
        kind: the payload's kind.
        latency_s: from sending the request to reading the whole answer.
        status: the HTTP status, None when no answer came.
        failure: why the request counts as an HTTP error (no answer, 5xx, another status than
            expected, a 200 that is not a prediction), else None.
        item_errors: good items not predicted (missing, error set, or probability outside
            [0, 1]).
        missed_bad: bad items answered without an error.
        probabilities: (name, probability) of each good item predicted.
    """

    kind: str
    latency_s: float
    status: int | None
    failure: str | None = None
    item_errors: int = 0
    missed_bad: int = 0
    probabilities: tuple[tuple[str, float], ...] = ()


@dataclass
class LoadResult:
    """Every request's outcome and the wall time of the run."""

    outcomes: list[Outcome]
    wall_s: float

    @property
    def failures(self) -> dict[str, int]:
        """How many requests failed, by reason."""
        return dict(Counter(o.failure for o in self.outcomes if o.failure is not None))

    @property
    def requests_per_s(self) -> float:
        """Requests answered or failed per second of wall time."""
        return len(self.outcomes) / self.wall_s

    def summary(self, kind: str | None = None) -> dict[str, Any]:
        """Counts and latency percentiles (ms) of the requests of `kind`, or of all."""
        chosen = [o for o in self.outcomes if kind is None or o.kind == kind]
        ms = np.asarray([o.latency_s for o in chosen]) * 1000.0
        p50, p95 = np.percentile(ms, [50, 95]) if len(ms) else (np.nan, np.nan)
        return {
            "kind": kind or "all",
            "requests": len(chosen),
            "http_errors": sum(o.failure is not None for o in chosen),
            "item_errors": sum(o.item_errors for o in chosen),
            "missed_bad": sum(o.missed_bad for o in chosen),
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "max_ms": float(ms.max()) if len(ms) else float("nan"),
        }

    def probabilities(self) -> dict[str, list[float]]:
        """Every probability each good item got, by name."""
        out: dict[str, list[float]] = {}
        for o in self.outcomes:
            for name, p in o.probabilities:
                out.setdefault(name, []).append(p)
        return out

    def max_deviation(self, reference: Mapping[str, float]) -> float:
        """The largest |probability under load - reference| over every good item answered."""
        return max(
            (abs(p - reference[name]) for name, ps in self.probabilities().items() for p in ps),
            default=0.0,
        )

    @property
    def ok(self) -> bool:
        """Every request answered as expected, every good item predicted, every bad flagged."""
        total = self.summary()
        return total["http_errors"] == total["item_errors"] == total["missed_bad"] == 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mixed_payloads(dicoms: Mapping[str, bytes]) -> list[Payload]:
    """The CYCLE of bodies for `dicoms` (name -> the file's bytes, one slice each)."""
    names = tuple(dicoms)
    split = {"columns": ["dicom", "name"], "data": [[_b64(d), n] for n, d in dicoms.items()]}
    good = Payload(GOOD, json.dumps({"dataframe_split": split}).encode(), 200, good=names)
    first = names[0]
    records = [
        {"dicom": _b64(dicoms[first]), "name": first},
        {"dicom": _b64(GARBAGE_BYTES), "name": GARBAGE_NAME},
    ]
    body = json.dumps({"dataframe_records": records}).encode()
    garbage = Payload(GARBAGE, body, 200, good=(first,), bad=(GARBAGE_NAME,))
    not_json = Payload(NOT_JSON, NOT_JSON_BODY, 400)
    by_kind = {GOOD: good, GARBAGE: garbage, NOT_JSON: not_json}
    return [by_kind[kind] for kind in CYCLE]


def _probability(row: Mapping[str, Any]) -> Any:
    """The row's p_<positive> value."""
    return next((v for k, v in row.items() if k.startswith("p_")), None)


def _predicted(row: Mapping[str, Any] | None) -> bool:
    p = _probability(row) if row is not None else None
    return row is not None and row.get("error") is None and isinstance(p, float) and 0 <= p <= 1


def _judge(payload: Payload, status: int, text: str, latency_s: float) -> Outcome:
    """Compare an answer with what the payload expects."""
    if status != payload.status:
        failure = "5xx" if status >= 500 else f"status {status}"
        return Outcome(payload.kind, latency_s, status, failure)
    if status != 200:
        return Outcome(payload.kind, latency_s, status)
    try:
        rows = {row["file"]: row for row in json.loads(text)["predictions"]}
    except (ValueError, KeyError, TypeError):
        return Outcome(payload.kind, latency_s, status, "200 without predictions")
    predicted = [n for n in payload.good if _predicted(rows.get(n))]
    flagged = [n for n in payload.bad if n in rows and rows[n].get("error")]
    return Outcome(
        payload.kind,
        latency_s,
        status,
        item_errors=len(payload.good) - len(predicted),
        missed_bad=len(payload.bad) - len(flagged),
        probabilities=tuple((n, _probability(rows[n])) for n in predicted),
    )


def _send(session: requests.Session, url: str, payload: Payload) -> Outcome:
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter()
    try:
        response = session.post(
            f"{url}/invocations", data=payload.body, headers=headers, timeout=TIMEOUT_S
        )
    except requests.Timeout:
        return Outcome(payload.kind, time.perf_counter() - start, None, "timeout")
    except requests.ConnectionError:
        return Outcome(payload.kind, time.perf_counter() - start, None, "connection error")
    return _judge(payload, response.status_code, response.text, time.perf_counter() - start)


@contextmanager
def _thread_sessions() -> Iterator[Callable[[], requests.Session]]:
    """A function giving each thread its own keep-alive session; all closed on exit."""
    local = threading.local()
    opened: list[requests.Session] = []
    lock = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            with lock:
                opened.append(local.session)
        return local.session

    try:
        yield session
    finally:
        for s in opened:
            s.close()


def run_load(url: str, bodies: Sequence[Payload], total: int, concurrency: int) -> LoadResult:
    """POST `total` requests (cycling through `bodies`) to `url`/invocations from
    `concurrency` threads, each with its own keep-alive connection, and judge every answer.

    Args:
        url: the server's base URL, e.g. http://127.0.0.1:5000.
        bodies: the bodies to cycle through, e.g. `mixed_payloads(...)`.
        total: how many requests in all.
        concurrency: threads sending at once.
    """
    with _thread_sessions() as session, ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        outcomes = list(
            pool.map(lambda i: _send(session(), url, bodies[i % len(bodies)]), range(total))
        )
        wall = time.perf_counter() - start
    return LoadResult(outcomes, wall)


def single_answers(url: str, dicoms: Mapping[str, bytes]) -> dict[str, float]:
    """Each slice's probability when it is sent alone, one request after another.

    Raises:
        RuntimeError: a slice was not predicted.
    """
    out = {}
    for name, data in dicoms.items():
        body = {"dataframe_split": {"columns": ["dicom", "name"], "data": [[_b64(data), name]]}}
        response = requests.post(f"{url}/invocations", json=body, timeout=TIMEOUT_S)
        rows = response.json().get("predictions") if response.status_code == 200 else None
        if not rows or not _predicted(rows[0]):
            raise RuntimeError(f"{name} alone: {response.status_code} {response.text[:300]}")
        out[name] = _probability(rows[0])
    return out


def markdown(result: LoadResult) -> str:
    """The per-kind and overall summary as a markdown table."""
    lines = [
        "| kind | requests | HTTP errors | good items not predicted | bad items not flagged "
        "| p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in (GOOD, GARBAGE, NOT_JSON, None):
        s = result.summary(kind)
        lines.append(
            f"| {s['kind']} | {s['requests']} | {s['http_errors']} | {s['item_errors']} "
            f"| {s['missed_bad']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['max_ms']:.1f} |"
        )
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected 1 or more")
    return value


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=_positive, default=400, help="requests in all")
    parser.add_argument("--concurrency", type=_positive, default=8, help="threads at once")
    parser.add_argument("--slices", type=_positive, default=2, help="CT slices per good request")
    parser.add_argument("--side", type=_positive, default=512, help="rows and columns of a slice")
    parser.add_argument("--url", help="a running server to load (default: start one)")
    parser.add_argument("--json", type=Path, help="write the summary here as JSON")
    return parser.parse_args(argv)


def _write_slices(folder: Path, n: int, side: int) -> dict[str, bytes]:
    """n CT slices of side x side px with different content and intercept: name -> bytes."""
    from tests.dicom_factory import stored_pixels, write_plain

    out = {}
    for i in range(n):
        path = folder / f"slice{i}.dcm"
        write_plain(path, pixels=stored_pixels(side, side, seed=i), intercept=-1024 + 100 * i)
        out[path.name] = path.read_bytes()
    return out


@contextmanager
def _server(url: str | None, root: Path) -> Iterator[str]:
    """`url`, or the tiny champion served from `root` until exit."""
    if url:
        yield url.rstrip("/")
        return
    from tests.serving_server import CHAMPION, mlflow_model_server, register_tiny_champion

    tracking_uri = register_tiny_champion(root, experiment="bench")
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    with mlflow_model_server(CHAMPION, env, cwd=root, startup_timeout_s=180) as served:
        yield served


def main(argv: list[str] | None = None) -> int:
    """Run the load and print the table; 1 when anything was answered wrongly."""
    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench_serving_load_") as tmp:
        dicoms = _write_slices(Path(tmp), args.slices, args.side)
        with _server(args.url, Path(tmp)) as url:
            reference = single_answers(url, dicoms)
            result = run_load(url, mixed_payloads(dicoms), args.requests, args.concurrency)
    deviation = result.max_deviation(reference)
    print(
        f"{url}: {args.requests} requests from {args.concurrency} threads; a good request is "
        f"{args.slices} CT slice(s) of {args.side}x{args.side} px "
        f"({sum(map(len, dicoms.values()))} bytes of DICOM)"
    )
    print(markdown(result))
    print(
        f"{result.requests_per_s:.1f} requests/s over {result.wall_s:.1f} s; largest "
        f"|p under load - p alone| = {deviation:.3g}; failures: {result.failures or 'none'}"
    )
    if args.json:
        report = {
            "url": url,
            "args": {k: str(v) for k, v in vars(args).items()},
            "kinds": [result.summary(kind) for kind in (GOOD, GARBAGE, NOT_JSON)],
            "all": result.summary(),
            "requests_per_s": result.requests_per_s,
            "wall_s": result.wall_s,
            "failures": result.failures,
            "max_deviation": deviation,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
