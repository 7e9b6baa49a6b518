"""How a file that `myelomet synthesize` wrote is recognised: its File Meta names the
synthesizer's implementation, and a private element says it portrays no one. Only such files
may be pseudonymised with the public demo key (`deid.study_key`), whatever folder they are in.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian

IMPLEMENTATION_UID = "2.25.145279823764210955357325357218383612403"
IMPLEMENTATION_VERSION = "MYELOMET_SYN1"
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "MYELOMET SYNTHETIC"
MARKER_ELEMENT = 0x01
MARKER_TEXT = "synthetic phantom by myelomet synthesize; portrays no one"


def mark(ds: Dataset) -> None:
    """Write the synthesizer's marks into `ds`, whose `file_meta` is already set."""
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(MARKER_ELEMENT, "LO", MARKER_TEXT)


def is_synthesized(path: Path) -> bool:
    """True when `path` is a regular file with both marks of `mark`; only its header is read
    (the File Meta first, then the rest of the header only when that matches)."""
    try:
        if not stat.S_ISREG(Path(path).stat().st_mode):
            return False
        with Path(path).open("rb") as f:
            read_preamble(f, force=True)
            meta = _read_file_meta_info(f)
        if (
            meta.get("ImplementationClassUID") != IMPLEMENTATION_UID
            or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian
        ):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
            ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=64 * 1024)
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        return block[MARKER_ELEMENT].value == MARKER_TEXT
    except Exception:  # not DICOM, unreadable, or without the marks: not the synthesizer's
        return False
