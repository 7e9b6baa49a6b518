"""Read one DICOM file into CT slices in Hounsfield units, or say why it can't be used.

`open_ct` takes a path or the file's bytes and checks the header, Pixel Data left unread;
`CtFile.slices` then decodes one frame at a time and yields it converted to HU with
pydicom's modality LUT (rescale slope/intercept, or a Modality LUT Sequence; per frame for
enhanced multi-frame CT), plus de-identified acquisition attributes, so memory holds about one
frame whatever the size of the file. `read_ct` collects every frame of a file into a
`CtImage`, for small inputs. A file that can't be used raises `DicomRejected` with one of the
`RejectReason` codes and a detail sentence that says what to do; the detail never holds a
file name or patient data.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import struct
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from components.config import IngestConfig


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


# Rows x Columns of one frame above which a file is rejected unread: the default of
# params.yaml ingest.max_frame_pixels (4096 x 4096).
MAX_FRAME_PIXELS = IngestConfig().max_frame_pixels


@dataclass(frozen=True)
class CtSlice:
    """One frame of a CT file: int16 HU, shape (rows, columns), and its `FRAME_COLUMNS`."""

    hu: np.ndarray = field(repr=False)
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class CtFile:
    """A CT file whose header passed every check; no pixel of it has been decoded yet.

    `slices` decodes, converts and yields one frame at a time. The three identifiers are PHI:
    use them only to derive pseudonyms.
    """

    n_frames: int
    rows: int
    columns: int
    patient_id: str = field(repr=False)
    sop_instance_uid: str = field(repr=False)
    series_instance_uid: str = field(repr=False)
    source: Path | bytes = field(repr=False)
    header: FileDataset = field(repr=False)
    transfer_syntax: UID = field(repr=False)

    def slices(self) -> Iterator[CtSlice]:
        """Each frame in HU with its attributes, in frame order, read from the source.

        Raises:
            DicomRejected: a frame can't be decoded or gives impossible HU; the file is then
                unusable as a whole, whatever was yielded before.
        """
        ds, tsyntax = self.header, self.transfer_syntax
        identifiers = _identifiers(ds)
        with _pixel_stream(self.source, ds) as stream:
            for i, pixels in enumerate(_decoded_frames(stream, ds, tsyntax, self.n_frames)):
                lut = _frame_lut(ds, i)
                hu = _to_hu(pixels, lut, ds)
                yield CtSlice(
                    hu,
                    _frame_attributes(
                        ds, tsyntax, hu, i, self.n_frames, *_rescale_of(lut), identifiers
                    ),
                )


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


def open_ct(source: Path | str | bytes, max_frame_pixels: int = MAX_FRAME_PIXELS) -> CtFile:
    """Read and check a CT image file's header; its frames are decoded by `CtFile.slices`.

    Accepts any transfer syntax pydicom has a decoder plugin for (uncompressed little or
    big endian, deflated, RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K) and files without a File
    Meta header. Pixel Data is not read here: a frame over `max_frame_pixels`, a Pixel Data
    shorter than the header says and an impossible rescale are rejected before it is.

    Args:
        source: path of the file, or its bytes.
        max_frame_pixels: the most Rows x Columns of one frame (params ingest.max_frame_pixels).

    Returns:
        The checked file, to decode frame by frame.

    Raises:
        DicomRejected: the file is not a usable greyscale CT image; `reason` says why.
    """
    if not isinstance(source, bytes | bytearray | memoryview):
        source = Path(source)
    ds = _read(source)
    _require_pixel_data(ds)
    _require_ct(ds)
    _require_greyscale(ds)
    rows, columns, n_frames = _geometry(ds, max_frame_pixels)
    tsyntax = _transfer_syntax(ds)
    _require_decoder(tsyntax)
    _require_pixel_length(ds, tsyntax, rows * columns * n_frames)
    # frames past the per-frame groups share one LUT: check each distinct one once
    distinct = min(n_frames, len(ds.get("PerFrameFunctionalGroupsSequence") or ()) + 1)
    for i in range(distinct):
        _check_rescale(_rescale_of(_frame_lut(ds, i)))
    return CtFile(
        n_frames=n_frames,
        rows=rows,
        columns=columns,
        patient_id=str(ds.get("PatientID", "") or "").strip(),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or "").strip(),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        source=source,
        header=ds,
        transfer_syntax=tsyntax,
    )


def read_ct(source: Path | str | bytes, max_frame_pixels: int = MAX_FRAME_PIXELS) -> CtImage:
    """Read a CT image file and convert every frame to HU, all of them in memory at once.

    For single slices and small files; `open_ct` and `CtFile.slices` go through a large
    multi-frame file one frame at a time.

    Args:
        source: path of the file, or its bytes.
        max_frame_pixels: the most Rows x Columns of one frame (params ingest.max_frame_pixels).

    Returns:
        The slices in HU with their de-identified attributes.

    Raises:
        DicomRejected: the file is not a usable greyscale CT image; `reason` says why.
    """
    ct = open_ct(source, max_frame_pixels)
    slices = list(ct.slices())
    return CtImage(
        hu=np.stack([s.hu for s in slices]),
        frames=tuple(s.attributes for s in slices),
        patient_id=ct.patient_id,
        sop_instance_uid=ct.sop_instance_uid,
        series_instance_uid=ct.series_instance_uid,
    )


# Elements larger than this are left in the file until used: Pixel Data is decoded from the
# file frame by frame, never read whole.
_DEFER_BYTES = 64 * 1024
_PIXEL_DATA = 0x7FE00010


def _read(source: Path | bytes) -> FileDataset:
    """Parse the file, large values left unread (force=True, so files without a File Meta
    header are read too)."""
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
            ds = pydicom.dcmread(fp, force=True, defer_size=_DEFER_BYTES)
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
    if ds.buffer is not None:  # what was parsed: the bytes given, or a deflated file inflated
        size = len(ds.buffer.getvalue())

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


def _has_dicm_prefix(source: Path | bytes) -> bool:
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
    """True when the last element is cut short, or the header of a next one is (see below).

    `size` is that of the parsed bytes; a value left unread (deferred) is checked too.
    """
    tags = sorted(ds.keys())
    if not tags:
        return True
    last = ds.get_item(tags[-1], keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.length == _UNDEFINED_LENGTH:
        return False
    if last.value_tell + last.length > size:
        return True
    if _PIXEL_DATA in ds:
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
    found = (
        f"modality {safe_text(modality, _identifiers(ds))}" if modality else "no Modality attribute"
    )
    raise DicomRejected(
        RejectReason.MODALITY_NOT_CT,
        f"{found}, expected CT; keep only the CT series in the patient folder",
    )


def _require_greyscale(ds: Dataset) -> None:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric in _GREY:
        return
    shown = safe_text(photometric, _identifiers(ds)) if photometric else "missing"
    raise DicomRejected(
        RejectReason.COLOUR_IMAGE,
        f"photometric interpretation {shown} with {samples} samples per pixel; "
        "only greyscale (MONOCHROME1/2) CT carries HU, colour images are usually screenshots "
        "or reformats, leave them out",
    )


def _geometry(ds: Dataset, max_frame_pixels: int) -> tuple[int, int, int]:
    """(rows, columns, frames) of the image, checked before any pixel is read.

    A missing or zero NumberOfFrames means one frame, as pydicom reads it.
    """
    rows, columns = _int(ds.get("Rows")), _int(ds.get("Columns"))
    n_frames = _int(ds.get("NumberOfFrames")) or 1
    if rows is None or columns is None or rows < 1 or columns < 1 or n_frames < 1:
        raise DicomRejected(
            RejectReason.UNREADABLE,
            f"the header gives {rows} rows, {columns} columns and {n_frames} frames; the "
            "image attributes are broken, re-export the file from the PACS",
        )
    if rows * columns > max_frame_pixels:
        raise DicomRejected(
            RejectReason.FRAME_TOO_LARGE,
            f"one frame is {rows} x {columns} = {rows * columns} pixels, over the limit of "
            f"{max_frame_pixels} (ingest.max_frame_pixels in params.yaml); a CT slice is "
            "usually 512 x 512, so check the file's Rows and Columns, and raise the limit only "
            "if the image is real",
        )
    return rows, columns, n_frames


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


def _require_pixel_length(ds: Dataset, tsyntax: UID, n_pixels: int) -> None:
    """Uncompressed Pixel Data must hold every pixel the header declares (compressed frames
    are checked as they are decoded)."""
    pixel_data = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if tsyntax.is_encapsulated or pixel_data.length == _UNDEFINED_LENGTH:
        return
    bits = _int(ds.get("BitsAllocated")) or 0  # missing: the decoder says so
    if pixel_data.length >= math.ceil(n_pixels * bits / 8):
        return
    raise DicomRejected(
        RejectReason.TRUNCATED,
        "the Pixel Data is shorter than Rows x Columns x frames needs; the file is "
        "truncated or its image attributes are wrong, copy it again from the source",
    )


@contextlib.contextmanager
def _pixel_stream(source: Path | bytes, ds: FileDataset) -> Iterator[BinaryIO]:
    """The parsed bytes, to decode Pixel Data from: the file itself, or the bytes in memory
    (those given, or a deflated file inflated by pydicom)."""
    if ds.buffer is not None:
        yield io.BytesIO(ds.buffer.getvalue())  # shares the bytes, with its own position
        return
    with Path(source).open("rb") as f:
        yield f


def _decoded_frames(
    stream: BinaryIO, ds: Dataset, tsyntax: UID, n_frames: int
) -> Iterator[np.ndarray]:
    """The stored values of each frame, (rows, columns), decoded one at a time."""
    frames = _pydicom_frames(stream, ds, tsyntax, n_frames)
    for _ in range(n_frames):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = next(frames)
        except StopIteration:
            raise DicomRejected(
                RejectReason.UNREADABLE,
                f"the {_syntax_label(tsyntax)} pixel data holds fewer frames than the "
                f"{n_frames} of NumberOfFrames; re-export the file",
            ) from None
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # a decoder plugin's Rust panic is no Exception
            raise _decode_failure(exc, tsyntax) from None
        yield pixels


def _pydicom_frames(
    stream: BinaryIO, ds: Dataset, tsyntax: UID, n_frames: int
) -> Iterator[np.ndarray]:
    """pydicom's decoder over the Pixel Data value in `stream`, frame by frame."""
    pixel_data = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    stream.seek(pixel_data.value_tell)
    # Implicit VR records no VR: pydicom takes OW for it (it matters for big endian only).
    options = as_pixel_options(
        ds,
        number_of_frames=n_frames,
        pixel_keyword="PixelData",
        pixel_vr=pixel_data.VR or "OW",
    )
    for pixels, _ in get_decoder(tsyntax).iter_array(stream, **options):
        yield pixels


