"""Read one DICOM file into CT slices in Hounsfield units, or say why it can't be used.

`read_ct` takes a path or the file's bytes and returns a `CtImage`: every frame converted to
HU with pydicom's modality LUT (rescale slope/intercept, or a Modality LUT Sequence; per frame
for enhanced multi-frame CT), plus de-identified acquisition attributes per frame. A file
that can't be used raises `DicomRejected` with one of the `RejectReason` codes and a detail
sentence that says what to do; the detail never holds a file name or patient data.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)


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
class CtImage:
    """The CT slices of one DICOM file.

    `hu` holds every frame as int16 HU, shape (frames, rows, columns). `frames` holds one
    mapping of de-identified attributes per frame (the manifest columns, see
    `FRAME_COLUMNS`). The three identifiers are PHI: use them only to derive pseudonyms.
    """

    hu: np.ndarray = field(repr=False)
    frames: tuple[Mapping[str, Any], ...]
    patient_id: str = field(repr=False)
    sop_instance_uid: str = field(repr=False)
    series_instance_uid: str = field(repr=False)


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

# Elements a real dataset without a File Meta header has and random bytes almost never do.
_CORE_TAGS = (
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080060,  # Modality
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00280010,  # Rows
    0x7FE00010,  # PixelData
)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_GREY = ("MONOCHROME1", "MONOCHROME2")
_INT16 = np.iinfo(np.int16)

_LIBJPEG = "run `pip install pylibjpeg pylibjpeg-libjpeg` (or `pip install python-gdcm`)"
_OPENJPEG = "run `pip install pylibjpeg pylibjpeg-openjpeg` (or `pip install python-gdcm`)"
_INSTALL_HINT = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG,
    "1.2.840.10008.1.2.4.51": _LIBJPEG,
    "1.2.840.10008.1.2.4.57": _LIBJPEG,
    "1.2.840.10008.1.2.4.70": _LIBJPEG,
    "1.2.840.10008.1.2.4.80": _LIBJPEG.replace("python-gdcm", "pyjpegls"),
    "1.2.840.10008.1.2.4.81": _LIBJPEG.replace("python-gdcm", "pyjpegls"),
    "1.2.840.10008.1.2.4.90": _OPENJPEG,
    "1.2.840.10008.1.2.4.91": _OPENJPEG,
    "1.2.840.10008.1.2.4.201": "run `pip install pylibjpeg pylibjpeg-openjpeg`",
    "1.2.840.10008.1.2.4.202": "run `pip install pylibjpeg pylibjpeg-openjpeg`",
    "1.2.840.10008.1.2.4.203": "run `pip install pylibjpeg pylibjpeg-openjpeg`",
    "1.2.840.10008.1.2.5": "run `pip install pylibjpeg pylibjpeg-rle`",
}


def read_ct(source: Path | str | bytes) -> CtImage:
    """Read a CT image file and convert every frame to HU.

    Accepts any transfer syntax pydicom has a decoder plugin for (uncompressed little or
    big endian, deflated, RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K) and files without a File
    Meta header.

    Args:
        source: path of the file, or its bytes.

    Returns:
        The slices in HU with their de-identified attributes.

    Raises:
        DicomRejected: the file is not a usable greyscale CT image; `reason` says why.
    """
    ds = _read(source)
    _require_pixel_data(ds)
    _require_ct(ds)
    _require_greyscale(ds)
    tsyntax = _transfer_syntax(ds)
    _require_decoder(tsyntax)
    pixels = _decode(ds, tsyntax)
    hu, rescale = _to_hu(pixels, ds)
    identifiers = _identifiers(ds)
    frames = tuple(
        _frame_attributes(ds, tsyntax, hu[i], i, len(hu), *rescale[i], identifiers)
        for i in range(len(hu))
    )
    return CtImage(
        hu=hu,
        frames=frames,
        patient_id=str(ds.get("PatientID", "") or "").strip(),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
    )


def _read(source: Path | str | bytes) -> Dataset:
    """Parse the file (force=True, so files without a File Meta header are read too)."""
    if isinstance(source, bytes | bytearray | memoryview):
        fp: Any = io.BytesIO(source)
        size = len(source)
    else:
        fp = Path(source)
        try:
            size = fp.stat().st_size
            with fp.open("rb"):  # permissions, a dangling or looping link: say so here
                pass
        except OSError as exc:
            raise DicomRejected(
                RejectReason.UNREADABLE,
                f"the file can't be opened ({exc.strerror}); check it exists and is readable",
            ) from None
    if size == 0:
        raise DicomRejected(RejectReason.NOT_DICOM, "the file is empty (0 bytes)")

    with warnings.catch_warnings(record=True) as caught:
        # pydicom warns about odd values (and may quote them): keep that off the console.
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(fp, force=True)
        except Exception as exc:
            if not _has_dicm_prefix(source):
                raise DicomRejected(
                    RejectReason.NOT_DICOM,
                    "not a DICOM file (no DICM prefix and no DICOM elements)",
                ) from None
            if isinstance(exc, EOFError | struct.error | BytesLengthException):
                raise DicomRejected(
                    RejectReason.TRUNCATED,
                    f"the file ends inside its header ({size} bytes); copy it again from the "
                    "source",
                ) from None
            raise DicomRejected(
                RejectReason.UNREADABLE,
                f"pydicom could not parse it ({type(exc).__name__}); the file may be corrupt, "
                "re-export it from the PACS",
            ) from None
    hit_eof = any(_mentions_eof(str(w.message)) for w in caught)

    has_header = ds.preamble is not None or len(ds.file_meta) > 0
    if not has_header and not any(tag in ds for tag in _CORE_TAGS):
        raise DicomRejected(
            RejectReason.NOT_DICOM,
            "not a DICOM file (no DICM prefix and no SOP, Modality or image elements)",
        )
    if hit_eof or _ends_early(ds, size):
        raise DicomRejected(
            RejectReason.TRUNCATED,
            f"the file ends inside a data element ({size} bytes); copy it again from the source",
        )
    return ds


def _has_dicm_prefix(source: Path | str | bytes) -> bool:
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[128:132])
    else:
        try:
            with open(source, "rb") as f:
                f.seek(128)
                head = f.read(4)
        except OSError:
            return False
    return head == b"DICM"


def _mentions_eof(message: str) -> bool:
    # pydicom's EOFError texts, turned into warnings by dcmread: "Unexpected end of file...",
    # "End of file reached before delimiter...". Not "eof": a warning may quote "Geoffrey".
    return "end of file" in message.lower()


def _ends_early(ds: Dataset, size: int) -> bool:
    """True when the last element is cut short, or the header of a next one is (see below)."""
    tags = sorted(ds.keys())
    if not tags:
        return True
    last = ds.get_item(tags[-1])
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH:
        return False
    if last.value is not None and len(last.value) < last.length:
        return True
    if 0x7FE00010 in ds:
        return False  # stray bytes after complete Pixel Data do no harm
    # 1 to 7 bytes left over: pydicom stops silently on a partial element header.
    left_over = size - (last.value_tell + last.length)
    return 0 < left_over < 8


def _require_pixel_data(ds: Dataset) -> None:
    if "PixelData" in ds:
        return
    what = _sop_class_name(ds) or "no SOP Class UID"
    raise DicomRejected(
        RejectReason.NO_PIXEL_DATA,
        f"no Pixel Data ({what}); only image objects can be ingested, "
        "remove non-image files (reports, structure sets, DICOMDIR) or ignore this line",
    )


def _require_ct(ds: Dataset) -> None:
    modality = str(ds.get("Modality", "") or "").strip()
    if modality == "CT":
        return
    found = f"modality {modality}" if modality else "no Modality attribute"
    raise DicomRejected(
        RejectReason.MODALITY_NOT_CT,
        f"{found}, expected CT; keep only the CT series in the patient folder",
    )


def _require_greyscale(ds: Dataset) -> None:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric in _GREY:
        return
    raise DicomRejected(
        RejectReason.COLOUR_IMAGE,
        f"photometric interpretation {photometric or 'missing'} with {samples} samples per pixel; "
        "only greyscale (MONOCHROME1/2) CT carries HU, colour images are usually screenshots "
        "or reformats, leave them out",
    )


def _transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax, set from the parsed encoding when the File Meta lacks it."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax:
        return UID(tsyntax)
    implicit, little = ds.original_encoding
    if implicit:
        tsyntax = ImplicitVRLittleEndian
    else:
        tsyntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


# Newer than pydicom 3.0's UID dictionary.
_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def _syntax_label(tsyntax: UID) -> str:
    name = _SYNTAX_NAMES.get(str(tsyntax)) or tsyntax.name
    if name and name != str(tsyntax):
        return name
    # Not a standard syntax: the value could be any UID, so it stays out of the outputs.
    return "an unknown transfer syntax (look it up with `dcmdump` on the file)"


def _require_decoder(tsyntax: UID) -> None:
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DicomRejected(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{_syntax_label(tsyntax)}: pydicom has no decoder for it; convert the "
            "file to an uncompressed transfer syntax with a tool that reads it (e.g. "
            "`gdcmconv --raw IN OUT` from GDCM, if it supports this syntax) and ingest again",
        ) from None
    if decoder.is_available:
        return
    hint = _INSTALL_HINT.get(
        str(tsyntax), "install one of: " + "; ".join(decoder.missing_dependencies)
    )
    raise DicomRejected(
        RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
        f"{_syntax_label(tsyntax)}: no decoder plugin is installed; {hint}",
    )


def _decode(ds: Dataset, tsyntax: UID) -> np.ndarray:
    """All frames as (frames, rows, columns)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except (ValueError, RuntimeError, AttributeError, NotImplementedError) as exc:
        message = str(exc)
        if "less than expected" in message:
            raise DicomRejected(
                RejectReason.TRUNCATED,
                "the Pixel Data is shorter than Rows x Columns x frames needs; the file is "
                "truncated or its image attributes are wrong, copy it again from the source",
            ) from None
        if "missing dependencies" in message:
            hint = _INSTALL_HINT.get(str(tsyntax), "install a decoder plugin for it")
            raise DicomRejected(
                RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
                f"{_syntax_label(tsyntax)}: no working decoder plugin; {hint}",
            ) from None
        raise DicomRejected(
            RejectReason.UNREADABLE,
            f"could not decode the {_syntax_label(tsyntax)} pixel data "
            f"({type(exc).__name__}: {_first_line(message)}); re-export the file or convert it "
            "with `gdcmconv --raw IN OUT`",
        ) from None
    except Exception as exc:
        raise DicomRejected(
            RejectReason.UNREADABLE,
            f"could not decode the {_syntax_label(tsyntax)} pixel data "
            f"({type(exc).__name__}: {_first_line(str(exc))}); re-export the file",
        ) from None
    rows, columns = int(ds.Rows), int(ds.Columns)
    return pixels.reshape(-1, rows, columns)


