"""Bounded fuzz test of ingest: hostile DICOM headers and damaged bytes (issue #13 item 9).

Valid seed files of every encoding the factory writes are mutated by hypothesis, at the
dataset level (hostile values in the tags a reader trusts, written as raw elements so pydicom
can't refuse them) and at the byte level (truncation, flips, overwrites, inserted junk,
zeroed ranges). Each mutated file is ingested
next to an untouched file of another patient; whatever the damage, no exception may escape,
the good file must reach the manifest, and the mutated file must end in the manifest or in
exactly one rejects.csv row with a reason code and a detail, without its PHI in any output.

The examples are derandomized so CI runs the same few hundred inputs every time; `pytest -s`
prints how many were tried and where they ended.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import struct
import tempfile
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from components.data.dicom_source import TRAILER_BYTES
from components.data.ingest import IngestSummary, ingest
from components.data.rejects import RejectReason
from tests import dicom_factory as factory

KEY = bytes.fromhex("3c" * 32)
CLASSES = ("MM", "OMBT")
MANIFEST = "manifest"  # the outcome of a file that gave manifest rows

# The mutated file's patient: every value is distinctive, so a leak into an output shows.
FUZZ_PHI = factory.Phi(
    patient_name="Fuzzman^Secretta",
    patient_id="FUZZ^SECRET^123",
    birth_date="19390517",
    institution="Hospital of Hidden Fuzz",
    institution_address="1 Qzlane, Fuzzbury",
    accession="ACCFUZZ40417",
    referring="Qzref^Vexalind",
    operator="Qzop^Wylamber",
    other_patient_id="FUZZOLD-7731",
)
FUZZ_FOLDER = "Fuzzman_Secretta_FUZZSECRET123"
FUZZ_FILE = "IMG_FUZZSECRET123_0001.dcm"
GOOD_PHI = factory.Phi(patient_name="Goodwin^Ada", patient_id="GOOD-000042")
GOOD_FOLDER = "Goodwin_Ada_GOOD000042"

# Tags a reader trusts to size, decode, convert or label the image, plus free text that
# reaches the manifest.
HEADER_TAGS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "Modality",
    "SOPClassUID",
    "TransferSyntaxUID",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "PatientID",
    "WindowCenter",
    "PixelPaddingValue",
    "Manufacturer",
    "BodyPartExamined",
)
DELETE = None  # a header mutation that removes the tag

HOSTILE_INTS = (
    0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 255, 256, 4095, 32767, 32768, 65535,
    65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 10**30, -1, -2, -32768, -(2**31),
)  # fmt: skip
HOSTILE_FLOATS = (
    float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-320, 1e308, -1e308, 0.5, 1e6,
)  # fmt: skip
HOSTILE_TEXT = (
    "", " ", "NaN", "nan", "inf", "-Infinity", "1e400", "-1e400", "1e-400", "0", "-0", "abc",
    "1\\2", "1\\2\\3\\4", "\\", "-", "+", ".", "1.5.", "0x10", "12345678901234567890",
    "x" * 300, "9" * 70_000, "Ünïcødé", "日本語", "\x00\x01\x02", "\n\r\t", "MONOCHROME3",
    "RGB", "YBR_FULL", "PALETTE COLOR", "MR", "ct", " CT ", "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.3", FUZZ_PHI.patient_id,
)  # fmt: skip

hostile_values = st.one_of(
    st.just(DELETE),
    st.sampled_from(HOSTILE_INTS),
    st.integers(),
    st.sampled_from(HOSTILE_FLOATS),
    st.floats(),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=20),
    st.lists(st.sampled_from(HOSTILE_TEXT[:20]), min_size=2, max_size=4),
    st.binary(max_size=12),
)
header_mutations = st.lists(
    st.tuples(st.sampled_from(HEADER_TAGS), hostile_values),
    min_size=1,
    max_size=4,
    unique_by=lambda mutation: mutation[0],
)

# Bytes a DICOM parser reads as structure: undefined length, item and sequence delimiter
# tags, the prefix, a VR with its reserved bytes, a NUL.
JUNK = (
    b"\xff\xff\xff\xff",
    b"\xfe\xff\x00\xe0",
    b"\xfe\xff\xdd\xe0",
    b"DICM",
    b"OB\x00\x00",
    b"\x00",
)
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

INGEST_SECONDS = 10.0  # an example takes a few hundredths of a second; no file may stall a run

# database=None still leaves hypothesis' caches (local constants, read when pytest collects,
# unicode tables, failure patches) in ./.hypothesis: keep them out of the checkout, unless
# HYPOTHESIS_STORAGE_DIRECTORY says where they go.
if not os.getenv("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "myelomet-hypothesis")

OUTCOMES: dict[str, Counter[str]] = {}  # per test: MANIFEST or reject reason -> files

# Hostile values make pydicom warn about them and numpy overflow in the modality LUT; that is
# expected here, and the run's outcome is checked instead. Fuzzing is slow: `-m "not slow"`
# leaves this module out.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom", "ignore::RuntimeWarning:pydicom"),
]


@dataclass(frozen=True)
class Seed:
    """A valid CT file to mutate: its bytes, encoding and where its Pixel Data value starts."""

    data: bytes
    encoding: tuple[bool, bool]  # (implicit VR, little endian)
    deflated: bool
    header_end: int


def _seed_writers() -> dict[str, Callable[..., factory.Written]]:
    small = factory.stored_pixels(32, 32, seed=3)
    return {
        "explicit_little": lambda p: factory.write_plain(p, pixels=small, phi=FUZZ_PHI),
        "explicit_big": lambda p: factory.write_big_endian(p, pixels=small, phi=FUZZ_PHI),
        "implicit_no_meta": lambda p: factory.write_no_meta(p, pixels=small, phi=FUZZ_PHI),
        "deflated": lambda p: factory.write_deflated(p, pixels=small, phi=FUZZ_PHI),
        "rle": lambda p: factory.write_rle(p, pixels=small, phi=FUZZ_PHI),
        "jpeg2000": lambda p: factory.write_jpeg2000(p, pixels=small, phi=FUZZ_PHI),
        "jpeg_lossless": lambda p: factory.write_jpeg_lossless(p, pixels=small, phi=FUZZ_PHI),
        "multiframe": lambda p: factory.write_multiframe(p, frames=3, phi=FUZZ_PHI),
        "enhanced": lambda p: factory.write_enhanced_ct(p, phi=FUZZ_PHI),
    }


SEED_NAMES = tuple(_seed_writers())


@cache
def _seeds() -> dict[str, Seed]:
    """Every seed file, written once per session."""
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in _seed_writers().items():
            data = write(Path(tmp) / name).path.read_bytes()
            ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=1024)
            deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
            pixel_tell = ds.get_item("PixelData", keep_deferred=True).value_tell
            seeds[name] = Seed(data, ds.original_encoding, deflated, min(pixel_tell, len(data)))
    return seeds


@cache
def _good_file() -> bytes:
    """The untouched single-frame file of the other patient."""
    with tempfile.TemporaryDirectory() as tmp:
        return factory.write_plain(Path(tmp) / "good.dcm", phi=GOOD_PHI, seed=5).path.read_bytes()


@cache
def _planted() -> tuple[str, ...]:
    """Every identifying value in the mutated and the good file, and their folder names."""
    datasets = [pydicom.dcmread(io.BytesIO(s.data), force=True) for s in _seeds().values()]
    datasets.append(pydicom.dcmread(io.BytesIO(_good_file())))
    return tuple(sorted(factory.phi_strings(*datasets) | {FUZZ_FOLDER, FUZZ_FILE, GOOD_FOLDER}))


# --- header mutations -------------------------------------------------------------------

_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def _encode(value: Any, vr: str, little_endian: bool) -> bytes:
    """The value field a careless writer would put there: binary when the value fits the
    tag's binary VR, else its text (so Rows may hold b"abc"); bytes as they are."""
    if isinstance(value, bytes):
        return value
    values = value if isinstance(value, list) else [value]
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is not None:
        with contextlib.suppress(struct.error):
            return struct.pack(("<" if little_endian else ">") + fmt * len(values), *values)
    text = "\\".join(map(str, values)).encode("utf-8")
    return text + b" " * (len(text) % 2)


