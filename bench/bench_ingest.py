"""Ingest throughput against a bare pydicom read of the same files, measured in one run,
and the peak memory of ingesting one large multi-frame file.

Writes N uncompressed 512x512 CT slices (explicit VR little endian) into a temporary
folder laid out as <root>/<CLASS>/<patient>/, then times, on the same files:
- bare: `pydicom.dcmread(path)` and `.pixel_array`, nothing else;
- ingest: `components.data.ingest.ingest` end to end (HU, npy, manifest, rejects).

Each is run `--rounds` times, alternating, and the best round is reported, e.g.
`ingest 412 slices/s; bare read 980 slices/s; ingest/bare = 0.42`.

Then it writes one multi-frame file of `--frames` such frames (300: 150 MiB) and reports the
peak memory ingest allocates for it (Python and NumPy allocations, traced), e.g.
`multi-frame file 150 MiB (300 frames): ingest peak 6 MiB`; it reads frame by frame, so
the peak stays about one frame's worth whatever the file size.

Usage: python bench/bench_ingest.py [--n 400] [--rounds 2] [--frames 300]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.ingest import ingest  # noqa: E402

SIZE = 512
CLASSES = ("MM", "OMBT")
KEY = bytes.fromhex("42" * 32)


def _slice(pixels: np.ndarray, patient: str, series_uid: str, index: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient
    ds.PatientName = f"Bench^{patient}"
    ds.Modality = "CT"
    ds.Manufacturer = "Bench"
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.InstanceNumber = index + 1
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def _body() -> np.ndarray:
    """True inside the patient's outline."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 2.3) ** 2


def write_slices(root: Path, n: int, per_patient: int = 40, seed: int = 0) -> list[Path]:
    """Write n CT slices as <root>/<CLASS>/<patient>/<i>.dcm; return their paths."""
    rng = np.random.default_rng(seed)
    body = _body()
    paths = []
    series_uid = ""
    for i in range(n):
        patient_index = i // per_patient
        if i % per_patient == 0:
            series_uid = generate_uid()
        label = CLASSES[patient_index % 2]
        patient = f"P{patient_index:04d}"
        noise = rng.integers(-40, 40, (SIZE, SIZE))
        pixels = np.where(body, 1064 + noise, 24)
        path = root / label / patient / f"{i:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        _slice(pixels, patient, series_uid, i).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_volume(root: Path, frames: int) -> Path:
    """Write one multi-frame CT as <root>/MM/<patient>/volume.dcm, frame by frame."""
    frame = np.where(_body(), 1064, 24).astype("<i2")
    ds = _slice(frame, "P9999", generate_uid(), 0)
    ds.NumberOfFrames = frames
    del ds.PixelData
    path = root / CLASSES[0] / "P9999" / "volume.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as f:  # the Pixel Data element, written by hand: OW, 32-bit length
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame.nbytes))
        for _ in range(frames):
            f.write(frame.tobytes())
    return path


def bare_read(paths: list[Path]) -> float:
    """Seconds to dcmread and decode every file."""
    start = time.perf_counter()
    for path in paths:
        pydicom.dcmread(path).pixel_array  # noqa: B018
    return time.perf_counter() - start


def run_ingest(root: Path, out: Path) -> tuple[float, int]:
    """Seconds for a full ingest, and the number of slices it wrote."""
    start = time.perf_counter()
    summary = ingest(root, out, CLASSES, KEY, progress=False)
    return time.perf_counter() - start, summary.n_slices


def ingest_peak(root: Path, out: Path) -> int:
    """Peak bytes allocated (Python and NumPy, traced) by a full ingest."""
    tracemalloc.start()
    try:
        ingest(root, out, CLASSES, KEY, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="number of slices (default 400)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument(
        "--frames", type=int, default=300, help="frames of the multi-frame file (default 300)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        root, out = Path(tmp) / "raw", Path(tmp) / "out"
        paths = write_slices(root, args.n)
        bare_read(paths[: min(20, len(paths))])  # warm imports and the page cache
        bare_best = ingest_best = float("inf")
        n_slices = 0
        for _ in range(args.rounds):
            bare_best = min(bare_best, bare_read(paths))
            seconds, n_slices = run_ingest(root, out)
            ingest_best = min(ingest_best, seconds)
        if n_slices != args.n:
            raise RuntimeError(f"ingest wrote {n_slices} slices of {args.n}; see {out}/rejects.csv")
        volume_root = Path(tmp) / "volume"
        volume_mib = write_volume(volume_root, args.frames).stat().st_size / 2**20
        peak_mib = ingest_peak(volume_root, Path(tmp) / "volume_out") / 2**20

    ingest_rate = args.n / ingest_best
    bare_rate = args.n / bare_best
    print(
        f"{args.n} uncompressed {SIZE}x{SIZE} CT slices, {os.cpu_count()} CPUs, "
        f"best of {args.rounds} rounds"
    )
    print(
        f"ingest {ingest_rate:.0f} slices/s; bare read {bare_rate:.0f} slices/s; "
        f"ingest/bare = {ingest_rate / bare_rate:.2f}"
    )
    print(
        f"multi-frame file {volume_mib:.0f} MiB ({args.frames} frames): ingest peak "
        f"{peak_mib:.0f} MiB (Python and NumPy allocations)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
