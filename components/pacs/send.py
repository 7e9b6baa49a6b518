"""Send the answers (`components.pacs.answers`) where the user says, and nowhere else.

Three destinations: a folder (`--dicom-out DIR`, one `<SOPInstanceUID>.dcm` per object,
written under a temporary name and renamed when complete), a DICOMweb root by STOW-RS
(`--stow URL`, credentials from MYELOMET_PACS_USER and MYELOMET_PACS_PASSWORD or a netrc
entry, as `myelomet pull` takes them) and a DICOM peer by C-STORE (`--cstore AET@HOST:PORT`).
Each series' answer that cannot be delivered is one line naming the series (by its folder,
never a UID or an identifier of the patient) and what to do; the others are still sent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from components.atomic import atomic_path
from components.data.rejects import DicomRejected
from components.pacs.answers import ModelIdentity, SeriesAnswer, answer_series
from components.pacs.source import PASSWORD_ENV, USER_ENV, DicomWebSource, parse_source
from components.registry.serving import Predictor

SUCCESS = 0x0000


@dataclass(frozen=True)
class FolderTarget:
    """A folder to write the objects into (created when missing)."""

    folder: Path

    def __str__(self) -> str:
        return str(self.folder)


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb root to store the objects into by STOW-RS."""

    source: DicomWebSource

    def __str__(self) -> str:
        return self.source.url


@dataclass(frozen=True)
class CStoreTarget:
    """A DICOM peer to store the objects into by C-STORE, calling it as `calling_aet`."""

    aet: str
    host: str
    port: int
    calling_aet: str

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


Target = FolderTarget | StowTarget | CStoreTarget


