"""What may be read of a DICOM source before pydicom parses it, and how much it may decode to.

Only regular files are opened: a FIFO would block the reader forever, a device never end.
The decoded size an image declares (Rows x Columns x frames x bytes per sample) is held to a
limit before any pixel is decompressed, and each compressed frame must say the size the
header does, so that no decoder is asked for more than one frame's worth. A deflated dataset,
which pydicom would inflate whole while parsing, is inflated here instead: its header first,
whose declared sizes are checked, then no further than that header allows.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_partial, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from components.data.dicom_attributes import as_int
from components.data.dicom_header import geometry
from components.data.rejects import DicomRejected, RejectReason

# The most bytes of a deflated dataset inflated to read its header (the elements before the
# pixels), and the most it may hold after them; a deflated file with more is refused.
HEADER_BYTES = 8 * 1024 * 1024
TRAILER_BYTES = 64 * 1024
_PIXEL_DATA = 0x7FE00010
_CHUNK = 64 * 1024
_DEFER_BYTES = 64 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def require_regular_file(path: Path) -> int:
    """The size of `path` once it is known to be a regular file (links followed), found
    without opening it.

    Raises:
        DicomRejected: `not_regular_file` for a pipe, socket, device or folder;
            `unreadable` when it can't be looked at (missing, no permission, a link loop).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DicomRejected(
            RejectReason.UNREADABLE,
            f"the file can't be opened ({exc.strerror}); check it exists and is readable",
        ) from None
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if stat.S_ISDIR(info.st_mode):
        raise DicomRejected(
            RejectReason.NOT_REGULAR_FILE,
            "a folder that was not walked: a link to a folder already read (a loop, or a "
            "second link to it), or a folder that can't be listed; remove the link or make "
            "the folder readable",
        )
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
    raise DicomRejected(
        RejectReason.NOT_REGULAR_FILE,
        f"it is {kind}, not a regular file, so it was not opened; keep only DICOM files in "
        "the tree",
    )


def require_image_size(
    ds: Dataset, rows: int, columns: int, n_frames: int, max_image_bytes: int
) -> None:
    """Reject an image whose pixels would decode to more than `max_image_bytes`
    (`image_too_large`), judged from the header alone."""
    bits = as_int(ds.get("BitsAllocated")) or 16
    samples = as_int(ds.get("SamplesPerPixel")) or 1
    size = rows * columns * n_frames * max(samples, 1) * math.ceil(max(bits, 1) / 8)
    if size <= max_image_bytes:
        return
    raise DicomRejected(
        RejectReason.IMAGE_TOO_LARGE,
        f"its {n_frames} frames of {rows} x {columns} pixels decode to {size} bytes, over the "
        f"limit of {max_image_bytes}; split the multi-frame file, or raise the limit "
        "(ingest.max_image_bytes in params.yaml) only if the image is real",
    )


def require_frame_sizes(
    stream: BinaryIO, ds: Dataset, tsyntax: UID, n_frames: int, rows: int, columns: int
) -> None:
    """Reject an encapsulated file whose compressed frames say a size other than Rows x
    Columns (`unreadable`): a decoder makes what its codestream says, whatever the header
    declares. The frames are read one at a time, none decoded."""
    if not tsyntax.is_encapsulated:
        return
    stream.seek(ds.get_item(_PIXEL_DATA, keep_deferred=True).value_tell)
    try:
        frames = list(_frame_sizes(stream, tsyntax, n_frames))
    except Exception:  # fragments that can't be split into frames: the decoder refuses them
        return
    for i, size in enumerate(frames, start=1):
        if size is not None and size != (rows, columns):
            raise DicomRejected(
                RejectReason.UNREADABLE,
                f"frame {i} is compressed as {size[0]} x {size[1]} pixels but the header says "
                f"{rows} x {columns}; the file is corrupt, re-export it",
            )


def _frame_sizes(stream: BinaryIO, tsyntax: UID, n_frames: int) -> Iterator[tuple[int, int] | None]:
    """`codestream_size` of each of the first `n_frames` frames, one frame read at a time."""
    for i, frame in enumerate(generate_frames(stream, number_of_frames=n_frames)):
        if i >= n_frames:
            return
        yield codestream_size(frame, tsyntax)


