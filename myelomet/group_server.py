"""A research group's MLflow server on this machine, for trying the group setup and for the
tests: PostgreSQL and `mlflow server` with basic auth and proxied artifacts, on 127.0.0.1,
everything in temporary folders that are removed when it stops.

`python -m myelomet.group_server` runs one in the foreground and prints what to export; the
tests start the same through `running_postgres` and `running_mlflow_server`. PostgreSQL's
`initdb` and `pg_ctl` refuse to run as root, so as root it runs as a throwaway system user
(created with `useradd`, removed at the end) through `runuser`. A production server is the same
`mlflow server` command against the group's own PostgreSQL, behind a TLS proxy (README).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Literal

POSTGRES_PACKAGE = "postgresql"
HOST = "127.0.0.1"
DATABASE = "mlflow"
DB_USER = "myelomet"
ADMIN_USER = "admin"
STARTUP_TIMEOUT_S = 180
# MLflow's own default: a signed-in user may read everything. A member of the group who trains
# gets EDIT on every experiment and registered model (`GroupServer.create_user`), so that each
# logs studies into the shared experiment and registers into the shared model; a resource's
# creator (MANAGE) and the admin may delete. A grant can only raise this floor.
DEFAULT_PERMISSION = "READ"
Permission = Literal["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"]


class GroupServerError(RuntimeError):
    """PostgreSQL or the MLflow server could not be set up or did not start."""


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (`initdb`, `pg_ctl`), the newest version
    Debian installed; None when PostgreSQL is not installed."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(initdb: str) -> tuple[int, ...]:
    number = Path(initdb).parts[-3]
    return tuple(int(p) for p in number.split(".") if p.isdigit())


def missing_postgres() -> str | None:
    """Why PostgreSQL can't start here (naming the Debian package), None when it can."""
    if postgres_bin() is None:
        return (
            f"PostgreSQL's initdb is not installed: apt-get install {POSTGRES_PACKAGE} "
            "(Debian/Ubuntu) to run the group server"
        )
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: its TCP address, the database MLflow uses and its owner, and the
    system user it runs as (None: this process's own)."""

    port: int
    user: str
    password: str
    database: str
    folder: Path
    system_user: str | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy's URL of the database with the psycopg (v3) driver, as `mlflow
        server --backend-store-uri` takes it."""
        return (
            f"postgresql+psycopg://{self.user}:{self.password}@{HOST}:{self.port}/{self.database}"
        )

    @property
    def conninfo(self) -> str:
        """The database as `psycopg.connect` takes it."""
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{self.database}"

    def new_database(self, name: str) -> Postgres:
        """Create another, empty database on this server (for a second MLflow server).

        Raises:
            GroupServerError: `createdb` failed (the database exists, say).
        """
        bin_dir = postgres_bin()
        assert bin_dir is not None
        env = {**os.environ, "PGPASSWORD": self.password}
        createdb = [str(bin_dir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", self.user]
        _run([*createdb, name], env=env)
        return dataclasses.replace(self, database=name)


def _system_tool(name: str) -> str:
    """An administration program (useradd, runuser, ...) by its full path: on the PATH, else
    in /usr/sbin or /sbin, which a root shell with a base PATH (`/usr/bin:/bin`) lacks.

    Raises:
        GroupServerError: it is not installed.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise GroupServerError(f"`{name}` is not installed (Debian: passwd, util-linux)")
    return found


@contextlib.contextmanager
def _system_user() -> Iterator[str | None]:
    """As root, a throwaway system user to run PostgreSQL as (removed at the end); None,
    meaning this process's own user, otherwise."""
    if os.geteuid() != 0:
        yield None
        return
    name = f"myelomet-pg-{secrets.token_hex(4)}"
    nologin = shutil.which("nologin", path="/usr/sbin:/sbin") or "/bin/false"
    _run([_system_tool("useradd"), "--system", "--no-create-home", "--shell", nologin, name])
    try:
        yield name
    finally:
        subprocess.run([_system_tool("userdel"), name], capture_output=True, check=False)


def _run(
    command: Sequence[str],
    user: str | None = None,
    env: dict | None = None,
    log: Path | None = None,
) -> None:
    """Run a set-up command (as `user` through runuser); its output, and the end of `log`,
    in the error."""
    full = [_system_tool("runuser"), "-u", user, "--", *command] if user else list(command)
    done = subprocess.run(full, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        output = " ".join((done.stderr or done.stdout).split())[-600:]
        more = f"\nits log:\n{_tail(log)}" if log is not None else ""
        name = Path(command[0]).name
        raise GroupServerError(f"`{name}` failed ({done.returncode}): {output}{more}")


@contextlib.contextmanager
def running_postgres(port: int | None = None) -> Iterator[Postgres]:
    """Start PostgreSQL in a new temporary folder (removed at the end), listening on
    127.0.0.1 with its socket in that folder, and create a database for MLflow owned by a
    password-protected role.

    Args:
        port: the TCP port; a free one when None.

    Raises:
        GroupServerError: PostgreSQL is not installed or did not start.
    """
    problem = missing_postgres()
    if problem is not None:
        raise GroupServerError(problem)
    bin_dir = postgres_bin()
    assert bin_dir is not None
    folder = Path(tempfile.mkdtemp(prefix="myelomet-postgres-"))
    port = port or free_port()
    password = secrets.token_urlsafe(18)
    data, log = folder / "data", folder / "postgres.log"
    try:
        with _system_user() as user:
            server = Postgres(port, DB_USER, password, DATABASE, folder, user)
            pwfile = folder / "pwfile"
            pwfile.write_text(password)
            if user is not None:
                shutil.chown(folder, user)
                shutil.chown(pwfile, user)
            os.chmod(pwfile, 0o600)
            _run(
                [
                    str(bin_dir / "initdb"),
                    "-D", str(data),
                    "-U", DB_USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                user,
            )  # fmt: skip
            pwfile.unlink()
            options = f"-k {folder} -h {HOST} -p {port}"
            pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
            try:
                _run([*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"], user,
                     log=log)  # fmt: skip
                server = dataclasses.replace(server, database="postgres").new_database(DATABASE)
                yield server
            finally:
                if (data / "postmaster.pid").exists():
                    _run([*pg_ctl, "-m", "fast", "-w", "stop"], user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class GroupServer:
    """A running MLflow server with basic auth and proxied artifacts on PostgreSQL.

    Attributes:
        uri: the tracking URI, `http://127.0.0.1:PORT`.
        admin_user: the admin's user name.
        admin_password: the admin's password.
        database_url: the PostgreSQL backend store (SQLAlchemy URL).
        conninfo: the same database as `psycopg.connect` takes it.
        artifacts: the folder the server keeps artifacts in (`--artifacts-destination`).
        folder: the temporary folder of the server's files (auth database, log).
        pid: the `mlflow server` process (a process group of its own).
    """

    uri: str
    admin_user: str
    admin_password: str
    database_url: str
    conninfo: str
    artifacts: Path
    folder: Path
    pid: int

    def env(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        """MLFLOW_TRACKING_URI/USERNAME/PASSWORD for a client: the admin's by default."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": user or self.admin_user,
            "MLFLOW_TRACKING_PASSWORD": password or self.admin_password,
        }

    def create_user(
        self, user: str, password: str, permission: Permission = "EDIT", admin: bool = False
    ) -> None:
        """Create a user with `permission` on every experiment and registered model (EDIT:
        a member who trains and registers; READ: one who only looks and predicts); an
        `admin` may do everything.

        Raises:
            GroupServerError: the server refused (the user exists, say).
        """
        self._call("users/create", {"username": user, "password": password})
        if permission != DEFAULT_PERMISSION:
            self.grant(user, "*", permission)
            self.grant(user, "*", permission, "registered_model")
        if admin:
            self._call("users/update-admin", {"username": user, "is_admin": True}, "PATCH")

    def grant(
        self,
        user: str,
        resource_id: str,
        permission: Permission,
        resource_type: Literal["experiment", "registered_model"] = "experiment",
    ) -> None:
        """Give `user` `permission` on one experiment (by id) or registered model (by name),
        or on every one (`*`).

        Raises:
            GroupServerError: the server refused (no such user, say).
        """
        body = {
            "username": user,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "permission": permission,
        }
        self._call("users/permissions/grant", body, version=3)

    def _call(self, path: str, body: dict, method: str = "POST", version: int = 2) -> dict:
        token = base64.b64encode(f"{self.admin_user}:{self.admin_password}".encode()).decode()
        request = urllib.request.Request(
            f"{self.uri}/api/{version}.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                text = reply.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise GroupServerError(f"{method} {path}: HTTP {exc.code} {detail}") from None
        return json.loads(text) if text else {}


def _auth_config(folder: Path, permission: Permission) -> Path:
    """The auth app's ini (MLFLOW_AUTH_CONFIG_PATH): users in a sqlite file in `folder`."""
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        f"default_permission = {permission}\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
    )
    return config


