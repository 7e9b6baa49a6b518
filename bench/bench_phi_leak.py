"""Search everything a finished demo wrote for the identifiers planted in its DICOM files.

After `make demo` (or `dvc repro`), this re-creates the synthetic cohort of params.yaml in
a temporary folder, takes every identifying string it writes into the DICOM headers (names,
IDs, birth dates, accession numbers, UIDs, institutions) and searches every file the
pipeline produced for each of them: the processed slices and CSVs, the splits, the models,
the reports, the MLflow database and artifacts, the pipeline's logs. It prints how many
identifiers were planted, how many files and bytes were searched and how many identifiers
were found (the answer should be 0), and exits 1 if any was.

    .venv/bin/python bench/bench_phi_leak.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

from components.config import load_config
from components.data.synthetic.cohort import synthesize_cohort

# What the pipeline writes (relative to the project root); the raw DICOM root is the input.
OUTPUT_FOLDERS = (
    "data/processed",
    "data/splits",
    "data/features",
    "models",
    "models_image_split",
    "reports",
    "mlruns",
    ".myelomet/study",
)
# Shorter strings (sex, age, short numbers) also occur by chance in binary files.
MIN_LENGTH = 6
CHUNK_BYTES = 16 * 2**20


def outputs(root: Path) -> list[Path]:
    """Every file under the output folders that exist."""
    return sorted(
        p
        for folder in OUTPUT_FOLDERS
        if (root / folder).is_dir()
        for p in (root / folder).rglob("*")
        if p.is_file()
    )


def _anchors(identifiers: frozenset[str]) -> dict[int, list[tuple[bytes, str]]]:
    """The first MIN_LENGTH bytes of each identifier's UTF-8 and Latin-1 forms, as an
    integer -> (form, identifier) of those that start with them."""
    anchors: dict[int, list[tuple[bytes, str]]] = {}
    for identifier in identifiers:
        for form in {identifier.encode("utf-8"), identifier.encode("latin-1", "replace")}:
            key = int.from_bytes(form[:MIN_LENGTH], "big")
            anchors.setdefault(key, []).append((form, identifier))
    return anchors


def _windows(data: bytes) -> np.ndarray:
    """Every MIN_LENGTH-byte window of data as a big-endian integer, one per offset."""
    values = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    n = len(values) - MIN_LENGTH + 1
    out = np.zeros(max(n, 0), dtype=np.uint64)
    for k in range(MIN_LENGTH):
        out = (out << np.uint64(8)) | values[k : k + n]
    return out


def _distinct(files: list[Path]) -> list[Path]:
    """One file of each content (a model is in models/ and again in MLflow's artifacts)."""
    seen: dict[str, Path] = {}
    for path in files:
        with path.open("rb") as handle:
            seen.setdefault(hashlib.file_digest(handle, "sha256").hexdigest(), path)
    return list(seen.values())


def find_leaks(files: list[Path], identifiers: frozenset[str]) -> dict[str, list[str]]:
    """identifier -> the files that hold it (UTF-8 or Latin-1), every byte of every file
    read once: windows whose first bytes start an identifier are checked in full."""
    anchors = _anchors(identifiers)
    keys = np.array(sorted(anchors), dtype=np.uint64)
    longest = max((len(f) for forms in anchors.values() for f, _ in forms), default=0)
    found: dict[str, set[str]] = {}
    for path in _distinct(files):
        with path.open("rb") as handle:
            tail = b""  # the end of the previous chunk: an identifier may straddle two
            while chunk := handle.read(CHUNK_BYTES):
                data = tail + chunk
                windows = _windows(data)
                at_key = np.minimum(np.searchsorted(keys, windows), len(keys) - 1)
                for at in np.nonzero(keys[at_key] == windows)[0].tolist():
                    for form, identifier in anchors[int(windows[at])]:
                        if data.startswith(form, at):
                            found.setdefault(identifier, set()).add(str(path))
                tail = data[-(longest - 1) :]
    return {k: sorted(v) for k, v in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    cfg = load_config(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = synthesize_cohort(cfg.synthetic, cfg.classes, Path(tmp) / "cohort", False)
    planted = {s for s in cohort.phi_strings() if len(s) >= MIN_LENGTH}
    # site names and station ids the phantom generator takes from its own source: they are
    # in every copy of the code (the logged model's too), and identify no patient
    package = Path(__file__).parents[1] / "components"
    source = "".join(p.read_text() for p in package.rglob("*.py"))
    constants = {s for s in planted if s in source}
    identifiers = frozenset(planted - constants)
    files = outputs(cfg.root)
    if not files:
        print(f"no pipeline outputs under {cfg.root}: run `make demo` first", file=sys.stderr)
        return 2
    leaks = find_leaks(files, identifiers)
    size = sum(p.stat().st_size for p in files)
    print(
        f"{len(identifiers)} identifiers planted in {cohort.n_patients} patients' DICOM headers "
        f"(and {len(constants)} site names of the generator's source, left out); "
        f"{len(files)} output files ({size / 2**20:.0f} MiB) searched; "
        f"{len(leaks)} identifiers found"
    )
    for identifier, where in sorted(leaks.items()):
        print(f"  found {identifier!r} in {where[:3]}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
