"""What pull asks of a PACS, whatever the protocol, and the ways it can fail.

A `Remote` finds a cohort row's series (`find`), lists a series' instances (`instances`)
and fetches some of them (`fetch`), handing each received dataset to a callback in memory.
Failures that end the whole pull (`PacsError`: unreachable, authentication, a refused
association) are told apart from transient ones (`TransientError`, retried with backoff).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import UID

T = TypeVar("T")
Deliver = Callable[[Dataset, UID], None]


class PacsError(Exception):
    """The PACS can't be used at all (unreachable, credentials refused, association refused)."""


class TransientError(Exception):
    """A failure worth another try (a dropped connection, a 5xx, an aborted association)."""


@dataclass(frozen=True)
class RemoteSeries:
    """One series the PACS holds; the UIDs and PatientID are identifiers, never shown."""

    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    modality: str


class Remote(Protocol):
    """A PACS that pull reads from."""

    def find(self, key: str, value: str) -> tuple[int, list[RemoteSeries]]:
        """(studies found, their series) for a cohort row (`key` accession_number or
        patient_id)."""
        ...

    def instances(self, series: RemoteSeries) -> list[str]:
        """The SOP Instance UIDs of a series."""
        ...

    def batches(self, sop_uids: list[str], whole: bool) -> list[list[str]]:
        """How to split a series' missing instances (`whole`: all of it) into fetches."""
        ...

    def fetch(
        self, series: RemoteSeries, sop_uids: list[str], whole: bool, deliver: Deliver
    ) -> None:
        """Fetch these instances of the series (`whole`: they are all of it), calling
        `deliver` with each."""
        ...


def with_retries(call: Callable[[], T], retries: int, backoff_s: float, what: str) -> T:
    """`call()`, tried again after `backoff_s`, then twice as long, ... on TransientError.

    Raises:
        PacsError: still failing after `retries` more tries (says what was tried).
    """
    wait = backoff_s
    for _ in range(retries):
        try:
            return call()
        except TransientError:
            time.sleep(wait)
            wait *= 2
    try:
        return call()
    except TransientError as exc:
        raise PacsError(f"{what} failed {retries + 1} times: {exc}") from None
