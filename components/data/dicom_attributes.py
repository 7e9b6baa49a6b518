"""The de-identified attributes of a CT frame, and the safe reading of header values.

`FRAME_COLUMNS` are the manifest columns `frame_attributes` gives for one frame. The helpers
read values out of a header without trusting them: numbers that may be missing or malformed,
attributes of enhanced multi-frame images in their functional groups, free text copied only
when `safe_text` finds it holds no patient identifier, and names of SOP classes and transfer
syntaxes that keep UIDs out of the outputs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

# Attributes of each frame, in manifest order; none of them identifies a patient.
FRAME_COLUMNS: tuple[str, ...] = (
    "frame",
    "n_frames",
    "modality",
    "sop_class",
    "rows",
    "columns",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "slice_thickness",
    "position_z",
    "instance_number",
    "body_part",
    "manufacturer",
    "model",
    "kernel",
    "kvp",
    "rescale_slope",
    "rescale_intercept",
    "hu_source",
    "bits_stored",
    "pixel_representation",
    "photometric",
    "transfer_syntax",
    "burned_in_annotation",
    "hu_min",
    "hu_max",
)


# Newer than pydicom 3.0's UID dictionary.
_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def syntax_label(tsyntax: UID) -> str:
    """The transfer syntax's name, fit for an output: never a UID that is not standard."""
    name = _SYNTAX_NAMES.get(str(tsyntax)) or tsyntax.name
    if name and name != str(tsyntax):
        return name
    # Not a standard syntax: the value could be any UID, so it stays out of the outputs.
    return "an unknown transfer syntax (look it up with `dcmdump` on the file)"


def functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """First item of `sequence` in the frame's functional groups, else the shared ones."""
    for groups_keyword, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if groups and len(groups) > index:
            items = groups[index].get(sequence)
            if items:
                return items[0]
    return None


def _lookup(ds: Dataset, keyword: str, frame: int, sequence: str | None = None) -> Any:
    """A top-level attribute, or the frame's functional-group one for enhanced images."""
    if sequence is not None:
        item = functional_item(ds, frame, sequence)
        if item is not None and keyword in item:
            return item[keyword].value
    return ds.get(keyword)


def as_float(value: Any) -> float | None:
    """`value` as a float, None when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    """`value` as an int, None when it is missing or not an integer."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# What a retained free-text value may look like: scanner names, kernels, body parts.
_SAFE_TEXT = re.compile(r"[A-Za-z0-9 ._+\-/()]*")
SAFE_TEXT_MAX = 64  # the longest LO value
REDACTED = "redacted"
# Attributes whose values (and name components) are the patient's own identifiers.
_IDENTIFYING = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
    "IssuerOfPatientID", "OtherPatientNames", "PatientMotherBirthName", "MedicalRecordLocator",
)  # fmt: skip


def patient_identifiers(ds: Dataset) -> frozenset[str]:
    """The patient's identifiers in this file, upper case: whole values and the parts of
    names and IDs (at least 3 characters), for `safe_text` to look for."""
    found: set[str] = set()
    for keyword in _IDENTIFYING:
        value = ds.get(keyword)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple | MultiValue) else [value]
        for item in values:
            whole = str(item).strip().upper()
            found.add(whole)
            found.update(re.split(r"[\^\s,.\-_/]+", whole))
    return frozenset(v for v in found if len(v) >= 3)


def safe_text(value: str, identifiers: frozenset[str] = frozenset()) -> str:
    """`value` when it is safe to copy into an output, else REDACTED: a strict character
    set, at most SAFE_TEXT_MAX characters, and none of the patient's identifiers in it."""
    if not value:
        return ""
    upper = value.upper()
    if (
        len(value) > SAFE_TEXT_MAX
        or not _SAFE_TEXT.fullmatch(value)
        or any(token in upper for token in identifiers)
    ):
        return REDACTED
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "/".join(str(v).strip() for v in value)
    return str(value).strip()


def _pair(value: Any) -> tuple[float | None, float | None]:
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None, None


def sop_class_name(ds: Dataset) -> str:
    """The name of the file's SOP class, empty when it has none; never a UID."""
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        return ""
    uid = UID(str(sop_class))
    # A private SOP class UID is not patient data, but keep UIDs out of outputs anyway.
    return uid.name if uid.name != str(uid) else "private SOP class"


def frame_attributes(
    ds: Dataset,
    tsyntax: UID,
    hu: np.ndarray,
    frame: int,
    n_frames: int,
    slope: float | None,
    intercept: float | None,
    hu_source: str,
    identifiers: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The manifest columns of one frame; free-text tags pass `safe_text`."""

    def text(value: Any) -> str:
        return safe_text(_text(value), identifiers)

    spacing_row, spacing_col = _pair(_lookup(ds, "PixelSpacing", frame, "PixelMeasuresSequence"))
    position = _lookup(ds, "ImagePositionPatient", frame, "PlanePositionSequence")
    try:
        position_z = float(position[2]) if position is not None else None
    except (TypeError, ValueError, IndexError):
        position_z = None
    return {
        "frame": frame,
        "n_frames": n_frames,
        "modality": "CT",
        "sop_class": sop_class_name(ds),
        "rows": int(hu.shape[0]),
        "columns": int(hu.shape[1]),
        "pixel_spacing_row": spacing_row,
        "pixel_spacing_col": spacing_col,
        "slice_thickness": as_float(_lookup(ds, "SliceThickness", frame, "PixelMeasuresSequence")),
        "position_z": position_z,
        "instance_number": as_int(ds.get("InstanceNumber")),
        "body_part": text(ds.get("BodyPartExamined")),
        "manufacturer": text(ds.get("Manufacturer")),
        "model": text(ds.get("ManufacturerModelName")),
        "kernel": text(_lookup(ds, "ConvolutionKernel", frame, "CTReconstructionSequence")),
        "kvp": as_float(_lookup(ds, "KVP", frame, "CTXRayDetailsSequence")),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "hu_source": hu_source,
        "bits_stored": as_int(ds.get("BitsStored")),
        "pixel_representation": as_int(ds.get("PixelRepresentation")),
        "photometric": text(ds.get("PhotometricInterpretation")),
        "transfer_syntax": tsyntax.keyword or syntax_label(tsyntax),
        "burned_in_annotation": text(ds.get("BurnedInAnnotation")),
        "hu_min": int(hu.min()),
        "hu_max": int(hu.max()),
    }