def _set(ds: pydicom.Dataset, keyword: str, value: Any, seed: Seed) -> None:
    """Put `value` into the tag as a raw element, which pydicom writes without checking it."""
    tag = Tag(tag_for_keyword(keyword))
    target = ds.file_meta if tag >> 16 == 0x0002 else ds
    if value is DELETE:
        if tag in target:
            del target[tag]
        return
    vr = dictionary_VR(tag).split(" or ")[-1]  # "US or SS": SS, as in a signed image
    implicit_vr, little_endian = (False, True) if target is ds.file_meta else seed.encoding
    field = _encode(value, vr, little_endian)
    target[tag] = RawDataElement(tag, vr, len(field), field, 0, implicit_vr, little_endian, True)


def _save(ds: pydicom.Dataset, seed: Seed) -> bytes:
    """The dataset written in the seed's encoding (deflated if the seed was), whatever its
    File Meta says; dcmwrite would read the Transfer Syntax UID, which may be broken."""
    out = DicomBytesIO()
    if ds.preamble is not None:
        out.write(ds.preamble + b"DICM")
    if ds.file_meta:
        write_file_meta_info(out, ds.file_meta, enforce_standard=False)
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = seed.encoding
    write_dataset(body, ds)
    if seed.deflated:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        deflated = packer.compress(body.getvalue()) + packer.flush()
        out.write(deflated + b"\x00" * (len(deflated) % 2))
    else:
        out.write(body.getvalue())
    return out.getvalue()


