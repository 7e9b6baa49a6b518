"""`mlflow models serve -m models:/myelomet@champion`: DICOM bytes in, a prediction out.

The server runs from another folder; MLflow puts the model's own copy of `components`
(code_paths) first on its path, so that is the code it serves with.
"""

import base64

import mlflow
import pytest
import requests

from bench.bench_serving_load import (
    GARBAGE,
    GOOD,
    NOT_JSON,
    markdown,
    mixed_payloads,
    run_load,
    single_answers,
)
from components.registry import pyfunc
from tests.dicom_factory import stored_pixels, write_plain, write_raw_attribute
from tests.serving_server import (
    CHAMPION,
    CHAMPION_THRESHOLD,
    mlflow_model_server,
    register_tiny_champion,
)

pytestmark = pytest.mark.slow

REQUEST_LIMIT = 100_000  # MYELOMET_MAX_REQUEST_BYTES of the server under test
LOAD_REQUESTS = 60  # six cycles of bench_serving_load's ten bodies
LOAD_CONCURRENCY = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(URL of the server, the same model loaded in this process)."""
    root = tmp_path_factory.mktemp("serve")
    tracking_uri = register_tiny_champion(root)
    env = {"MLFLOW_TRACKING_URI": tracking_uri, pyfunc.MAX_REQUEST_BYTES_ENV: str(REQUEST_LIMIT)}
    workdir = root / "elsewhere"
    workdir.mkdir()
    with mlflow_model_server(CHAMPION, env, cwd=workdir, log=root / "server.log") as url:
        mlflow.set_tracking_uri(tracking_uri)
        yield url, mlflow.pyfunc.load_model(CHAMPION)


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory):
    return write_plain(tmp_path_factory.mktemp("dicom") / "slice.dcm", intercept=-900).path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_a_dicom_as_base64_gets_the_in_process_prediction(served, dicom_file):
    url, local = served
    data = [[_b64(dicom_file.read_bytes()), "slice.dcm"]]
    body = {"dataframe_split": {"columns": ["dicom", "name"], "data": data}}

    response = requests.post(f"{url}/invocations", json=body, timeout=60)

    assert response.status_code == 200, response.text
    [row] = response.json()["predictions"]
    [expected] = local.predict({"dicom": [dicom_file.read_bytes()], "name": ["slice.dcm"]}).to_dict(
        orient="records"
    )
    assert set(row) == {"file", "frame", "p_mm", "label", "threshold", "error"}
    assert row["file"] == "slice.dcm" and row["error"] is None and row["frame"] is None
    assert row["p_mm"] == pytest.approx(expected["p_mm"], rel=1e-4)
    assert (row["label"], row["threshold"]) == (expected["label"], CHAMPION_THRESHOLD)


def test_per_series_the_server_answers_once_per_series(served, dicom_file):
    url, local = served
    raw = dicom_file.read_bytes()
    data = [[_b64(raw), "scan/1.dcm", "series"], [_b64(b"junk"), "scan/2.dcm", "series"]]
    body = {"dataframe_split": {"columns": ["dicom", "name", "per"], "data": data}}

    response = requests.post(f"{url}/invocations", json=body, timeout=60)

    assert response.status_code == 200, response.text
    [row] = response.json()["predictions"]
    [slice_row] = local.predict({"dicom": [raw], "name": ["scan/1.dcm"]}).to_dict(orient="records")
    assert (row["series"], row["n_slices"], row["n_rejected"]) == ("scan", 1, 1)
    assert row["p_mm"] == pytest.approx(slice_row["p_mm"], rel=1e-4) and row["error"] is None


def test_records_with_a_bad_item_still_predict_the_good_one(served, dicom_file):
    url, _ = served
    records = [{"dicom": _b64(dicom_file.read_bytes())}, {"dicom": _b64(b"junk")}]
    body = {"dataframe_records": records}

    response = requests.post(f"{url}/invocations", json=body, timeout=60)

    assert response.status_code == 200, response.text
    good, bad = response.json()["predictions"]
    assert 0 <= good["p_mm"] <= 1 and good["error"] is None
    assert bad["p_mm"] is None and bad["error"].startswith("not_dicom")


def test_a_bad_value_in_one_file_is_its_error_row_and_the_good_file_is_answered(
    served, dicom_file, tmp_path
):
    url, local = served
    abc = write_raw_attribute(tmp_path / "abc.dcm", "RescaleSlope", b"abc ")
    tiny = write_plain(tmp_path / "tiny.dcm", slope=1e-300).path
    files = {"good.dcm": dicom_file, "abc.dcm": abc, "tiny.dcm": tiny}
    data = [[_b64(f.read_bytes()), name] for name, f in files.items()]
    body = {"dataframe_split": {"columns": ["dicom", "name"], "data": data}}

    response = requests.post(f"{url}/invocations", json=body, timeout=60)

    assert response.status_code == 200, response.text
    good, bad, near_zero = response.json()["predictions"]
    [expected] = local.predict({"dicom": [dicom_file.read_bytes()]}).to_dict(orient="records")
    assert good["file"] == "good.dcm" and good["error"] is None
    assert good["p_mm"] == pytest.approx(expected["p_mm"], rel=1e-4)
    assert bad["file"] == "abc.dcm" and bad["p_mm"] is None
    assert bad["error"] == (
        "bad_rescale: RescaleSlope is not one number; the file's modality LUT is broken, "
        "export the series again"
    )
    assert near_zero["p_mm"] is None and near_zero["error"].startswith("bad_rescale: ")
    assert "stack_trace" not in response.text and "abc" not in bad["error"]


def _refusal(response: requests.Response) -> str:
    """The message of a refused request, checked to be one line with no stack trace or
    copy of the request."""
    assert response.status_code == 400
    body = response.json()
    assert "stack_trace" not in body and "\n" not in body["message"]
    assert "Failed to predict data" not in body["message"]
    return body["message"]


def test_a_body_that_is_not_json_is_a_400_that_says_so(served):
    url, _ = served
    response = requests.post(
        f"{url}/invocations",
        data=b"\x00this is not json{",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "valid JSON" in response.json()["message"]

    wrong_type = requests.post(
        f"{url}/invocations", data=b"x", headers={"Content-Type": "image/png"}
    )
    assert wrong_type.status_code == 415


def test_an_oversize_payload_is_a_400(served, tmp_path):
    url, _ = served
    big = write_plain(tmp_path / "big.dcm", pixels=stored_pixels(256, 256)).path.read_bytes()
    assert len(big) > REQUEST_LIMIT
    body = {"dataframe_split": {"columns": ["dicom"], "data": [[_b64(big)]]}}

    response = requests.post(f"{url}/invocations", json=body, timeout=60)

    assert _refusal(response).startswith(f"the request carries {len(big)} bytes of DICOM, over")


def test_the_server_does_not_read_paths_on_its_disk(served, dicom_file):
    url, _ = served
    body = {"dataframe_split": {"columns": ["path"], "data": [[str(dicom_file)]]}}
    response = requests.post(f"{url}/invocations", json=body, timeout=30)
    assert _refusal(response).startswith("the model server does not read files from its own disk")
    no_column = {"dataframe_split": {"columns": ["name"], "data": [["x"]]}}
    response = requests.post(f"{url}/invocations", json=no_column, timeout=30)
    assert _refusal(response).startswith('send a "dicom" column')


def test_a_bounded_concurrent_load_is_answered_right_every_time(served, dicom_file, tmp_path):
    """bench/bench_serving_load.py's load, smaller: good bodies, garbage items and non-JSON
    bodies from eight threads at once, each answered as when it is sent alone."""
    url, _ = served
    second = write_plain(tmp_path / "second.dcm", seed=3, intercept=-1024).path
    dicoms = {path.name: path.read_bytes() for path in (dicom_file, second)}
    alone = single_answers(url, dicoms)

    result = run_load(url, mixed_payloads(dicoms), LOAD_REQUESTS, LOAD_CONCURRENCY)

    print(f"\n{markdown(result)}\n{result.requests_per_s:.1f} requests/s")
    assert len(result.outcomes) == LOAD_REQUESTS
    assert result.failures == {}  # no connection error, timeout, 5xx or unexpected status
    statuses = {
        kind: {o.status for o in result.outcomes if o.kind == kind}
        for kind in (GOOD, GARBAGE, NOT_JSON)
    }
    assert statuses == {GOOD: {200}, GARBAGE: {200}, NOT_JSON: {400}}
    total = result.summary()
    assert total["item_errors"] == 0 and total["missed_bad"] == 0  # garbage: an error row
    assert all(0 <= p <= 1 for p in alone.values())
    assert {name: set(ps) for name, ps in result.probabilities().items()} == {
        name: {p} for name, p in alone.items()
    }
    good_requests = result.summary(GOOD)["requests"]
    assert len(result.probabilities()[second.name]) == good_requests
