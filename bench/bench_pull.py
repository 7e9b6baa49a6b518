"""`myelomet pull` throughput from a local Orthanc, DICOMweb against DIMSE against copying
the same files from disk, measured in one run.

Writes N uncompressed 512x512 CT slices (explicit VR little endian) for a few patients,
starts a real Orthanc on loopback (tests.orthanc_server; needs the Debian packages
`orthanc orthanc-dicomweb`), stores them, then times on the same instances:
- copy: `shutil.copy2` of every file into a fresh folder (the floor: no network, no work);
- dicomweb: `components.pacs.pull.pull` over QIDO-RS + WADO-RS into a fresh folder;
- dimse: the same over C-FIND + C-GET.
Both pulls de-identify every instance before writing it. It prints instances per second
for each and the ratios, e.g. `dicomweb 310 instances/s, dimse 240 instances/s, copy 5100
instances/s; dicomweb/copy = 0.06, dimse/copy = 0.05`.

Usage: python bench/bench_pull.py [--n 200] [--patients 4] [--max-connections 4]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.config import PullConfig  # noqa: E402
from components.pacs.pull import pull, remote_for  # noqa: E402
from components.pacs.source import parse_source  # noqa: E402
from tests.dicom_factory import Phi, stored_pixels, write_plain  # noqa: E402
from tests.orthanc_server import missing_packages, running_orthanc  # noqa: E402

CLASSES = ("MM", "OMBT")
KEY = bytes.fromhex("42" * 32)
SIZE = 512


def _write(root: Path, n: int, patients: int) -> tuple[list[Path], Path]:
    """N slices spread over `patients` patients; returns the files and a cohort CSV."""
    files = []
    rows = ["accession_number,label"]
    for p in range(patients):
        phi = Phi(patient_id=f"BENCH-{p:04d}", accession=f"BENCHACC{p:04d}")
        label = CLASSES[p % 2]
        rows.append(f"{phi.accession},{label}")
        for i in range(p, n, patients):
            path = root / label / f"patient{p}" / f"{i:05d}.dcm"
            written = write_plain(path, phi=phi, pixels=stored_pixels(SIZE, SIZE, seed=i))
            files.append(written.path)
    cohort = root.parent / "cohort.csv"
    cohort.write_text("\n".join(rows) + "\n")
    return files, cohort


def _same_series(files: list[Path]) -> None:
    """Give each patient's slices one study and one series, as a scanner would."""
    import pydicom
    from pydicom.uid import generate_uid

    by_patient: dict[Path, tuple[str, str]] = {}
    for path in files:
        study, series = by_patient.setdefault(path.parent, (generate_uid(), generate_uid()))
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(path, enforce_file_format=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--max-connections", type=int, default=4)
    args = parser.parse_args()
    problem = missing_packages()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    cfg = PullConfig(max_connections=args.max_connections)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files, cohort = _write(work / "original", args.n, args.patients)
        _same_series(files)
        with running_orthanc(work / "orthanc") as server:
            server.upload(files)
            rates = {}
            start = time.perf_counter()
            for path in files:
                target = work / "copy" / path.relative_to(work / "original")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            rates["copy"] = len(files) / (time.perf_counter() - start)
            for name, url in (("dicomweb", server.dicomweb_url), ("dimse", server.dimse_url)):
                remote = remote_for(parse_source(url), cfg)
                start = time.perf_counter()
                summary = pull(remote, cohort, work / name, CLASSES, KEY, cfg, progress=False)
                seconds = time.perf_counter() - start
                if summary.fetched != len(files):
                    print(f"{name}: pulled {summary.fetched} of {len(files)}", file=sys.stderr)
                    return 1
                rates[name] = len(files) / seconds
    print(
        f"{len(files)} instances of {SIZE}x{SIZE}, {args.patients} patients, "
        f"max_connections {args.max_connections}: dicomweb {rates['dicomweb']:.0f} "
        f"instances/s, dimse {rates['dimse']:.0f} instances/s, copy {rates['copy']:.0f} "
        f"instances/s; dicomweb/copy = {rates['dicomweb'] / rates['copy']:.3f}, "
        f"dimse/copy = {rates['dimse'] / rates['copy']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