def codestream_size(frame: bytes, tsyntax: UID) -> tuple[int, int] | None:
    """(rows, columns) that a JPEG, JPEG-LS or JPEG 2000 frame says it holds; None for other
    syntaxes or when its header doesn't say."""
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        info = _get_jpg_parameters(frame)
        height, width = info.get("height"), info.get("width")
        return (height, width) if height and width else None
    if tsyntax in JPEG2000TransferSyntaxes:
        at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC, then SIZ (past any JP2 boxes)
        if at < 0 or len(frame) < at + 24:
            return None
        x, y, x0, y0 = struct.unpack(">4L", frame[at + 8 : at + 24])
        return y - y0, x - x0
    return None


def inflate_deflated(
    source: Path | bytes, max_frame_pixels: int, max_image_bytes: int
) -> bytes | None:
    """A Deflated Explicit VR Little Endian file as the bytes of the same file stored
    uncompressed (explicit VR little endian), inflated no further than its header allows;
    None when the file is not deflated or its File Meta can't be read (the parser says why).

    Raises:
        DicomRejected: the header is too large or declares too large an image, the deflated
            data is corrupt, or it inflates past the size its header declares.
    """
    with _opened(source) as fp:
        try:
            read_preamble(fp, force=True)
            meta = _read_file_meta_info(fp)
        except Exception:
            return None
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        inflater = _Inflater(fp)
        head = inflater.read(HEADER_BYTES)
        header = _parse(meta, head)
        if "PixelData" not in header:
            if inflater.read(1):
                raise DicomRejected(
                    RejectReason.UNREADABLE,
                    f"its deflated header is over {HEADER_BYTES} bytes before the pixels; "
                    "re-export the file uncompressed",
                )
            return _uncompressed_file(meta, head)
        rows, columns, n_frames = geometry(header, max_frame_pixels)
        require_image_size(header, rows, columns, n_frames, max_image_bytes)
        bits = as_int(header.get("BitsAllocated")) or 16
        declared = rows * columns * n_frames * math.ceil(max(bits, 1) / 8)
        pixels = header.get_item(_PIXEL_DATA, keep_deferred=True)
        start = pixels.value_tell - len(_uncompressed_file(meta, b""))
        allowed = start + min(pixels.length, declared) + TRAILER_BYTES
        rest = inflater.read(max(allowed - len(head), 0))
        if len(head) > allowed or inflater.read(1):
            raise DicomRejected(
                RejectReason.IMAGE_TOO_LARGE,
                "its deflated data inflates to more than its header declares; the file is "
                "corrupt or built to exhaust memory, re-export it",
            )
        return _uncompressed_file(meta, head + rest)


class _Inflater:
    """A raw deflate stream read from `fp`, inflated a bounded number of bytes at a time."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def read(self, limit: int) -> bytes:
        """Up to `limit` more inflated bytes (fewer at the end of the stream)."""
        out = bytearray()
        while len(out) < limit and not self.inflater.eof:
            data = self.inflater.unconsumed_tail or self.fp.read(_CHUNK)
            if not data:
                break
            try:
                out += self.inflater.decompress(data, limit - len(out))
            except zlib.error:
                raise DicomRejected(
                    RejectReason.UNREADABLE,
                    "its deflated data is corrupt; copy the file again or re-export it",
                ) from None
        return bytes(out)


def _uncompressed_file(meta: FileMetaDataset, dataset: bytes) -> bytes:
    """Preamble, File Meta saying explicit VR little endian, then the inflated `dataset`."""
    plain = FileMetaDataset(meta)
    plain.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, plain, enforce_standard=False)
    return fp.getvalue() + dataset


def _parse(meta: FileMetaDataset, head: bytes) -> FileDataset:
    """The elements found in the first inflated bytes up to the pixels, which stay unread."""
    passed: list[bool] = []

    def after_pixels(tag: int, vr: str | None, length: int) -> bool:
        if passed:
            return True
        if tag == _PIXEL_DATA:
            passed.append(True)
        return False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a cut last element warns, and may quote a value
        try:
            return read_partial(
                io.BytesIO(_uncompressed_file(meta, head)),
                stop_when=after_pixels,
                defer_size=_DEFER_BYTES,
                force=True,
            )
        except Exception as exc:
            raise DicomRejected(
                RejectReason.UNREADABLE,
                f"pydicom could not parse its inflated header ({type(exc).__name__}); the file "
                "may be corrupt, re-export it",
            ) from None


@contextlib.contextmanager
def _opened(source: Path | bytes) -> Iterator[BinaryIO]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source)
        return
    with Path(source).open("rb") as f:
        yield f
