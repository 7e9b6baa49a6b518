"""Tiny CT DICOM files for tests, written with pydicom, full of fake PHI.

Every writer takes the output path and keyword options for `ct_dataset`, writes one file and
returns a `Written`: the path, the dataset as written, the stored pixel values before any
compression, and the HU pydicom's modality LUT gives for them. `phi_strings` lists every
identifying value a written file holds, so tests can prove none of them reaches an output.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

JPEG_XL_LOSSLESS = UID("1.2.840.10008.1.2.4.110")  # no pydicom 3.0 decoder exists for it


@dataclass(frozen=True)
class Phi:
    """Identifying values written into every fake file."""

    patient_name: str = "Doe^Jane^Quincy"
    patient_id: str = "MRN-8837261"
    birth_date: str = "19510312"
    institution: str = "Saint Example General Hospital"
    institution_address: str = "42 Fictional Road, Exampleton"
    accession: str = "ACC99887766"
    referring: str = "Welby^Marcus"
    operator: str = "Tech^Terry"
    other_patient_id: str = "OLDMRN-554433"


@dataclass(frozen=True)
class Written:
    """One written file and what a correct reader must get out of it."""

    path: Path
    ds: Dataset = field(repr=False)
    pixels: np.ndarray | None = field(default=None, repr=False)  # (frames, rows, cols)
    hu: np.ndarray | None = field(default=None, repr=False)  # (frames, rows, cols) int16


def stored_pixels(
    rows: int = 64, columns: int = 64, frames: int = 1, seed: int = 0, signed: bool = True
) -> np.ndarray:
    """A CT-like pattern of stored values: air around a disc of tissue with dense spots."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :columns]
    disc = (yy - rows / 2) ** 2 + (xx - columns / 2) ** 2 < (min(rows, columns) / 2.5) ** 2
    out = np.empty((frames, rows, columns), dtype=np.int16 if signed else np.uint16)
    low = -1000 if signed else 0
    for f in range(frames):
        img = np.where(disc, 1040 + rng.integers(-60, 60, (rows, columns)), 0)
        img[rng.random((rows, columns)) < 0.02] = 3000 + f
        out[f] = img + low
    return out


def ct_dataset(
    pixels: np.ndarray | None = None,
    *,
    phi: Phi = Phi(),
    slope: float = 2.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    signed: bool = True,
    seed: int = 0,
) -> Dataset:
    """An uncompressed single- or multi-frame CT dataset (explicit VR little endian).

    Args:
        pixels: stored values (rows, cols) or (frames, rows, cols); a pattern if None.
        phi: the identifying values to write.
        slope: Rescale Slope.
        intercept: Rescale Intercept.
        modality: Modality; anything but CT makes it an MR Image Storage object.
        signed: Pixel Representation 1 (int16) if True, else 0 (uint16).
        seed: seed of the default pattern.
    """
    if pixels is None:
        pixels = stored_pixels(seed=seed, signed=signed)
    pixels = pixels.reshape(-1, *pixels.shape[-2:])
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    sop_uid = generate_uid()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\x00" * 128

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = "20240117"
    ds.AccessionNumber = phi.accession
    ds.InstitutionName = phi.institution
    ds.InstitutionAddress = phi.institution_address
    ds.ReferringPhysicianName = phi.referring
    ds.OperatorsName = phi.operator
    ds.PatientName = phi.patient_name
    ds.PatientID = phi.patient_id
    ds.PatientBirthDate = phi.birth_date
    ds.OtherPatientIDs = phi.other_patient_id
    ds.PatientSex = "F"
    ds.Modality = modality
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "Tomo 9000"
    ds.BodyPartExamined = "SPINE"
    ds.ConvolutionKernel = "B70f"
    ds.KVP = 120
    ds.SliceThickness = 1.5
    ds.PixelSpacing = [0.7, 0.8]
    ds.ImagePositionPatient = [-180.0, -180.0, 42.5]
    ds.InstanceNumber = 7
    ds.BurnedInAnnotation = "NO"

    ds.Rows, ds.Columns = pixels.shape[-2:]
    if len(pixels) > 1:
        ds.NumberOfFrames = len(pixels)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    return ds


def expected_hu(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """What pydicom's modality LUT gives for `pixels`, rounded to int16 HU."""
    return np.rint(apply_modality_lut(pixels, ds)).astype(np.int16)


def _save(path: Path, ds: Dataset, pixels: np.ndarray | None, **save_kwargs: object) -> Written:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, **save_kwargs)
    hu = expected_hu(pixels, ds) if pixels is not None else None
    return Written(path=path, ds=ds, pixels=pixels, hu=hu)