def server_command(database_url: str, artifacts: Path, port: int, workers: int) -> list[str]:
    """The `mlflow server` command of the group setup (production runs the same against
    its own database, artifact folder and port)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", database_url,
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--app-name", "basic-auth",
        "--host", HOST,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


@contextlib.contextmanager
def running_mlflow_server(
    postgres: Postgres,
    port: int | None = None,
    workers: int = 2,
    permission: Permission = DEFAULT_PERMISSION,
) -> Iterator[GroupServer]:
    """An MLflow server with basic auth and proxied artifacts on `postgres`'s database, its
    artifacts, users and log in a temporary folder removed at the end.

    Args:
        postgres: the running PostgreSQL whose database holds the runs and the registry.
        port: the server's port; a free one when None.
        workers: the server's worker processes.
        permission: what signed-in users may do by default.

    Raises:
        GroupServerError: the server exited or did not answer (its log's end is in the
            message).
    """
    folder = Path(tempfile.mkdtemp(prefix="myelomet-mlflow-server-"))
    artifacts = folder / "artifacts"
    artifacts.mkdir()
    port = port or free_port()
    password = secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(folder, permission)),
        # no GenAI job runners (six huey processes): the group's studies need none
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    log = folder / "mlflow-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            server_command(postgres.url, artifacts, port, workers),
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = GroupServer(
        f"http://{HOST}:{port}",
        ADMIN_USER,
        password,
        postgres.url,
        postgres.conninfo,
        artifacts,
        folder,
        proc.pid,
    )
    try:
        _await(server, proc, log)
        yield server
    finally:
        stop_process_group(proc)
        shutil.rmtree(folder, ignore_errors=True)


def _await(server: GroupServer, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GroupServerError(
                f"mlflow server exited with code {proc.returncode}:\n{_tail(log)}"
            )
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise GroupServerError(f"mlflow server did not answer in {STARTUP_TIMEOUT_S} s:\n{_tail(log)}")


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a server started in a session of its own (its process group), SIGKILL the
    group if it does not exit in `timeout` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a group server in the foreground until Ctrl-C; print what to export."""
    parser = argparse.ArgumentParser(
        prog="python -m myelomet.group_server",
        description="A throwaway group MLflow server (PostgreSQL, basic auth, proxied "
        "artifacts) on 127.0.0.1 for trying the group setup; everything is removed at exit.",
    )
    parser.add_argument("--port", type=int, default=5000, help="the server's port (5000)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (2)")
    args = parser.parse_args(argv)
    print(f"starting PostgreSQL and mlflow server on {HOST}:{args.port} ...", flush=True)
    try:
        with (
            running_postgres() as postgres,
            running_mlflow_server(postgres, args.port, args.workers) as server,
        ):
            print(f"MLflow server with basic auth: {server.uri} (Ctrl-C stops it)")
            print("export in the shell you run myelomet in:")
            for key, value in server.env().items():
                print(f"  export {key}={value}")
            runs_as = f" (runs as system user {postgres.system_user})" * bool(postgres.system_user)
            print(f"artifacts go to {server.artifacts}; PostgreSQL: {server.database_url}{runs_as}")
            print("all of it is deleted when this stops", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                while True:
                    time.sleep(3600)
    except GroupServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
