"""The de-identified attributes of a CT frame, and the safe reading of header values.

`FRAME_COLUMNS` are the manifest columns `frame_attributes` gives for one frame. No text of
the header is copied into them: the scanner's maker becomes a name from a fixed vocabulary
(`vendor`), its model, reconstruction kernel and body part become keyed pseudonyms
(`scanner-…`, `kernel-…`, `bodypart-…`: equal values get equal pseudonyms, so they can
stratify, and nobody without the key can read or test them), coded attributes keep only
their defined terms, and numbers are kept within the range a CT scanner gives. The helpers
read values without trusting them: numbers that may be missing or malformed, attributes of
enhanced multi-frame images in their functional groups, and names of SOP classes and
transfer syntaxes that keep UIDs out of the outputs.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from components.data.deid import pseudonym

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

# The prefixes of the keyed pseudonyms of the free-text attributes (see `frame_attributes`).
SCANNER_PREFIX = "scanner"
KERNEL_PREFIX = "kernel"
BODY_PART_PREFIX = "bodypart"
PSEUDONYM_LENGTH = 12

OTHER = "other"  # a maker out of the vocabulary, a burned-in flag neither YES nor NO
# Each vendor and the words of Manufacturer (upper-case ASCII, split at anything else) that
# name it, former names included: Toshiba Medical became Canon, Hitachi's imaging Fujifilm,
# and Marconi (formerly Picker) and Elscint's CT went to Philips.
_VENDOR_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GE", ("GE", "GEMS", "GEHC", "GENERAL ELECTRIC", "IMATRON")),
    ("Siemens", ("SIEMENS",)),
    ("Philips", ("PHILIPS", "MARCONI", "PICKER", "ELSCINT")),
    ("Canon/Toshiba", ("CANON", "TOSHIBA")),
    ("Hitachi", ("HITACHI",)),
    ("Fujifilm", ("FUJIFILM", "FUJI")),
    ("United Imaging", ("UIH", "UNITED IMAGING")),
    ("Neusoft", ("NEUSOFT",)),
    ("Samsung/NeuroLogica", ("SAMSUNG", "NEUROLOGICA")),
    ("Shimadzu", ("SHIMADZU",)),
)
VENDORS: tuple[str, ...] = (*(name for name, _ in _VENDOR_WORDS), OTHER)

GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
# Defined terms of coded attributes (PS3.3): only these are ever shown, any other text is not.
PHOTOMETRIC_TERMS = frozenset(
    {
        *GREYSCALE, "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL", "YBR_FULL_422",
        "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
    }
)  # fmt: skip
MODALITY_TERMS = frozenset(
    {
        "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DG", "DMS",
        "DOC", "DX", "ECG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS",
        "KER", "KO", "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT", "OP", "OPM", "OPT",
        "OPV", "OSS", "OT", "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG",
        "RTDOSE", "RTIMAGE", "RTPLAN", "RTRECORD", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR",
        "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC",
    }
)  # fmt: skip
BURNED_IN_TERMS = ("YES", "NO")

# The range of each number a CT frame can hold. A value outside it is no measurement (a date
# or an ID typed into the wrong field, say) and is left out: no bound leaves room for 6
# digits before the decimal point, so no date or record number is copied as a number.
_POSITION_MM = 99_999.0
_SPACING_MM = 1_000.0
_KVP = 1_000.0
_INSTANCES = 99_999
_RESCALE = 99_999.0


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


def _within(value: float | None, low: float, high: float) -> float | None:
    """`value` when it is a finite number in [low, high], else None."""
    if value is None or not math.isfinite(value) or not low <= value <= high:
        return None
    return value


def _text(value: Any) -> str:
    """The value as one string, the values of a multi-valued one joined with `/`."""
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "/".join(str(v).strip() for v in value)
    return str(value).strip()


def _words(value: str) -> str:
    """`value` in upper-case ASCII words, one space apart: accents dropped, anything that
    is not a letter or digit a separator (`Siemens-Healthineers` -> `SIEMENS HEALTHINEERS`)."""
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return " ".join(re.split(r"[^A-Z0-9]+", ascii_text.upper())).strip()


def vendor(manufacturer: Any) -> str:
    """The maker named by a Manufacturer value, from `VENDORS`; "" when there is none.

    Exactly one vendor's words must occur in it as whole words; any other text (no known
    maker, or two of them) is `other`, so no text of the header is ever passed on.
    """
    words = _words(_text(manufacturer))
    if not words:
        return ""
    padded = f" {words} "
    found = {name for name, names in _VENDOR_WORDS if any(f" {n} " in padded for n in names)}
    return found.pop() if len(found) == 1 else OTHER


def text_pseudonym(value: Any, prefix: str, key: bytes | None) -> str:
    """The keyed pseudonym of a free-text attribute, "" when it is empty or there is no key.

    The text is compared as Unicode NFKC, case-folded, runs of white space made one space,
    so `B70f` and ` b70F` are one kernel.
    """
    text = " ".join(unicodedata.normalize("NFKC", _text(value)).casefold().split())
    if not text or not key:
        return ""
    return pseudonym(key, text, prefix, PSEUDONYM_LENGTH)


def coded(value: Any, terms: frozenset[str] | tuple[str, ...]) -> str | None:
    """A coded attribute's value when it is one of its defined `terms`, else None."""
    text = _text(value).upper()
    return text if text in terms else None


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


