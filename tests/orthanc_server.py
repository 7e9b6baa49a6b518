"""A real Orthanc PACS with the DICOMweb plugin, on free loopback ports in a temporary folder.

`running_orthanc` starts `Orthanc CONFIG.json` in the foreground with its own storage and
index folders, waits until it answers HTTP, and stops it and removes its files at the end;
the `orthanc` fixture gives each test a fresh one (it starts in well under a second).
Orthanc 1.10 has no bind-address setting, so both ports listen on every interface:
`RemoteAccessAllowed` is false, the ports are free ones picked at start, and the server lives
only as long as the test. DIMSE is open to any calling AE title (echo, store, find, get,
move). Tests that need it skip, naming the Debian packages, when `Orthanc` or the DICOMweb
plugin is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pytest
import requests

from tests.processes import await_answer, free_port, stop

PACKAGES = "orthanc orthanc-dicomweb"
INSTALL = f"apt-get install {PACKAGES}"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)
AET = "ORTHANC"
STARTUP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: where to reach it and how to fill it.

    Attributes:
        http_url: the REST root, e.g. `http://127.0.0.1:PORT`.
        host: DIMSE host (127.0.0.1).
        dicom_port: DIMSE port.
        aet: Orthanc's AE title.
        folder: the temporary folder holding its config, storage and log.
        auth: (user, password) when the server asks for them, else None.
    """

    http_url: str
    host: str
    dicom_port: int
    aet: str
    folder: Path
    auth: tuple[str, str] | None = None

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, e.g. `http://127.0.0.1:PORT/dicom-web`."""
        return f"{self.http_url}/dicom-web"

    @property
    def dimse_url(self) -> str:
        """The source as `myelomet pull --source` takes it: `dimse://AET@HOST:PORT`."""
        return f"dimse://{self.aet}@{self.host}:{self.dicom_port}"

    def answers(self) -> bool:
        """Whether its DICOMweb answers a search for studies."""
        reply = requests.get(f"{self.dicomweb_url}/studies", auth=self.auth, timeout=2)
        return reply.status_code in (200, 204)

    def upload(self, paths: Iterable[Path]) -> list[str]:
        """Store each DICOM file by `POST /instances`; return the Orthanc instance IDs."""
        ids = []
        for path in paths:
            reply = requests.post(
                f"{self.http_url}/instances",
                data=Path(path).read_bytes(),
                auth=self.auth,
                timeout=60,
            )
            reply.raise_for_status()
            ids.append(reply.json()["ID"])
        return ids

    def upload_tree(self, root: Path) -> list[str]:
        """Upload every file under `root` (any depth); return the Orthanc instance IDs."""
        return self.upload(sorted(p for p in Path(root).rglob("*") if p.is_file()))

    def stow(self, paths: Iterable[Path]) -> None:
        """Store the DICOM files by STOW-RS through the DICOMweb plugin."""
        import pydicom
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = self.auth
        client = DICOMwebClient(self.dicomweb_url, session=session)
        client.store_instances([pydicom.dcmread(p) for p in paths])

    def get(self, path: str) -> object:
        """`GET` a REST path (e.g. `/instances`) and return its JSON."""
        reply = requests.get(f"{self.http_url}{path}", auth=self.auth, timeout=60)
        reply.raise_for_status()
        return reply.json()

    def instance_count(self) -> int:
        """How many instances Orthanc stores."""
        return int(self.get("/statistics")["CountInstances"])  # type: ignore[index]

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register a DICOM peer (e.g. a C-MOVE destination) under `name`."""
        reply = requests.put(
            f"{self.http_url}/modalities/{name}",
            json={"AET": aet, "Host": host, "Port": port},
            auth=self.auth,
            timeout=30,
        )
        reply.raise_for_status()


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library, None when it is not installed."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob(pattern))
        if found:
            return Path(found[0])
    return None


def orthanc_command() -> str | None:
    """The `Orthanc` executable: on the PATH, else in the sbin folders Debian puts it in."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def missing_packages() -> str | None:
    """Why Orthanc can't start here (naming the packages to install), None when it can."""
    if orthanc_command() is None:
        return f"`Orthanc` is not on the PATH: {INSTALL} (Debian/Ubuntu) to run these tests"
    if dicomweb_plugin() is None:
        return f"Orthanc's DICOMweb plugin is not installed: {INSTALL} to run these tests"
    return None


def _config(folder: Path, http_port: int, dicom_port: int, users: dict[str, str] | None) -> dict:
    plugin = dicomweb_plugin()
    return {
        "Name": "myelomet-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": users is not None,
        "RegisteredUsers": users or {},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "UnknownSopClassAccepted": True,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


@contextmanager
def running_orthanc(folder: Path, users: dict[str, str] | None = None) -> Iterator[Orthanc]:
    """Start Orthanc in `folder` (created; its files removed at the end) and yield it.

    Args:
        folder: a folder of its own for the config, storage, index and log.
        users: user -> password to require HTTP basic authentication; None for none.

    Raises:
        RuntimeError: Orthanc is not installed, exited, or did not answer in time (its log
            tail is in the message).
    """
    problem = missing_packages()
    if problem is not None:
        raise RuntimeError(problem)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(_config(folder, http_port, dicom_port, users), indent=2))
    log = folder / "orthanc.log"
    auth = next(iter(users.items())) if users else None
    server = Orthanc(f"http://127.0.0.1:{http_port}", "127.0.0.1", dicom_port, AET, folder, auth)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(orthanc_command()), str(config)],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await_answer("Orthanc", proc, log, server.answers, STARTUP_TIMEOUT_S, pause_s=0.1)
        yield server
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A fresh, empty Orthanc with DICOMweb and DIMSE on loopback; skips when not installed."""
    problem = missing_packages()
    if problem is not None:
        pytest.skip(problem)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