def _mutate_header(seed: Seed, mutations: list[tuple[str, Any]]) -> bytes:
    """The seed with every (keyword, value) of `mutations` set, written back."""
    ds = pydicom.dcmread(io.BytesIO(seed.data), force=True)
    if not hasattr(ds, "file_meta"):  # a file without File Meta gains one if its syntax is set
        ds.file_meta = FileMetaDataset()
        ds.file_meta.set_original_encoding(False, True)
    for keyword, value in mutations:
        _set(ds, keyword, value, seed)
    return _save(ds, seed)


# --- byte mutations ---------------------------------------------------------------------


@st.composite
def byte_mutations(draw: st.DrawFn, seed_name: str) -> list[tuple[Any, ...]]:
    """One to four damages to the seed's bytes, half of them aimed at its header.

    Each is `(kind, offset, ...)`: ("truncate", at), ("flip", at, mask), ("overwrite", at,
    bytes), ("insert", at, bytes), ("zero", at, length).
    """
    seed = _seeds()[seed_name]
    size = len(seed.data)
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 4))):
        if size == 0:
            break
        at = draw(st.integers(0, min(seed.header_end, size) - 1) | st.integers(0, size - 1))
        junk = st.sampled_from(JUNK) | st.binary(min_size=1, max_size=16)
        kind = draw(st.sampled_from(("truncate", "flip", "overwrite", "insert", "zero")))
        if kind == "truncate":
            ops.append((kind, at))
            size = at
        elif kind == "flip":
            ops.append((kind, at, draw(st.integers(1, 255))))
        elif kind == "overwrite":
            ops.append((kind, at, draw(junk)))
        elif kind == "insert":
            ops.append((kind, at, draw(junk)))
            size += len(ops[-1][2])
        else:
            ops.append((kind, at, draw(st.integers(1, 64))))
    return ops


def _damage(data: bytes, ops: list[tuple[Any, ...]]) -> bytes:
    """`data` with each of `byte_mutations`' damages applied in turn."""
    out = bytearray(data)
    for kind, at, *arg in ops:
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            out[at] ^= arg[0]
        elif kind == "overwrite":
            out[at : at + len(arg[0])] = arg[0]
        elif kind == "insert":
            out[at:at] = arg[0]
        else:
            end = min(at + arg[0], len(out))
            out[at:end] = bytes(end - at)
    return bytes(out)


