"""A group's MLflow tracking server, as the commands meet it: whether a tracking URI names
one, whether it answers and takes the credentials in the environment
(MLFLOW_TRACKING_USERNAME/PASSWORD), and what it refused (401, 403) or that it stopped
answering, each as a `TrackingServerError` of one line that says what to do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from mlflow.exceptions import MlflowException


class TrackingServerError(ConnectionError):
    """The MLflow tracking server refused the credentials (401) or a request (403), or did
    not answer."""


_CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
# How long the one request of `check_server` waits for an answer.
SERVER_TIMEOUT_S = 30


def is_server(uri: str) -> bool:
    """Whether a tracking URI names a tracking server (http or https), not a local store."""
    return uri.startswith(("http://", "https://"))


def _refused(uri: str, status: int, action: str) -> TrackingServerError:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401 and user is None:
        return TrackingServerError(
            f"MLflow server {uri} asks for credentials (401) while {action}: set {_CREDENTIALS}"
        )
    if status == 401:
        return TrackingServerError(
            f"MLflow server {uri} refused the credentials of user {user!r} (401) while "
            f"{action}: set {_CREDENTIALS}"
        )
    return TrackingServerError(
        f"MLflow server {uri} denied user {user!r} ({status}) while {action}: ask the "
        "server's admin for EDIT permission on the experiment and the registered model"
    )


def _unreachable(uri: str, action: str, exc: BaseException) -> TrackingServerError:
    cause: BaseException | None = exc
    while cause.__cause__ or cause.__context__:  # the innermost: "Connection refused", say
        cause = cause.__cause__ or cause.__context__
    reason = " ".join(str(cause).split())[-160:]
    return TrackingServerError(
        f"MLflow server {uri} did not answer while {action} ({reason}): start it, or set "
        "MLFLOW_TRACKING_URI to one that runs, and run the command again"
    )


def server_error(uri: str, exc: MlflowException, action: str) -> TrackingServerError | None:
    """The one-line error for what a tracking server answered (401, 403) or that it did not
    answer; None for any other MLflow error."""
    status = exc.get_http_status_code()
    if status in (401, 403):
        return _refused(uri, status, action)
    if "failed with exception" in exc.message or "Max retries exceeded" in exc.message:
        return _unreachable(uri, action, exc)
    return None


@contextlib.contextmanager
def on_server(uri: str, action: str) -> Iterator[None]:
    """Turn what a tracking server refused, or its silence, into a TrackingServerError; a
    local store's errors pass as they are."""
    try:
        yield
    except MlflowException as exc:
        error = server_error(uri, exc, action) if is_server(uri) else None
        if error is None:
            raise
        raise error from None


def check_server(uri: str) -> None:
    """Ask a tracking server once, without retrying, whether it answers and accepts the
    credentials in the environment; a local store is not asked.

    Raises:
        TrackingServerError: it refused the credentials (401) or did not answer.
    """
    if not is_server(uri):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    action = "checking the credentials"
    try:
        reply = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "POST",
            max_retries=0,
            timeout=SERVER_TIMEOUT_S,
            json={"max_results": 1},
        )
    except MlflowException as exc:
        raise _unreachable(uri, action, exc) from None
    if reply.status_code in (401, 403):
        raise _refused(uri, reply.status_code, action)
    if reply.status_code != 200:
        raise TrackingServerError(
            f"MLflow server {uri} answered {reply.status_code} while {action}: "
            "is MLFLOW_TRACKING_URI the address of an MLflow tracking server?"
        )
