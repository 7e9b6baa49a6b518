"""Where `myelomet pull` fetches from: a DICOMweb root or a DIMSE peer, and the credentials.

`--source http(s)://HOST:PORT/dicom-web` or `dimse://AET@HOST:PORT`. Credentials never come
from the command line or params.yaml: from MYELOMET_PACS_USER and MYELOMET_PACS_PASSWORD,
else from a netrc file (NETRC, else ~/.netrc) entry for the host.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

USER_ENV = "MYELOMET_PACS_USER"
PASSWORD_ENV = "MYELOMET_PACS_PASSWORD"


@dataclass(frozen=True)
class DicomWebSource:
    """A DICOMweb root (QIDO-RS and WADO-RS under it)."""

    url: str
    auth: tuple[str, str] | None = field(default=None, repr=False)
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class DimseSource:
    """A DICOM peer for C-FIND and C-GET."""

    aet: str
    host: str
    port: int


Source = DicomWebSource | DimseSource


def parse_source(text: str, ca_bundle: Path | None = None) -> Source:
    """The source that `--source` names.

    Raises:
        ValueError: the text is neither form, or a credential setting is incomplete.
    """
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.hostname:
        if parts.username or parts.password:
            raise ValueError(
                "--source must not hold credentials (they would land in shell history and "
                f"logs); set {USER_ENV} and {PASSWORD_ENV}, or use a netrc file"
            )
        return DicomWebSource(text.rstrip("/"), credentials(parts.hostname), ca_bundle)
    if parts.scheme == "dimse" and parts.hostname and parts.username and parts.port:
        aet = parts.username
        if not 1 <= len(aet) <= 16:
            raise ValueError(f"--source: AE title {aet!r} must be 1 to 16 characters")
        return DimseSource(aet, parts.hostname, parts.port)
    raise ValueError(
        "--source must be `http(s)://HOST:PORT/dicom-web` (DICOMweb) or `dimse://AET@HOST:PORT` "
        "(C-FIND and C-GET)"
    )


def credentials(host: str) -> tuple[str, str] | None:
    """(user, password) from the environment, else from a netrc entry for `host`, else None.

    Raises:
        ValueError: only one of the two variables is set, or the netrc file is malformed.
    """
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user is not None or password is not None:
        if not user or password is None:
            raise ValueError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
        return user, password
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError as exc:
        raise ValueError(f"{path}: malformed netrc file (line {exc.lineno}); fix it") from None
    if entry is None:
        return None
    login, _, secret = entry
    return (login, secret or "") if login else None