def _decode_failure(exc: BaseException, tsyntax: UID) -> DicomRejected:
    """The rejection of a frame pydicom could not decode."""
    message = str(exc)
    if "missing dependencies" in message:
        hint = _INSTALL_HINT.get(str(tsyntax), "install a decoder plugin for it")
        return DicomRejected(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{_syntax_label(tsyntax)}: no working decoder plugin; {hint}",
        )
    if isinstance(exc, ValueError | RuntimeError | AttributeError | NotImplementedError):
        return DicomRejected(
            RejectReason.UNREADABLE,
            f"could not decode the {_syntax_label(tsyntax)} pixel data "
            f"({type(exc).__name__}: {_first_line(message)}); re-export the file or convert it "
            "with `gdcmconv --raw IN OUT`",
        )
    return DicomRejected(
        RejectReason.UNREADABLE,
        f"could not decode the {_syntax_label(tsyntax)} pixel data "
        f"({type(exc).__name__}: {_first_line(message)}); re-export the file",
    )


def _first_line(message: str, limit: int = 160) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line[:limit]


def _to_hu(pixels: np.ndarray, lut: Dataset, ds: Dataset) -> np.ndarray:
    """One frame's modality LUT (`lut`: its rescale attributes), rounded to int16 HU."""
    return _rounded(_checked_range(apply_modality_lut(pixels, lut), _padding_mask(pixels, ds)))


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


def _frame_lut(ds: Dataset, frame: int) -> Dataset:
    """The modality LUT attributes of one frame: those of its functional groups (enhanced
    multi-frame images), else the dataset itself."""
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
