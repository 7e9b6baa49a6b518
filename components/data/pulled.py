"""The marks of a file `myelomet pull` wrote: the pseudonyms ingest takes as given.

Pull replaces a file's PatientID, UIDs and every other identifier before writing it, so
ingest could no longer compute the pseudonyms from them. Pull therefore writes the
pseudonyms ingest of the original file computes (patient, series, one image id per frame)
into a private block, with a check value of the key they were made with. Ingest takes them
as given when the check matches its own key, and rejects the file when it does not: mixing
two keys would give one patient two names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from components.data.deid import pseudonym
from components.data.rejects import DicomRejected, RejectReason

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "MYELOMET PULLED"
KEY_CHECK = 0x01
PATIENT = 0x02
SERIES = 0x03
IMAGES = 0x04
_KEY_CHECK_VALUE = "myelomet pull key check"
_PSEUDONYM = re.compile(r"[a-z]{2}-[0-9a-f]{1,64}")


@dataclass(frozen=True)
class GivenNames:
    """The pseudonyms of a pulled file: its patient, its series, each frame's image id."""

    patient: str
    series: str
    images: tuple[str, ...]


def key_check(key: bytes) -> str:
    """A value that tells whether two keys are the same without revealing either."""
    return pseudonym(key, _KEY_CHECK_VALUE, "kc", 16)


def mark(ds: Dataset, key: bytes, names: GivenNames) -> None:
    """Write the pseudonyms and the key check into `ds`'s private block."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(KEY_CHECK, "LO", key_check(key))
    block.add_new(PATIENT, "LO", names.patient)
    block.add_new(SERIES, "LO", names.series)
    block.add_new(IMAGES, "LO", list(names.images))


def given_names(ds: Dataset, key: bytes) -> GivenNames | None:
    """The pseudonyms `mark` wrote into `ds`, None when it carries no such block.

    Raises:
        DicomRejected: the block was written with another key, or is malformed.
    """
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    except Exception:  # a malformed private creator: not pull's, and not worth a reject
        return None
    try:
        check = str(block[KEY_CHECK].value)
        patient = str(block[PATIENT].value)
        series = str(block[SERIES].value)
        raw = block[IMAGES].value
    except Exception:
        raise DicomRejected(
            RejectReason.UNREADABLE,
            "its `myelomet pull` block is incomplete or malformed; pull the series again",
        ) from None
    images = (str(raw),) if isinstance(raw, str) else tuple(str(v) for v in raw)
    if check != key_check(key):
        raise DicomRejected(
            RejectReason.UNREADABLE,
            "it was pulled with another de-identification key; ingest it with the key "
            "`myelomet pull` used (the same key variable or key file)",
        )
    if not all(_PSEUDONYM.fullmatch(v) for v in (patient, series, *images)):
        raise DicomRejected(
            RejectReason.UNREADABLE,
            "its `myelomet pull` block holds values that are not pseudonyms; pull it again",
        )
    return GivenNames(patient, series, images)
