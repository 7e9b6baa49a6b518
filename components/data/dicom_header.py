"""Read a DICOM file's header and check it can be a CT slice, Pixel Data left unread.

`read_header` parses a path or bytes and tells a file that is not DICOM from one that is
truncated or corrupt; the `require_*` checks and `geometry` turn down what is not a
greyscale CT image whose pixels can be decoded. Each failure raises `DicomRejected` with its
`RejectReason` and a detail that says what to do, never a file name or patient data.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from components.data.dicom_attributes import (
    GREYSCALE,
    MODALITY_TERMS,
    PHOTOMETRIC_TERMS,
    as_int,
    coded,
    sop_class_name,
    syntax_label,
)
from components.data.rejects import DicomRejected, RejectReason

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
_MOST_FRAMES = 99_999  # a NumberOfFrames quoted in a message: no room for a date or an ID

_LIBJPEG = "run `pip install pylibjpeg pylibjpeg-libjpeg` (or `pip install python-gdcm`)"
_OPENJPEG = "run `pip install pylibjpeg pylibjpeg-openjpeg` (or `pip install python-gdcm`)"
INSTALL_HINT = {
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

# Elements larger than this are left in the file until used: Pixel Data is decoded from the
# file frame by frame, never read whole.
_DEFER_BYTES = 64 * 1024
PIXEL_DATA = 0x7FE00010


def read_header(source: Path | bytes) -> FileDataset:
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
    if PIXEL_DATA in ds:
        return False  # stray bytes after complete Pixel Data do no harm
    # 1 to 7 bytes left over: pydicom stops silently on a partial element header.
    left_over = size - (last.value_tell + last.length)
    return 0 < left_over < 8


def require_pixel_data(ds: Dataset) -> None:
    """Reject a file without Pixel Data (`no_pixel_data`)."""
    if "PixelData" in ds:
        return
    what = sop_class_name(ds) or "no SOP Class UID"
    raise DicomRejected(
        RejectReason.NO_PIXEL_DATA,
        f"no Pixel Data ({what}); only image objects can be ingested, "
        "remove non-image files (reports, structure sets, DICOMDIR) or ignore this line",
    )


def require_ct(ds: Dataset) -> None:
    """Reject a file whose Modality is not CT (`modality_not_ct`)."""
    modality = str(ds.get("Modality", "") or "").strip()
    if modality == "CT":
        return
    # only a defined term is shown: any other text could be anything typed at the scanner
    if not modality:
        found = "no Modality attribute"
    else:
        found = f"modality {coded(modality, MODALITY_TERMS) or 'of no defined term'}"
    raise DicomRejected(
        RejectReason.MODALITY_NOT_CT,
        f"{found}, expected CT; keep only the CT series in the patient folder",
    )


def require_greyscale(ds: Dataset) -> None:
    """Reject a colour image: only MONOCHROME1/2 with one sample carries HU (`colour_image`)."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric in GREYSCALE:
        return
    shown = coded(photometric, PHOTOMETRIC_TERMS) or (
        "of no defined term" if photometric else "missing"
    )
    raise DicomRejected(
        RejectReason.COLOUR_IMAGE,
        f"photometric interpretation {shown} with {samples} samples per pixel; "
        "only greyscale (MONOCHROME1/2) CT carries HU, colour images are usually screenshots "
        "or reformats, leave them out",
    )


def geometry(ds: Dataset, max_frame_pixels: int) -> tuple[int, int, int]:
    """(rows, columns, frames) of the image, checked before any pixel is read.

    A missing or zero NumberOfFrames means one frame, as pydicom reads it.
    """
    rows, columns = as_int(ds.get("Rows")), as_int(ds.get("Columns"))
    n_frames = as_int(ds.get("NumberOfFrames")) or 1
    if rows is None or columns is None or rows < 1 or columns < 1 or n_frames < 1:
        # Rows and Columns are 16-bit; NumberOfFrames is text, which could hold a record number
        frames = (
            n_frames if -_MOST_FRAMES <= n_frames <= _MOST_FRAMES else "an impossible number of"
        )
        raise DicomRejected(
            RejectReason.UNREADABLE,
            f"the header gives {rows} rows, {columns} columns and {frames} frames; the "
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


def transfer_syntax_of(ds: Dataset) -> UID:
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


def require_decoder(tsyntax: UID) -> None:
    """Reject a transfer syntax no installed pydicom plugin decodes
    (`unsupported_transfer_syntax`)."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DicomRejected(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{syntax_label(tsyntax)}: pydicom has no decoder for it; convert the "
            "file to an uncompressed transfer syntax with a tool that reads it (e.g. "
            "`gdcmconv --raw IN OUT` from GDCM, if it supports this syntax) and ingest again",
        ) from None
    if decoder.is_available:
        return
    hint = INSTALL_HINT.get(
        str(tsyntax), "install one of: " + "; ".join(decoder.missing_dependencies)
    )
    raise DicomRejected(
        RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
        f"{syntax_label(tsyntax)}: no decoder plugin is installed; {hint}",
    )


def require_pixel_length(ds: Dataset, tsyntax: UID, n_pixels: int) -> None:
    """Uncompressed Pixel Data must hold every pixel the header declares (compressed frames
    are checked as they are decoded)."""
    pixel_data = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if tsyntax.is_encapsulated or pixel_data.length == _UNDEFINED_LENGTH:
        return
    bits = as_int(ds.get("BitsAllocated")) or 0  # missing: the decoder says so
    if pixel_data.length >= math.ceil(n_pixels * bits / 8):
        return
    raise DicomRejected(
        RejectReason.TRUNCATED,
        "the Pixel Data is shorter than Rows x Columns x frames needs; the file is "
        "truncated or its image attributes are wrong, copy it again from the source",
    )
