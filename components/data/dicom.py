"""Read one DICOM file into CT slices in Hounsfield units, or say why it can't be used.

`open_ct` takes a path or the file's bytes and checks the header, Pixel Data left unread;
`CtFile.slices` then decodes one frame at a time and yields it converted to HU with
pydicom's modality LUT (rescale slope/intercept, or a Modality LUT Sequence; per frame for
enhanced multi-frame CT), plus de-identified acquisition attributes, so memory holds about one
frame whatever the size of the file. `read_ct` collects every frame of a file into a
`CtImage`, for small inputs. A file that can't be used raises `DicomRejected` with one of the
`RejectReason` codes and a detail sentence that says what to do; the detail never holds a
file name or patient data. What may be opened and decoded is checked in `dicom_source`,
the header in `dicom_header`, the conversion to HU is in `hounsfield`, the frame attributes
in `dicom_attributes`; the frames are decoded here.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataset import Dataset, FileDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from components.config import IngestConfig
from components.data.dicom_attributes import frame_attributes, syntax_label
from components.data.dicom_header import (
    INSTALL_HINT,
    PIXEL_DATA,
    geometry,
    read_header,
    require_ct,
    require_decoder,
    require_greyscale,
    require_pixel_data,
    require_pixel_length,
    transfer_syntax_of,
)
from components.data.dicom_source import (
    inflate_deflated,
    require_frame_sizes,
    require_image_size,
    require_regular_file,
)
from components.data.hounsfield import check_rescale, frame_lut, rescale_of, to_hu
from components.data.rejects import DicomRejected, RejectReason

# Rows x Columns of one frame, and decoded bytes of a whole image, above which a file is
# rejected unread: the defaults of params.yaml ingest.max_frame_pixels (4096 x 4096) and
# ingest.max_image_bytes.
MAX_FRAME_PIXELS = IngestConfig().max_frame_pixels
MAX_IMAGE_BYTES = IngestConfig().max_image_bytes


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

    def slices(self, key: bytes | None = None) -> Iterator[CtSlice]:
        """Each frame in HU with its attributes, in frame order, read from the source;
        `key` pseudonymises the model, kernel and body part (see `frame_attributes`).

        Raises:
            DicomRejected: a frame can't be decoded or gives impossible HU; the file is then
                unusable as a whole, whatever was yielded before.
        """
        ds, tsyntax = self.header, self.transfer_syntax
        with _pixel_stream(self.source, ds) as stream:
            require_frame_sizes(stream, ds, tsyntax, self.n_frames, self.rows, self.columns)
            for i, pixels in enumerate(_decoded_frames(stream, ds, tsyntax, self.n_frames)):
                lut = frame_lut(ds, i)
                hu = to_hu(pixels, lut, ds)
                yield CtSlice(
                    hu,
                    frame_attributes(ds, tsyntax, hu, i, self.n_frames, *rescale_of(lut), key),
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


def open_ct(
    source: Path | str | bytes,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> CtFile:
    """Read and check a CT image file's header; its frames are decoded by `CtFile.slices`.

    Accepts any transfer syntax pydicom has a decoder plugin for (uncompressed little or
    big endian, deflated, RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K) and files without a File
    Meta header. Only a regular file is opened. Pixel Data is not read here: a frame over
    `max_frame_pixels`, an image that decodes to over `max_image_bytes`, a Pixel Data shorter
    than the header says and an impossible rescale are rejected before it is; a deflated
    file is inflated no further than its header allows.

    Args:
        source: path of the file, or its bytes.
        max_frame_pixels: the most Rows x Columns of one frame (params ingest.max_frame_pixels).
        max_image_bytes: the most bytes all frames may decode to (params
            ingest.max_image_bytes).

    Returns:
        The checked file, to decode frame by frame.

    Raises:
        DicomRejected: the file is not a usable greyscale CT image; `reason` says why.
    """
    if not isinstance(source, bytes | bytearray | memoryview):
        source = Path(source)
        require_regular_file(source)
    inflated = inflate_deflated(source, max_frame_pixels, max_image_bytes)
    ds = read_header(source if inflated is None else inflated)
    if inflated is not None:  # parsed as stored uncompressed; it came deflated
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    require_pixel_data(ds)
    require_ct(ds)
    require_greyscale(ds)
    rows, columns, n_frames = geometry(ds, max_frame_pixels)
    require_image_size(ds, rows, columns, n_frames, max_image_bytes)
    tsyntax = transfer_syntax_of(ds)
    require_decoder(tsyntax)
    require_pixel_length(ds, tsyntax, rows * columns * n_frames)
    # frames past the per-frame groups share one LUT: check each distinct one once
    distinct = min(n_frames, len(ds.get("PerFrameFunctionalGroupsSequence") or ()) + 1)
    for i in range(distinct):
        check_rescale(rescale_of(frame_lut(ds, i)))
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


def read_ct(
    source: Path | str | bytes,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
) -> CtImage:
    """Read a CT image file and convert every frame to HU, all of them in memory at once.

    For single slices and small files; `open_ct` and `CtFile.slices` go through a large
    multi-frame file one frame at a time.

    Args:
        source: path of the file, or its bytes.
        max_frame_pixels: the most Rows x Columns of one frame (params ingest.max_frame_pixels).
        max_image_bytes: the most bytes all frames may decode to; all of them are held at
            once here, so a caller that serves requests passes its own, smaller limit.

    Returns:
        The slices in HU with their de-identified attributes.

    Raises:
        DicomRejected: the file is not a usable greyscale CT image; `reason` says why.
    """
    ct = open_ct(source, max_frame_pixels, max_image_bytes)
    slices = list(ct.slices())
    return CtImage(
        hu=np.stack([s.hu for s in slices]),
        frames=tuple(s.attributes for s in slices),
        patient_id=ct.patient_id,
        sop_instance_uid=ct.sop_instance_uid,
        series_instance_uid=ct.series_instance_uid,
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
                f"the {syntax_label(tsyntax)} pixel data holds fewer frames than the "
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
    pixel_data = ds.get_item(PIXEL_DATA, keep_deferred=True)
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
        hint = INSTALL_HINT.get(str(tsyntax), "install a decoder plugin for it")
        return DicomRejected(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"{syntax_label(tsyntax)}: no working decoder plugin; {hint}",
        )
    if isinstance(exc, ValueError | RuntimeError | AttributeError | NotImplementedError):
        return DicomRejected(
            RejectReason.UNREADABLE,
            f"could not decode the {syntax_label(tsyntax)} pixel data "
            f"({type(exc).__name__}: {_first_line(message)}); re-export the file or convert it "
            "with `gdcmconv --raw IN OUT`",
        )
    return DicomRejected(
        RejectReason.UNREADABLE,
        f"could not decode the {syntax_label(tsyntax)} pixel data "
        f"({type(exc).__name__}: {_first_line(message)}); re-export the file",
    )


def _first_line(message: str, limit: int = 160) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line[:limit]
