"""bench/bench_serving_load.py's judging, against stand-in servers on 127.0.0.1 that answer
right or wrong: every kind of wrong answer is counted, and right ones are not."""

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.bench_serving_load import GARBAGE, GOOD, NOT_JSON, mixed_payloads, run_load

DICOMS = {"a.dcm": b"first slice", "b.dcm": b"second slice"}
PROBABILITY = {"a.dcm": 0.25, "b.dcm": 0.75}


def _rows(body: dict, right: bool) -> list[dict]:
    """A prediction row per item. Right: the garbage item has the only error. Wrong: the
    slice next to it has the error instead."""
    if "dataframe_split" in body:
        return [
            {"file": n, "p_mm": PROBABILITY[n], "error": None}
            for _, n in body["dataframe_split"]["data"]
        ]
    out = []
    for name in (r["name"] for r in body["dataframe_records"]):
        p = PROBABILITY.get(name)
        error = "not_dicom: no DICOM header" if (p is None) == right else None
        out.append({"file": name, "p_mm": p if right else None, "error": error})
    return out


def _handler(right: bool) -> type[BaseHTTPRequestHandler]:
    """Right: a model server's answers. Wrong: 503 for dataframe_split, an error for the slice
    instead of the garbage item, and 200 for a body that is not JSON."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                body = json.loads(raw)
            except ValueError:
                self._answer(400 if right else 200, {"message": "not valid JSON"})
                return
            if "dataframe_split" in body and not right:
                self._answer(503, {"message": "overloaded"})
                return
            self._answer(200, {"predictions": _rows(body, right)})

        def _answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    return Handler


@contextmanager
def _stand_in(right: bool) -> Iterator[str]:
    """A stand-in server on a free port, its base URL while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(right))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_right_answers_count_as_right():
    with _stand_in(right=True) as url:
        result = run_load(url, mixed_payloads(DICOMS), 20, 4)

    assert result.ok and result.failures == {}
    assert [result.summary(kind)["requests"] for kind in (GOOD, GARBAGE, NOT_JSON)] == [16, 2, 2]
    assert result.probabilities() == {"a.dcm": [0.25] * 18, "b.dcm": [0.75] * 16}
    assert result.max_deviation({"a.dcm": 0.25, "b.dcm": 0.5}) == 0.25


def test_every_wrong_answer_is_counted():
    with _stand_in(right=False) as url:
        result = run_load(url, mixed_payloads(DICOMS), 20, 4)

    assert not result.ok
    assert result.failures == {"5xx": 16, "status 200": 2}
    garbage = result.summary(GARBAGE)
    assert (garbage["item_errors"], garbage["missed_bad"]) == (2, 2)
    assert result.summary(GOOD)["item_errors"] == 0  # a failed request's items are not judged


def test_no_server_is_a_connection_error_per_request():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: every connection is refused
        result = run_load(f"http://127.0.0.1:{s.getsockname()[1]}", mixed_payloads(DICOMS), 10, 2)
    assert result.failures == {"connection error": 10}