def _first_line(message: str, limit: int = 160) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line[:limit]


def _to_hu(
    pixels: np.ndarray, ds: Dataset
) -> tuple[np.ndarray, list[tuple[float | None, float | None, str]]]:
    """Apply the modality LUT and round to int16; also (slope, intercept, source) per frame."""
    n = len(pixels)
    per_frame = [_frame_lut(ds, i) for i in range(n)] if _has_functional_rescale(ds) else None
    padding = _padding_mask(pixels, ds)
    if per_frame is None:
        _check_rescale(_rescale_of(ds))
        hu = _rounded(_checked_range(apply_modality_lut(pixels, ds), padding))
        return hu, [_rescale_of(ds)] * n
    hu = np.empty(pixels.shape, dtype=np.int16)
    for i, lut in enumerate(per_frame):
        _check_rescale(_rescale_of(lut))
        hu[i] = _rounded(_checked_range(apply_modality_lut(pixels[i], lut), padding[i]))
    return hu, [_rescale_of(lut) for lut in per_frame]


# Hounsfield units a CT file can hold: tissue starts at air (-1000) and dense metal reaches
# about 30000; below air only fill values for pixels outside the scanned field, down to
# -3024 (GE and Siemens write it, often without declaring Pixel Padding) and -3072.
HU_RANGE = (-4096, 32767)


