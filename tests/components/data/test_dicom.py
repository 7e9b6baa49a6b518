import os
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from components.data.dicom import MAX_FRAME_PIXELS, open_ct, read_ct
from components.data.dicom_attributes import FRAME_COLUMNS
from components.data.rejects import DicomRejected, RejectReason
from tests import dicom_factory as factory

DECODED = [
    factory.write_plain,
    factory.write_rle,
    factory.write_jpeg2000,
    factory.write_jpeg_lossless,
    factory.write_big_endian,
    factory.write_deflated,
    factory.write_no_meta,
]


@pytest.mark.parametrize("writer", DECODED, ids=lambda w: w.__name__.removeprefix("write_"))
def test_each_encoding_decodes_to_the_modality_lut_hu(tmp_path, writer):
    written = writer(tmp_path / "slice", slope=2.0, intercept=-1024.0)
    image = read_ct(written.path)
    assert image.hu.dtype == np.int16
    assert image.hu.shape == (1, 64, 64)
    np.testing.assert_array_equal(image.hu, written.hu)
    # written.hu is pydicom's modality LUT of the values before encoding; the file agrees too.
    ds = pydicom.dcmread(written.path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    lut = np.rint(apply_modality_lut(ds.pixel_array, ds))
    np.testing.assert_array_equal(image.hu[0], lut)


def test_jpegls_decodes_to_the_modality_lut_hu(tmp_path):
    if factory.jpegls_source() is None:
        pytest.skip("no JPEG-LS encoder installed and pydicom's JPEG-LS test file is missing")
    written = factory.write_jpegls(tmp_path / "slice.dcm", slope=1.0, intercept=-1024.0)
    image = read_ct(written.path)
    assert image.frames[0]["transfer_syntax"] == "JPEGLSLossless"
    np.testing.assert_array_equal(image.hu, written.hu)


def test_fractional_rescale_rounds_to_nearest_hu(tmp_path):
    written = factory.write_plain(tmp_path / "a.dcm", slope=0.5, intercept=-1000.25)
    image = read_ct(written.path)
    exact = apply_modality_lut(written.pixels, written.ds)
    assert not np.array_equal(exact, np.rint(exact))  # the case is really fractional
    np.testing.assert_array_equal(image.hu, np.rint(exact).astype(np.int16))


def test_reads_from_bytes(tmp_path):
    written = factory.write_rle(tmp_path / "a.dcm")
    image = read_ct(written.path.read_bytes())
    np.testing.assert_array_equal(image.hu, written.hu)


def test_multiframe_gives_one_slice_per_frame(tmp_path):
    written = factory.write_multiframe(tmp_path / "mf.dcm", frames=4)
    image = read_ct(written.path)
    assert image.hu.shape == (4, 64, 64)
    np.testing.assert_array_equal(image.hu, written.hu)
    assert [f["frame"] for f in image.frames] == [0, 1, 2, 3]
    assert all(f["n_frames"] == 4 for f in image.frames)


def test_enhanced_ct_uses_per_frame_rescale_and_shared_geometry(tmp_path):
    written = factory.write_enhanced_ct(tmp_path / "enh.dcm", intercepts=(-1024.0, -1000.0, -900.0))
    image = read_ct(written.path)
    np.testing.assert_array_equal(image.hu, written.hu)
    assert [f["rescale_intercept"] for f in image.frames] == [-1024.0, -1000.0, -900.0]
    assert [f["position_z"] for f in image.frames] == [10.0, 12.0, 14.0]
    assert image.frames[0]["pixel_spacing_row"] == 0.6
    assert image.frames[0]["slice_thickness"] == 2.0
    assert image.frames[0]["sop_class"] == "Enhanced CT Image Storage"


def test_frame_attributes_are_complete_and_identifiers_kept_apart(tmp_path):
    written = factory.write_plain(tmp_path / "a.dcm")
    image = read_ct(written.path)
    frame = image.frames[0]
    assert tuple(frame) == FRAME_COLUMNS
    assert frame["pixel_spacing_row"] == 0.7 and frame["pixel_spacing_col"] == 0.8
    assert frame["kernel"] == "" and frame["kvp"] == 120.0  # no key, no kernel pseudonym
    assert frame["hu_source"] == "rescale"
    assert frame["hu_min"] == int(written.hu.min()) and frame["hu_max"] == int(written.hu.max())
    assert image.patient_id == written.ds.PatientID
    assert image.sop_instance_uid == written.ds.SOPInstanceUID
    text = repr(image) + repr(image.frames)
    for phi in factory.phi_strings(written.ds):
        assert phi not in text


@pytest.mark.parametrize(
    ("writer", "reason"),
    [
        (factory.write_mr, RejectReason.MODALITY_NOT_CT),
        (factory.write_rgb, RejectReason.COLOUR_IMAGE),
        (factory.write_no_pixel_data, RejectReason.NO_PIXEL_DATA),
        (factory.write_truncated, RejectReason.TRUNCATED),
        (factory.write_unsupported_syntax, RejectReason.UNSUPPORTED_TRANSFER_SYNTAX),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_bad_files_are_rejected_with_their_reason(tmp_path, writer, reason):
    written = writer(tmp_path / "bad.dcm")
    with pytest.raises(DicomRejected) as caught:
        read_ct(written.path)
    assert caught.value.reason == reason
    assert caught.value.detail
    for phi in factory.phi_strings(written.ds):
        assert phi not in caught.value.detail


@pytest.mark.parametrize("content", [b"", b"just some notes\n" * 20, bytes(range(256)) * 8])
def test_non_dicom_is_not_dicom(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(DicomRejected) as caught:
        read_ct(path)
    assert caught.value.reason == RejectReason.NOT_DICOM


def test_truncation_anywhere_after_the_header_is_never_accepted(tmp_path):
    data = factory.write_plain(tmp_path / "a.dcm").path.read_bytes()
    for cut in range(132, len(data), 97):
        with pytest.raises(DicomRejected) as caught:
            read_ct(data[:cut])
        assert caught.value.reason in (RejectReason.TRUNCATED, RejectReason.NO_PIXEL_DATA), cut


def test_missing_decoder_plugin_names_the_package(tmp_path, monkeypatch):
    written = factory.write_jpeg2000(tmp_path / "j2k.dcm")
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg>=2.0",)})
    with pytest.raises(DicomRejected) as caught:
        read_ct(written.path)
    assert caught.value.reason == RejectReason.UNSUPPORTED_TRANSFER_SYNTAX
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in caught.value.detail


def test_unknown_syntax_detail_says_how_to_convert(tmp_path):
    written = factory.write_unsupported_syntax(tmp_path / "jxl.dcm")
    with pytest.raises(DicomRejected) as caught:
        read_ct(written.path)
    assert "JPEG XL" in caught.value.detail
    assert "gdcmconv" in caught.value.detail


@pytest.mark.parametrize(
    ("slope", "intercept", "says"),
    [
        (0.0, -1024.0, "RescaleSlope is 0.0"),
        (float("nan"), -1024.0, "RescaleSlope is nan"),
        (1.0, float("inf"), "RescaleIntercept is inf"),
        (1.0, 19510317.0, "above the -4096..32767"),
        (1000.0, 0.0, "below and above the -4096..32767"),
        (1.0, -19510317.0, "below the -4096..32767"),
    ],
)
def test_physically_impossible_rescale_is_rejected(tmp_path, slope, intercept, says):
    path = factory.write_plain(tmp_path / "a.dcm", slope=slope, intercept=intercept).path
    with pytest.raises(DicomRejected) as caught:
        read_ct(path)
    assert caught.value.reason == RejectReason.BAD_RESCALE
    assert says in caught.value.detail
    assert "1951" not in caught.value.detail  # a date typed as the intercept is not quoted


def test_declared_pixel_padding_is_not_held_to_the_hu_range(tmp_path):
    written = factory.write_plain(tmp_path / "a.dcm", slope=1.0, intercept=-1024.0)
    ds = written.ds
    pixels = factory.stored_pixels(seed=3)
    pixels[..., :4, :] = -7000  # outside the field of view: -8024 HU
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.PixelPaddingValue = -7000
    ds.save_as(written.path, enforce_file_format=True)
    assert read_ct(written.path).hu.min() == -8024


def test_a_frame_over_the_limit_is_rejected_before_its_pixels_are_read(tmp_path):
    written = factory.write_plain(tmp_path / "a.dcm")
    with pytest.raises(DicomRejected) as caught:
        read_ct(written.path, max_frame_pixels=64 * 64 - 1)
    assert caught.value.reason == RejectReason.FRAME_TOO_LARGE
    assert "64 x 64 = 4096 pixels, over the limit of 4095" in caught.value.detail
    assert "ingest.max_frame_pixels" in caught.value.detail
    assert read_ct(written.path, max_frame_pixels=64 * 64).hu.shape == (1, 64, 64)

    # An absurd header over a few bytes of Pixel Data: refused by size, never decoded.
    ds = written.ds
    ds.Rows = ds.Columns = 65535
    ds.save_as(written.path, enforce_file_format=True)
    with pytest.raises(DicomRejected) as caught:
        read_ct(written.path.read_bytes())
    assert caught.value.reason == RejectReason.FRAME_TOO_LARGE
    assert f"over the limit of {MAX_FRAME_PIXELS}" in caught.value.detail


def test_frames_are_decoded_one_at_a_time_and_match_the_whole_file(tmp_path):
    written = factory.write_large_multiframe(tmp_path / "mf.dcm", frames=4, rows=256, columns=192)
    ct = open_ct(written.path)
    assert (ct.n_frames, ct.rows, ct.columns) == (4, 256, 192)
    # The header holds no pixel: Pixel Data is left in the file until the frames are decoded.
    assert ct.header.get_item(0x7FE00010, keep_deferred=True).value is None
    slices = ct.slices()
    first = next(slices)
    np.testing.assert_array_equal(first.hu, factory.large_frame(written.ds, 0))
    assert first.attributes["frame"] == 0 and first.attributes["n_frames"] == 4
    rest = list(slices)
    for i, piece in enumerate(rest, start=1):
        np.testing.assert_array_equal(piece.hu, factory.large_frame(written.ds, i))
    image = read_ct(written.path.read_bytes())
    np.testing.assert_array_equal(image.hu, np.stack([first.hu] + [s.hu for s in rest]))
    assert list(image.frames) == [first.attributes] + [s.attributes for s in rest]


def test_impossible_hu_in_a_later_frame_is_found_when_that_frame_is_decoded(tmp_path):
    written = factory.write_enhanced_ct(tmp_path / "enh.dcm", intercepts=(-1024.0, -1000.0, 9e4))
    slices = open_ct(written.path).slices()
    assert next(slices).attributes["rescale_intercept"] == -1024.0
    next(slices)
    with pytest.raises(DicomRejected) as caught:
        next(slices)
    assert caught.value.reason == RejectReason.BAD_RESCALE


@pytest.mark.parametrize(
    ("change", "reason", "says"),
    [
        ({"Rows": 0}, RejectReason.UNREADABLE, "0 rows"),
        ({"NumberOfFrames": 5}, RejectReason.TRUNCATED, "shorter than Rows x Columns x frames"),
    ],
)
def test_header_that_does_not_fit_the_pixel_data_is_rejected_unread(tmp_path, change, reason, says):
    written = factory.write_multiframe(tmp_path / "mf.dcm", frames=3)
    for keyword, value in change.items():
        setattr(written.ds, keyword, value)
    written.ds.save_as(written.path, enforce_file_format=True)
    with pytest.raises(DicomRejected) as caught:
        open_ct(written.path)
    assert caught.value.reason == reason
    assert says in caught.value.detail


def test_compressed_pixel_data_with_fewer_frames_than_declared_is_unreadable(tmp_path):
    written = factory.write_rle(tmp_path / "rle.dcm")
    written.ds.NumberOfFrames = 3
    written.ds.save_as(written.path, enforce_file_format=True)
    ct = open_ct(written.path)
    with pytest.raises(DicomRejected) as caught:
        list(ct.slices())
    assert caught.value.reason == RejectReason.UNREADABLE
    assert "fewer frames than the 3 of NumberOfFrames" in caught.value.detail


@pytest.mark.timeout(30)
def test_a_pipe_a_link_to_one_and_a_folder_are_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.dcm").symlink_to(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    for name in ("pipe", "link.dcm", "folder"):
        with pytest.raises(DicomRejected) as caught:
            read_ct(tmp_path / name)
        assert caught.value.reason == RejectReason.NOT_REGULAR_FILE, name
        assert str(tmp_path) not in caught.value.detail


def test_a_deflated_multiframe_file_is_read_whole_and_named_deflated(tmp_path):
    pixels = factory.stored_pixels(48, 40, frames=3, seed=4)
    written = factory.write_deflated(tmp_path / "d.dcm", pixels=pixels)
    for source in (written.path, written.path.read_bytes()):
        image = read_ct(source)
        np.testing.assert_array_equal(image.hu, written.hu)
    assert open_ct(written.path).transfer_syntax == DeflatedExplicitVRLittleEndian


def test_the_decoded_size_is_checked_before_inflating_or_decoding(tmp_path):
    deflated = factory.write_deflate_bomb(tmp_path / "d.dcm", 512, 512, frames=64).path
    rle = factory.write_rle_bomb(tmp_path / "r.dcm", 512, 512, frames=64).path
    for source in (deflated, deflated.read_bytes(), rle, rle.read_bytes()):
        with pytest.raises(DicomRejected) as caught:
            read_ct(source, max_image_bytes=16 * 1024 * 1024)
        assert caught.value.reason == RejectReason.IMAGE_TOO_LARGE
        assert "33554432 bytes" in caught.value.detail and "max_image_bytes" in caught.value.detail
    # within the limit, the same files decode
    assert read_ct(deflated).hu.shape == read_ct(rle).hu.shape == (64, 512, 512)


def test_a_deflated_file_that_inflates_past_its_header_is_refused(tmp_path):
    lying = factory.write_deflate_bomb(tmp_path / "d.dcm", 64, 64, extra_zero_bytes=50_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(DicomRejected) as caught:
            read_ct(lying.path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == RejectReason.IMAGE_TOO_LARGE
    assert "more than its header declares" in caught.value.detail
    assert peak < 40 * 1024 * 1024


@pytest.mark.parametrize(
    ("write", "side"), [(factory.write_jpeg2000, 4096), (factory.write_jpeg_lossless, 128)]
)
def test_a_compressed_frame_larger_than_the_header_says_is_never_decoded(tmp_path, write, side):
    written = write(tmp_path / "big.dcm", pixels=np.zeros((side, side), np.int16))
    ds = pydicom.dcmread(written.path)
    ds.Rows = ds.Columns = 64
    ds.save_as(tmp_path / "lying.dcm")
    tracemalloc.start()
    try:
        with pytest.raises(DicomRejected) as caught:
            read_ct(tmp_path / "lying.dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == RejectReason.UNREADABLE
    assert f"compressed as {side} x {side} pixels but the header says 64 x 64" in (
        caught.value.detail
    )
    assert peak < 8 * 1024 * 1024, peak