def _pixels_of(ds: Dataset) -> np.ndarray:
    signed = ds.PixelRepresentation == 1
    arr = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2")
    return arr.reshape(-1, ds.Rows, ds.Columns).copy()


def write_plain(path: Path, **kwargs: Any) -> Written:
    """Explicit VR little endian, with File Meta header."""
    ds = ct_dataset(**kwargs)
    return _save(path, ds, _pixels_of(ds), enforce_file_format=True)


def write_ct_files(folder: Path, n: int) -> list[Path]:
    """n plain CT files of different content and intercept in one folder."""
    return [
        write_plain(folder / f"ct{i}.dcm", seed=i, intercept=-1024 + 300 * i).path for i in range(n)
    ]


def write_rle(path: Path, **kwargs: Any) -> Written:
    """RLE Lossless, encoded by pydicom."""
    ds = ct_dataset(**kwargs)
    pixels = _pixels_of(ds)
    ds.compress(RLELossless, generate_instance_uid=False)
    return _save(path, ds, pixels, enforce_file_format=True)


def write_jpeg2000(path: Path, **kwargs: Any) -> Written:
    """JPEG 2000 Lossless, encoded by pydicom with pylibjpeg-openjpeg."""
    ds = ct_dataset(**kwargs)
    pixels = _pixels_of(ds)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return _save(path, ds, pixels, enforce_file_format=True)


def write_jpeg_lossless(path: Path, **kwargs: Any) -> Written:
    """JPEG Lossless SV1 (process 14, first-order prediction), encoded by `_lossless_jpeg`.

    No installed package encodes lossless JPEG, so the bitstream is written here.
    """
    ds = ct_dataset(**kwargs)
    pixels = _pixels_of(ds)
    frames = [_lossless_jpeg(frame.view(np.uint16)) for frame in pixels]
    _encapsulate(ds, frames, JPEGLosslessSV1)
    return _save(path, ds, pixels, enforce_file_format=True)


def jpegls_source() -> Path | None:
    """pydicom's bundled JPEG-LS lossless test file, or None when it isn't installed."""
    try:
        found = get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
        reference = get_testdata_file("MR_small.dcm", download=False)
    except Exception:
        return None
    return Path(found) if found and reference else None


def write_jpegls(path: Path, **kwargs: Any) -> Written:
    """JPEG-LS Lossless: the bitstream of pydicom's MR_small test file in a CT dataset.

    No installed package encodes JPEG-LS (that needs pyjpegls); pydicom ships one lossless
    64x64 signed 16-bit JPEG-LS frame and the same image uncompressed, which gives the
    expected values. Check `jpegls_source()` first.
    """
    source = jpegls_source()
    if source is None:
        raise FileNotFoundError("pydicom's MR_small_jpeg_ls_lossless.dcm test file is missing")
    jls = pydicom.dcmread(source)
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    pixels = reference.pixel_array.reshape(1, reference.Rows, reference.Columns)
    ds = ct_dataset(pixels.astype(np.int16), **kwargs)
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, jls[keyword].value)
    ds.PixelData = jls.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return _save(path, ds, pixels, enforce_file_format=True)


def write_big_endian(path: Path, **kwargs: Any) -> Written:
    """Explicit VR big endian (retired, still found in old archives)."""
    ds = ct_dataset(**kwargs)
    pixels = _pixels_of(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = pixels.astype(">i2" if ds.PixelRepresentation == 1 else ">u2").tobytes()
    return _save(path, ds, pixels, enforce_file_format=True)


def write_deflated(path: Path, **kwargs: Any) -> Written:
    """Deflated explicit VR little endian: the whole dataset zlib-compressed."""
    ds = ct_dataset(**kwargs)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _save(path, ds, _pixels_of(ds), enforce_file_format=True)


def write_no_meta(path: Path, **kwargs: Any) -> Written:
    """Implicit VR little endian with no preamble, no DICM prefix and no File Meta."""
    ds = ct_dataset(**kwargs)
    pixels = _pixels_of(ds)
    del ds.file_meta
    ds.preamble = None
    return _save(path, ds, pixels, implicit_vr=True, little_endian=True)


def write_multiframe(path: Path, frames: int = 3, **kwargs: Any) -> Written:
    """A multi-frame CT with one Rescale Slope/Intercept for all frames."""
    pixels = stored_pixels(frames=frames, seed=int(kwargs.pop("seed", 0)))
    ds = ct_dataset(pixels, **kwargs)
    return _save(path, ds, pixels, enforce_file_format=True)


def write_large_multiframe(
    path: Path, frames: int, rows: int = 512, columns: int = 512, **kwargs: Any
) -> Written:
    """A multi-frame CT of `frames` uncompressed int16 frames, streamed to disk frame by frame.

    The header is written by pydicom, then the Pixel Data element by hand, so the test that
    writes a file of hundreds of MB holds one frame in memory. Frame i is the default pattern
    plus i (stored value), so the frames differ; `large_frame` gives the HU of each.
    """
    base = stored_pixels(rows, columns)[0]
    ds = ct_dataset(base, **kwargs)
    ds.NumberOfFrames = frames
    del ds.PixelData
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * base.nbytes))
        for i in range(frames):
            f.write((base + i).astype("<i2").tobytes())
    return Written(path=path, ds=ds)