def _check_rescale(rescale: tuple[float | None, float | None, str]) -> None:
    slope, intercept, _ = rescale
    if slope is not None and (not math.isfinite(slope) or slope == 0):
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            f"RescaleSlope is {slope}: every pixel would map to one value or none; the "
            "file's modality LUT is broken, export the series again",
        )
    if intercept is not None and not math.isfinite(intercept):
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            f"RescaleIntercept is {intercept}; the file's modality LUT is broken, export the "
            "series again",
        )


def _padding_mask(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """True where a stored value is Pixel Padding (outside the scanned field, e.g. GE's
    -2000 stored for -3024 HU): not tissue, so not held to HU_RANGE."""
    mask = np.zeros(pixels.shape, dtype=bool)
    value = _float(ds.get("PixelPaddingValue"))
    if value is None:
        return mask
    limit = _float(ds.get("PixelPaddingRangeLimit"))
    low, high = (value, value) if limit is None else sorted((value, limit))
    return (pixels >= low) & (pixels <= high)


def _checked_range(values: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """`values` (HU) when they are finite and, padding aside, within HU_RANGE."""
    tissue = values[~padding] if padding.any() else values
    if tissue.size == 0 or not np.isfinite(tissue).all():
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            "the modality LUT gives no finite Hounsfield units; export the series again",
        )
    low, high = float(tissue.min()), float(tissue.max())
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            f"Hounsfield units {low:.0f}..{high:.0f} after rescale lie outside the "
            f"{HU_RANGE[0]}..{HU_RANGE[1]} a CT scanner produces; check RescaleSlope and "
            "RescaleIntercept",
        )
    return values