# --- the check --------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV ingest wrote; none when it wrote no such file."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class _TooSlow(BaseException):
    """Raised by the alarm; a BaseException, so ingest's own `except Exception` lets it by."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _TooSlow in the block after `seconds`; an outer alarm (pytest-timeout's signal
    method) is put back afterwards, less the time spent."""

    def expire(signum: int, frame: Any) -> None:
        raise _TooSlow

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            left = max(outer - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


def _ingest_within(root: Path, out: Path, seconds: float, **limits: int) -> IngestSummary:
    """`ingest` (with `limits`, its size limits), any exception it lets out (even a
    BaseException, like the Rust panics of the decoder plugins) or a run over `seconds` turned
    into a test failure hypothesis shrinks."""
    try:
        with _time_limit(seconds):
            return ingest(root, out, CLASSES, KEY, progress=False, **limits)
    except _TooSlow:
        raise AssertionError(f"ingest of two small files took over {seconds} s") from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise AssertionError(f"{type(exc).__name__} escaped ingest: {exc}") from exc


def _ingest_and_check(data: bytes, **limits: int) -> str:
    """Ingest `data` as a file of the MM patient next to the good OMBT file (with `limits`,
    ingest's size limits); check that the run survives, keeps the good file and accounts for
    the mutated one once, with no PHI.

    Returns:
        Where the mutated file ended: MANIFEST, or its reject reason.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "raw", Path(tmp) / "processed"
        mutated = root / "MM" / FUZZ_FOLDER / FUZZ_FILE
        good = root / "OMBT" / GOOD_FOLDER / "0001.dcm"
        for path, content in ((mutated, data), (good, _good_file())):
            path.parent.mkdir(parents=True)
            path.write_bytes(content)

        summary = _ingest_within(root, out, INGEST_SECONDS, **limits)

        manifest = _read_csv(out / "manifest.csv")
        rejects = _read_csv(out / "rejects.csv")
        assert [row["label"] for row in manifest].count("OMBT") == 1, "the good file is lost"
        assert not [row for row in rejects if row["source"].startswith("OMBT/")]
        slices = {f"slices/{p.name}" for p in (out / "slices").iterdir()}
        assert slices == {row["file"] for row in manifest}, "slices and manifest differ"

        mutated_rows = [row for row in manifest if row["label"] == "MM"]
        assert [r.path for r in summary.rejects] == [mutated] * len(rejects)
        assert bool(mutated_rows) != bool(rejects), (len(mutated_rows), rejects)
        assert len(rejects) <= 1, rejects
        for row in rejects:
            assert row["source"].startswith("MM/") and row["reason"] in set(RejectReason)
            assert row["detail"].strip(), row

        written = "\n".join(
            [(out / name).read_text(encoding="utf-8") for name in ("manifest.csv", "rejects.csv")]
            + list(summary.warnings)
        )
        leaked = [value for value in _planted() if value in written]
        assert not leaked, f"PHI in the outputs: {leaked}"
        return rejects[0]["reason"] if rejects else MANIFEST


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes() -> Iterator[None]:
    """Print where the mutated files ended, per test, when the module is done."""
    yield
    for test, counts in OUTCOMES.items():
        rejected = sorted((n, reason) for reason, n in counts.items() if reason != MANIFEST)
        print(
            f"\n{test}: {counts.total()} bad inputs tried, {counts[MANIFEST]} in the manifest, "
            f"{counts.total() - counts[MANIFEST]} rejected ("
            + ", ".join(f"{reason} {n}" for n, reason in reversed(rejected))
            + ")"
        )


def test_every_seed_is_ingested_untouched():
    """The seeds are valid, as written by the factory and as rewritten by `_mutate_header`."""
    for name, seed in _seeds().items():
        assert _ingest_and_check(seed.data) == MANIFEST, name
        assert _ingest_and_check(_mutate_header(seed, [])) == MANIFEST, name


@settings(FUZZ_SETTINGS, max_examples=300)
@given(seed_name=st.sampled_from(SEED_NAMES), mutations=header_mutations)
# Found by this test. Rows below the encoded size: pylibjpeg-rle panics, and its
# PanicException is a BaseException that `except Exception` lets out of ingest.
@example(seed_name="rle", mutations=[("Rows", 1)])
# NumberOfFrames at the IS maximum in an encapsulated file: open_ct checks the rescale of
# each of the 2**31 - 1 frames before reading any pixel, hours for one file.
@example(seed_name="jpeg2000", mutations=[("NumberOfFrames", 2**31 - 1)])
# A Modality or Photometric Interpretation that is refused is quoted verbatim in the
# rejects.csv detail, whatever it holds.
@example(seed_name="explicit_little", mutations=[("Modality", FUZZ_PHI.patient_id)])
@example(
    seed_name="explicit_little", mutations=[("PhotometricInterpretation", FUZZ_PHI.patient_id)]
)
def test_hostile_headers_are_ingested_or_rejected(seed_name, mutations):
    """Hostile values in the header tags: each file ends in the manifest or in rejects.csv."""
    data = _mutate_header(_seeds()[seed_name], mutations)
    counts = OUTCOMES.setdefault("hostile headers", Counter())
    counts[_ingest_and_check(data)] += 1


@settings(FUZZ_SETTINGS, max_examples=300)
@given(data=st.data(), seed_name=st.sampled_from(SEED_NAMES))
def test_damaged_bytes_are_ingested_or_rejected(data, seed_name):
    """Truncated, flipped, overwritten, padded or zeroed bytes: the same guarantees."""
    ops = data.draw(byte_mutations(seed_name), label="damage")
    damaged = _damage(_seeds()[seed_name].data, ops)
    counts = OUTCOMES.setdefault("damaged bytes", Counter())
    counts[_ingest_and_check(damaged)] += 1


# --- bombs, special files and linked folders (issue #20) --------------------------------

# Limits of the bomb runs, far below the defaults so that the bombs are quick to write: each
# must be refused from its header, before a byte of it is inflated or decoded.
BOMB_LIMITS = {"max_frame_pixels": 1024 * 1024, "max_image_bytes": 8 * 1024 * 1024}
BOMB_PEAK_BYTES = 64 * 1024 * 1024  # what tracemalloc sees: Python objects and numpy arrays

bombs = st.tuples(
    st.sampled_from(("deflate", "rle")),
    st.sampled_from((64, 256, 1024, 2048)),  # rows = columns
    st.integers(1, 40),  # frames
    st.sampled_from((0, 4096, 1 << 20, 32 << 20)),  # zeros after the pixels (deflate only)
)


@pytest.mark.slow
@settings(FUZZ_SETTINGS, max_examples=24)
@given(bomb=bombs)
@example(bomb=("deflate", 2048, 40, 0))
@example(bomb=("rle", 2048, 40, 0))
@example(bomb=("deflate", 64, 1, 32 << 20))
def test_bombs_are_refused_from_their_header(bomb):
    """Deflate and RLE files that decode to far more than their size: refused unread."""
    kind, side, frames, extra = bomb
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.dcm"
        if kind == "deflate":
            factory.write_deflate_bomb(path, side, side, frames, extra, phi=FUZZ_PHI)
        else:
            factory.write_rle_bomb(path, side, side, frames, phi=FUZZ_PHI)
        data = path.read_bytes()
    tracemalloc.start()
    try:
        outcome = _ingest_and_check(data, **BOMB_LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if side * side > BOMB_LIMITS["max_frame_pixels"]:
        assert outcome == RejectReason.FRAME_TOO_LARGE
    elif side * side * frames * 2 > BOMB_LIMITS["max_image_bytes"] or (
        kind == "deflate" and extra > TRAILER_BYTES  # more than the header declares
    ):
        assert outcome == RejectReason.IMAGE_TOO_LARGE
    assert peak < BOMB_PEAK_BYTES, peak
    OUTCOMES.setdefault("bombs", Counter())[outcome] += 1


ENTRIES = (
    "pipe",
    "socket",
    "link to a pipe",
    "dangling link",
    "link to itself",
    "link to the class folder",
    "linked patient folder",
    "second link to a patient folder",
)
LINKED_PHI = factory.Phi(patient_name="Linkwell^Oona", patient_id="LINKED-0077")


def _plant(kind: str, root: Path, outside: Path, stack: contextlib.ExitStack) -> str:
    """Put one `kind` of entry into the tree; return the reason expected for it, MANIFEST, or
    "either" when one of two links to the same folder is walked and the other rejected."""
    patient = root / "MM" / FUZZ_FOLDER
    if kind == "pipe":
        os.mkfifo(patient / "pipe")
        return RejectReason.NOT_REGULAR_FILE
    if kind == "socket":
        server = stack.enter_context(socket.socket(socket.AF_UNIX))
        server.bind(str(patient / "sock"))
        return RejectReason.NOT_REGULAR_FILE
    if kind == "link to a pipe":
        os.mkfifo(outside / "pipe")
        (patient / "to-pipe.dcm").symlink_to(outside / "pipe")
        return RejectReason.NOT_REGULAR_FILE
    if kind == "dangling link":
        (patient / "gone.dcm").symlink_to(outside / "missing.dcm")
        return RejectReason.UNREADABLE
    if kind == "link to itself":
        (patient / "self.dcm").symlink_to(patient / "self.dcm")
        return RejectReason.UNREADABLE
    if kind == "link to the class folder":
        (patient / "back").symlink_to(root / "MM")
        return RejectReason.NOT_REGULAR_FILE
    if kind == "linked patient folder":
        factory.write_plain(outside / "linked" / "0001.dcm", phi=LINKED_PHI, seed=9)
        (root / "MM" / "Linkwell_Oona").symlink_to(outside / "linked")
        return MANIFEST
    (root / "MM" / "again").symlink_to(patient)
    return "either"


@pytest.mark.slow
@pytest.mark.timeout(300)
@settings(FUZZ_SETTINGS, max_examples=30)
@given(kinds=st.lists(st.sampled_from(ENTRIES), min_size=1, max_size=4, unique=True))
def test_special_files_and_linked_folders_are_accounted_for(kinds):
    """Pipes, sockets, dangling and looping links, linked folders: ingest finishes, each entry
    is ingested or has its reject row, and no name from the tree reaches an output."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root, out, outside = Path(tmp) / "raw", Path(tmp) / "processed", Path(tmp) / "outside"
        patient, good = root / "MM" / FUZZ_FOLDER, root / "OMBT" / GOOD_FOLDER / "0001.dcm"
        for folder in (patient, good.parent, outside):
            folder.mkdir(parents=True)
        (patient / FUZZ_FILE).write_bytes(_seeds()["explicit_little"].data)
        good.write_bytes(_good_file())
        expected = {kind: _plant(kind, root, outside, stack) for kind in kinds}

        summary = _ingest_within(root, out, INGEST_SECONDS)

        reasons = Counter(str(r.reason) for r in summary.rejects)
        wanted = Counter(str(r) for r in expected.values() if r not in (MANIFEST, "either"))
        wanted[RejectReason.NOT_REGULAR_FILE] += "either" in expected.values()
        assert reasons == wanted, (reasons, wanted)
        manifest = _read_csv(out / "manifest.csv")
        assert len(manifest) == 2 + (expected.get("linked patient folder") == MANIFEST)
        written = "\n".join(
            [(out / name).read_text(encoding="utf-8") for name in ("manifest.csv", "rejects.csv")]
            + list(summary.warnings)
        )
        planted = {*_planted(), "Linkwell", "LINKED-0077", "again", "to-pipe", "gone.dcm"}
        assert not [value for value in planted if value in written]
    for outcome in expected.values():
        shown = RejectReason.NOT_REGULAR_FILE if outcome == "either" else outcome
        OUTCOMES.setdefault("special entries", Counter())[str(shown)] += 1