def large_frame(ds: Dataset, frame: int) -> np.ndarray:
    """The HU of frame `frame` of a `write_large_multiframe` file with header `ds`."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    return expected_hu(stored_pixels(rows, columns)[0] + frame, ds)


def write_enhanced_ct(
    path: Path, intercepts: tuple[float, ...] = (-1024.0, -1000.0, -900.0), **kwargs: Any
) -> Written:
    """Enhanced CT: rescale, spacing and position in functional groups, one intercept per frame."""
    pixels = stored_pixels(frames=len(intercepts), seed=int(kwargs.pop("seed", 0)))
    ds = ct_dataset(pixels, **kwargs)
    slope = float(ds.RescaleSlope)
    for keyword in (
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "PixelSpacing",
        "SliceThickness",
        "ImagePositionPatient",
        "KVP",
        "ConvolutionKernel",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage

    measures = Dataset()
    measures.PixelSpacing = [0.6, 0.6]
    measures.SliceThickness = 2.0
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    for i, intercept in enumerate(intercepts):
        transform = Dataset()
        transform.RescaleSlope = slope
        transform.RescaleIntercept = intercept
        transform.RescaleType = "HU"
        position = Dataset()
        position.ImagePositionPatient = [-180.0, -180.0, 10.0 + 2.0 * i]
        group = Dataset()
        group.PixelValueTransformationSequence = Sequence([transform])
        group.PlanePositionSequence = Sequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)

    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    hu = np.stack(
        [np.rint(p.astype(np.float64) * slope + b) for p, b in zip(pixels, intercepts, strict=True)]
    ).astype(np.int16)
    return Written(path=path, ds=ds, pixels=pixels, hu=hu)


def write_mr(path: Path, **kwargs: Any) -> Written:
    """A greyscale MR image: fine DICOM, wrong modality."""
    ds = ct_dataset(modality="MR", **kwargs)
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    return _save(path, ds, None, enforce_file_format=True)


def write_rgb(path: Path, **kwargs: Any) -> Written:
    """An RGB screenshot stored with Modality CT."""
    ds = ct_dataset(**kwargs)
    rgb = np.zeros((ds.Rows, ds.Columns, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return _save(path, ds, None, enforce_file_format=True)


def write_no_pixel_data(path: Path, **kwargs: Any) -> Written:
    """A CT-series object without Pixel Data (like a dose report)."""
    ds = ct_dataset(**kwargs)
    del ds.PixelData
    return _save(path, ds, None, enforce_file_format=True)


def write_truncated(path: Path, keep: float = 0.6, **kwargs: Any) -> Written:
    """A plain CT file cut to `keep` of its size, inside the Pixel Data."""
    written = write_plain(path, **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return Written(path=path, ds=written.ds)


def write_unsupported_syntax(path: Path, **kwargs: Any) -> Written:
    """A CT whose Pixel Data claims JPEG XL Lossless, which pydicom 3.0 can't decode."""
    ds = ct_dataset(**kwargs)
    _encapsulate(ds, [b"\xff\x0a" + b"\x00" * 62], JPEG_XL_LOSSLESS)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pydicom won't pick an encoding for a syntax it doesn't know; JPEG XL is explicit LE.
    ds.save_as(path, implicit_vr=False, little_endian=True, force_encoding=True)
    return Written(path=path, ds=ds)