def _rounded(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        values = np.rint(values)
    # Clipping only matters for broken rescale values; real CT stays far inside int16.
    return np.clip(values, _INT16.min, _INT16.max).astype(np.int16)


def _rescale_of(ds: Dataset) -> tuple[float | None, float | None, str]:
    if ds.get("ModalityLUTSequence"):
        return None, None, "modality_lut_sequence"
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return (
            _float(ds.get("RescaleSlope", 1.0)),
            _float(ds.get("RescaleIntercept", 0.0)),
            "rescale",
        )
    return None, None, "none"


def _has_functional_rescale(ds: Dataset) -> bool:
    return _functional_item(ds, 0, "PixelValueTransformationSequence") is not None


def _frame_lut(ds: Dataset, frame: int) -> Dataset:
    """The modality LUT attributes of one frame of an enhanced multi-frame image."""
    item = _functional_item(ds, frame, "PixelValueTransformationSequence")
    if item is None:
        return ds
    lut = Dataset()
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in item:
            setattr(lut, keyword, item[keyword].value)
    return lut


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
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
        item = _functional_item(ds, frame, sequence)
        if item is not None and keyword in item:
            return item[keyword].value
    return ds.get(keyword)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
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


def _identifiers(ds: Dataset) -> frozenset[str]:
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


def _sop_class_name(ds: Dataset) -> str:
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        return ""
    uid = UID(str(sop_class))
    # A private SOP class UID is not patient data, but keep UIDs out of outputs anyway.
    return uid.name if uid.name != str(uid) else "private SOP class"


def _frame_attributes(
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
        "sop_class": _sop_class_name(ds),
        "rows": int(hu.shape[0]),
        "columns": int(hu.shape[1]),
        "pixel_spacing_row": spacing_row,
        "pixel_spacing_col": spacing_col,
        "slice_thickness": _float(_lookup(ds, "SliceThickness", frame, "PixelMeasuresSequence")),
        "position_z": position_z,
        "instance_number": _int(ds.get("InstanceNumber")),
        "body_part": text(ds.get("BodyPartExamined")),
        "manufacturer": text(ds.get("Manufacturer")),
        "model": text(ds.get("ManufacturerModelName")),
        "kernel": text(_lookup(ds, "ConvolutionKernel", frame, "CTReconstructionSequence")),
        "kvp": _float(_lookup(ds, "KVP", frame, "CTXRayDetailsSequence")),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "hu_source": hu_source,
        "bits_stored": _int(ds.get("BitsStored")),
        "pixel_representation": _int(ds.get("PixelRepresentation")),
        "photometric": text(ds.get("PhotometricInterpretation")),
        "transfer_syntax": tsyntax.keyword or _syntax_label(tsyntax),
        "burned_in_annotation": text(ds.get("BurnedInAnnotation")),
        "hu_min": int(hu.min()),
        "hu_max": int(hu.max()),
    }