def parse_cstore(text: str, calling_aet: str) -> CStoreTarget:
    """The peer `--cstore AET@HOST:PORT` names.

    Raises:
        ValueError: the text is not of that form, or the AE title is not 1 to 16 characters.
    """
    aet, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--cstore {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@pacs:4242")
    if not 1 <= len(aet) <= 16:
        raise ValueError(f"--cstore: AE title {aet!r} must be 1 to 16 characters")
    return CStoreTarget(aet, host, int(port), calling_aet)


def targets(
    dicom_out: str | None,
    stow: str | None,
    cstore: str | None,
    calling_aet: str,
    ca_bundle: Path | None = None,
) -> list[Target]:
    """The destinations the command line names (none when it names none).

    Raises:
        ValueError: a STOW URL or C-STORE peer is malformed, or holds credentials.
    """
    out: list[Target] = []
    if dicom_out:
        out.append(FolderTarget(Path(dicom_out)))
    if stow:
        source = parse_source(stow, ca_bundle)
        if not isinstance(source, DicomWebSource):
            raise ValueError(f"--stow {stow!r}: expected a DICOMweb root, http(s)://HOST/...")
        out.append(StowTarget(source))
    if cstore:
        out.append(parse_cstore(cstore, calling_aet))
    return out


def _objects(answer: SeriesAnswer) -> list[Dataset]:
    return [answer.report, answer.overlay]


def write_folder(answers: Sequence[SeriesAnswer], target: FolderTarget) -> list[str]:
    """Write every object as `<folder>/<SOPInstanceUID>.dcm`.

    Returns:
        One line per series whose objects could not be written.
    """
    failures = []
    for answer in answers:
        try:
            target.folder.mkdir(parents=True, exist_ok=True)
            for ds in _objects(answer):
                _write(ds, target.folder / f"{ds.SOPInstanceUID}.dcm")
        except OSError as exc:
            failures.append(
                f"{answer.series}: not written to {target} ({type(exc).__name__}: "
                f"{exc.strerror or exc}); check the folder is writable and has space"
            )
    return failures


def _write(ds: Dataset, final: Path) -> None:
    """Write `ds` under a temporary name, then rename it: no half file is ever `final`."""
    with atomic_path(final, ".partial") as partial:
        ds.save_as(partial, enforce_file_format=True)


def _stow_failure(answer: SeriesAnswer, target: StowTarget, exc: Exception) -> str:
    where = f"{answer.series}: not stored at {target}"
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return (
                f"{where} (HTTP {status}): set {USER_ENV} and {PASSWORD_ENV} (or a netrc "
                "entry) to an account that may store into this study"
            )
        return f"{where} (HTTP {status}); check the URL is the DICOMweb root and the PACS log"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"{where}: TLS failed; pass the hospital's CA with --ca-bundle"
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return f"{where}: unreachable ({type(exc).__name__}); check the URL and the network"
    return f"{where}: {type(exc).__name__}; check the URL is a DICOMweb root that accepts STOW-RS"


def stow(answers: Sequence[SeriesAnswer], target: StowTarget, timeout_s: float) -> list[str]:
    """Store each series' objects by one STOW-RS request into their study.

    Returns:
        One line per series whose objects could not be stored.
    """
    session = requests.Session()
    session.auth = target.source.auth
    if target.source.ca_bundle is not None:
        session.verify = str(target.source.ca_bundle)
    client = DICOMwebClient(target.source.url, session=session, timeout=timeout_s)
    failures = []
    for answer in answers:
        objects = _objects(answer)
        try:
            client.store_instances(objects, study_instance_uid=objects[0].StudyInstanceUID)
        except (requests.RequestException, ValueError) as exc:
            failures.append(_stow_failure(answer, target, exc))
    return failures


def cstore(answers: Sequence[SeriesAnswer], target: CStoreTarget, timeout_s: float) -> list[str]:
    """Store every object by C-STORE over one association.

    Returns:
        One line per series whose objects could not be stored (every series when the peer
        cannot be reached or refuses the association).
    """
    # pynetdicom's own log lines may quote identifiers of the datasets it sends
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    ae = AE(ae_title=target.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for a in answers for ds in _objects(a)}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(target.host, target.port, ae_title=target.aet)
    if not assoc.is_established:
        why = (
            f"refused the association; check the called AE title and that it accepts "
            f"{target.calling_aet} (params pull.calling_aet)"
            if assoc.is_rejected
            else "unreachable; check the host and port"
        )
        return [f"{a.series}: not stored, {target} {why}" for a in answers]
    failures = []
    try:
        for answer in answers:
            try:
                statuses = [assoc.send_c_store(ds).get("Status") for ds in _objects(answer)]
            except (RuntimeError, ValueError) as exc:  # the association ended, no context
                failures.append(f"{answer.series}: not stored at {target} ({exc})")
                continue
            if any(status != SUCCESS for status in statuses):
                codes = ", ".join("none" if s is None else f"0x{s:04X}" for s in statuses)
                failures.append(
                    f"{answer.series}: not stored at {target} (C-STORE status {codes}); see "
                    "the PACS log"
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return failures


def send(answers: Sequence[SeriesAnswer], target: Target, timeout_s: float) -> list[str]:
    """Deliver the answers to one destination.

    Returns:
        One line per series not delivered.
    """
    if isinstance(target, FolderTarget):
        return write_folder(answers, target)
    if isinstance(target, StowTarget):
        return stow(answers, target, timeout_s)
    return cstore(answers, target, timeout_s)


@dataclass(frozen=True)
class Delivery:
    """What `deliver` did.

    Attributes:
        answered: the series whose answers were built.
        failures: one line per series whose answer could not be built or delivered somewhere.
    """

    answered: int
    failures: list[str]


def deliver(
    results: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    predictor: Predictor,
    model: ModelIdentity,
    to: Sequence[Target],
    timeout_s: float,
) -> Delivery:
    """Answer each predicted series as DICOM (`answers.answer_series`) and send the answers
    to every target; series that errored are left out.

    Args:
        results: `Predictor.series_with_slices` output.
        predictor: the model that answered.
        model: its name, version and alias in the registry.
        to: the destinations.
        timeout_s: network timeout of STOW-RS and C-STORE.
    """
    built: list[SeriesAnswer] = []
    failures: list[str] = []
    for row, slices in results:
        if "error" in row:
            continue
        try:
            built.append(answer_series(row, slices, predictor, model))
        except (ValueError, DicomRejected) as exc:
            failures.append(f"{row['series']}: no DICOM answer built ({exc})")
    for target in to:
        if built:
            failures.extend(send(built, target, timeout_s))
    return Delivery(len(built), failures)