def write_not_dicom(path: Path, text: str = "scanner export log\nnothing to see here\n") -> Path:
    """A text file where a DICOM file could be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def phi_strings(*datasets: Dataset) -> set[str]:
    """Every identifying value in the datasets: names, IDs, dates of birth, UIDs."""
    keywords = (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "OtherPatientIDs",
        "InstitutionName",
        "InstitutionAddress",
        "AccessionNumber",
        "ReferringPhysicianName",
        "OperatorsName",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
    )
    found: set[str] = set()
    for ds in datasets:
        for keyword in keywords:
            value = str(ds.get(keyword, "") or "")
            if value:
                found.add(value)
                # A name also leaks as its parts, e.g. a family name on its own.
                found.update(part for part in value.split("^") if len(part) >= 4)
    return found


def _encapsulate(ds: Dataset, frames: list[bytes], tsyntax: UID) -> None:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = tsyntax


def _lossless_jpeg(frame: np.ndarray, precision: int = 16) -> bytes:
    """Encode one uint16 frame as lossless JPEG, process 14, predictor 1 (SV1).

    One Huffman table with a 5-bit code for each of the 17 difference categories keeps the
    encoder short; it is valid, just not optimal.
    """
    rows, columns = frame.shape
    x = frame.astype(np.int64)
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]  # first row: left neighbour
    prediction[1:, 0] = x[:-1, 0]  # first column: the sample above
    prediction[1:, 1:] = x[1:, :-1]  # elsewhere: left neighbour (SV1)
    modulus = 1 << 16
    diff = (x - prediction) % modulus
    diff = np.where(diff > modulus // 2, diff - modulus, diff)

    bits: list[str] = []
    for d in diff.ravel().tolist():
        category = 16 if d == 32768 else abs(d).bit_length()
        bits.append(format(category, "05b"))
        if 0 < category < 16:
            extra = d if d >= 0 else d + (1 << category) - 1
            bits.append(format(extra, f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    scan = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0x00)  # byte stuffing

    sof3 = struct.pack(">HBHHB", 11, precision, rows, columns, 1) + bytes([1, 0x11, 0])
    counts = [0, 0, 0, 0, 17] + [0] * 11
    dht = struct.pack(">H", 2 + 1 + 16 + 17) + bytes([0x00, *counts]) + bytes(range(17))
    sos = struct.pack(">H", 8) + bytes([1, 1, 0x00, 1, 0, 0])  # Ss=1: predictor 1
    return (
        b"\xff\xd8"
        + b"\xff\xc3"
        + sof3
        + b"\xff\xc4"
        + dht
        + b"\xff\xda"
        + sos
        + bytes(scan)
        + b"\xff\xd9"
    )


def write_deflate_bomb(
    path: Path, rows: int, columns: int, frames: int = 1, extra_zero_bytes: int = 0, **kwargs: Any
) -> Written:
    """A deflated file whose dataset inflates to `frames` zero frames of rows x columns int16
    (plus `extra_zero_bytes` of zeros after the pixels, which no header declares), streamed
    through the compressor so that writing it holds about one MB."""
    ds = ct_dataset(stored_pixels(8, 8), **kwargs)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    del ds.PixelData
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    pixel_bytes = rows * columns * frames * 2
    head.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        meta.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(meta, ds.file_meta)
        f.write(meta.getvalue())
        f.write(deflater.compress(head.getvalue()))
        chunk = bytes(1 << 20)
        left = pixel_bytes + extra_zero_bytes
        while left:
            n = min(left, len(chunk))
            f.write(deflater.compress(chunk[:n]))
            left -= n
        f.write(deflater.flush())
    return Written(path=path, ds=ds)


def write_rle_bomb(path: Path, rows: int, columns: int, frames: int, **kwargs: Any) -> Written:
    """An RLE Lossless file of `frames` zero int16 frames: each 2-byte run stands for 128
    zero bytes, so the file decodes to 64 times its size."""
    ds = ct_dataset(stored_pixels(8, 8), **kwargs)
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    segment = b"\x81\x00" * (rows * columns // 128)
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    frame = header + segment + segment
    _encapsulate(ds, [frame] * frames, RLELossless)
    return _save(path, ds, None, enforce_file_format=True)


def write_raw_attribute(path: Path, keyword: str, value: bytes) -> Path:
    """A CT file (`write_plain`) whose `keyword` holds `value`'s bytes as they are, unchecked
    by pydicom (e.g. b"abc " in RescaleSlope); `value` must have an even length."""
    written = write_plain(path).path
    ds = pydicom.dcmread(written)
    tag = Tag(tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(written)
    return written
