"""Why a file was not used: the reason codes, the exception that carries one, the record of it.

Reading a file raises `DicomRejected` with a `RejectReason` and a detail sentence that says
what to do; ingest adds the reasons it decides itself (labels, duplicates) and keeps each
rejected file as a `Reject`, one row of rejects.csv.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class RejectReason(StrEnum):
    """Why a file was not used; the `reason` column of rejects.csv."""

    NOT_DICOM = "not_dicom"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    MODALITY_NOT_CT = "modality_not_ct"
    COLOUR_IMAGE = "colour_image"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    UNREADABLE = "unreadable"
    BAD_RESCALE = "bad_rescale"
    FRAME_TOO_LARGE = "frame_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    NOT_REGULAR_FILE = "not_regular_file"
    # Decided by ingest, not by reading the file:
    NO_LABEL = "no_label"
    UNKNOWN_LABEL = "unknown_label"
    DUPLICATE = "duplicate"
    CONFLICTING_LABEL = "conflicting_label"


class DicomRejected(Exception):
    """A file that can't be ingested, with a reason code and an actionable detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Reject:
    """A file not used. `path` is the real path: show it on the console, never write it."""

    source: str
    reason: RejectReason
    detail: str
    path: Path = field(repr=False)