def _burned_in(value: Any) -> str:
    if not _text(value):
        return ""
    return coded(value, BURNED_IN_TERMS) or OTHER


def frame_attributes(
    ds: Dataset,
    tsyntax: UID,
    hu: np.ndarray,
    frame: int,
    n_frames: int,
    slope: float | None,
    intercept: float | None,
    hu_source: str,
    key: bytes | None = None,
) -> dict[str, Any]:
    """The manifest columns of one frame, none of them header text.

    `manufacturer` is a name of `VENDORS`; `model`, `kernel` and `body_part` are pseudonyms
    under `key` (empty without one: predict and serving write no manifest); `photometric`
    and `burned_in_annotation` keep their defined terms only (any other burned-in value is
    `other`); numbers out of a CT scanner's range are left empty.
    """
    spacing_row, spacing_col = _pair(_lookup(ds, "PixelSpacing", frame, "PixelMeasuresSequence"))
    position = _lookup(ds, "ImagePositionPatient", frame, "PlanePositionSequence")
    try:
        position_z = float(position[2]) if position is not None else None
    except (TypeError, ValueError, IndexError):
        position_z = None
    thickness = as_float(_lookup(ds, "SliceThickness", frame, "PixelMeasuresSequence"))
    instance = as_float(ds.get("InstanceNumber"))
    kvp = as_float(_lookup(ds, "KVP", frame, "CTXRayDetailsSequence"))
    manufacturer = vendor(ds.get("Manufacturer"))
    # the model under its maker's name: two makers' "CT 64" are two scanners
    model = _text(ds.get("ManufacturerModelName"))
    kernel = _lookup(ds, "ConvolutionKernel", frame, "CTReconstructionSequence")
    return {
        "frame": frame,
        "n_frames": n_frames,
        "modality": "CT",
        "sop_class": sop_class_name(ds),
        "rows": int(hu.shape[0]),
        "columns": int(hu.shape[1]),
        "pixel_spacing_row": _within(spacing_row, 0.0, _SPACING_MM),
        "pixel_spacing_col": _within(spacing_col, 0.0, _SPACING_MM),
        "slice_thickness": _within(thickness, 0.0, _SPACING_MM),
        "position_z": _within(position_z, -_POSITION_MM, _POSITION_MM),
        "instance_number": as_int(_within(instance, 0, _INSTANCES)),
        "body_part": text_pseudonym(ds.get("BodyPartExamined"), BODY_PART_PREFIX, key),
        "manufacturer": manufacturer,
        "model": text_pseudonym(model and f"{manufacturer}/{model}", SCANNER_PREFIX, key),
        "kernel": text_pseudonym(kernel, KERNEL_PREFIX, key),
        "kvp": _within(kvp, 0.0, _KVP),
        "rescale_slope": _within(slope, -_RESCALE, _RESCALE),
        "rescale_intercept": _within(intercept, -_RESCALE, _RESCALE),
        "hu_source": hu_source,
        "bits_stored": as_int(ds.get("BitsStored")),
        "pixel_representation": as_int(ds.get("PixelRepresentation")),
        "photometric": coded(ds.get("PhotometricInterpretation"), GREYSCALE) or "",
        "transfer_syntax": tsyntax.keyword or syntax_label(tsyntax),
        "burned_in_annotation": _burned_in(ds.get("BurnedInAnnotation")),
        "hu_min": int(hu.min()),
        "hu_max": int(hu.max()),
    }
