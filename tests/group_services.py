"""A research group's services for the tests: one PostgreSQL and one MLflow server with
basic auth and proxied artifacts per session (`myelomet.group_server`), on 127.0.0.1 in
temporary folders.

Import the fixtures a test needs (`from tests.group_services import group_mlflow_server`).
Tests that use them carry `@pytest.mark.group` and `@pytest.mark.slow`; they skip, naming the
Debian package, when PostgreSQL is not installed. The server is shared: a test makes its own
experiment or registered model name (`unique_name`), or starts a server of its own on a new
database of `postgres_server` (`own_mlflow_server`).

`group_mlflow_server` yields a `myelomet.group_server.GroupServer`: `.uri`, `.admin_user`,
`.admin_password`, `.env()` (MLFLOW_TRACKING_URI/USERNAME/PASSWORD, the admin's or another
user's), `.database_url`, `.conninfo` (for psycopg), `.artifacts`,
`.create_user(name, password, permission="EDIT")` (EDIT on every experiment and registered
model; "READ" makes a read-only user, the server's default) and `.grant(user, id, permission)`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from myelomet.group_server import (
    GroupServer,
    Postgres,
    missing_postgres,
    running_mlflow_server,
    running_postgres,
)


def unique_name(prefix: str) -> str:
    """A name no other test of the session uses (an experiment, a model, a user)."""
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """PostgreSQL run by a throwaway user on a free port, with an empty `mlflow` database;
    skips, naming the package, when PostgreSQL is not installed."""
    problem = missing_postgres()
    if problem is not None:
        pytest.skip(problem)
    with running_postgres() as postgres:
        yield postgres


@pytest.fixture(scope="session")
def group_mlflow_server(postgres_server: Postgres) -> Iterator[GroupServer]:
    """`mlflow server` with basic auth and proxied artifacts on `postgres_server`'s
    `mlflow` database; signed-in users may edit by default."""
    with running_mlflow_server(postgres_server) as server:
        yield server


@contextmanager
def own_mlflow_server(postgres: Postgres, port: int | None = None) -> Iterator[GroupServer]:
    """A server of one test's own, on a new database of `postgres` (a test that stops it)."""
    with running_mlflow_server(
        postgres.new_database(unique_name("db").replace("-", "_")), port
    ) as server:
        yield server
