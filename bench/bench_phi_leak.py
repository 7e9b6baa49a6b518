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
import sys
import tempfile
from pathlib import Path

from components.config import load_config
from components.synthetic import synthesize_cohort

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


def outputs(root: Path) -> list[Path]:
    """Every file under the output folders that exist."""
    return sorted(
        p
        for folder in OUTPUT_FOLDERS
        if (root / folder).is_dir()
        for p in (root / folder).rglob("*")
        if p.is_file()
    )


def find_leaks(files: list[Path], identifiers: frozenset[str]) -> dict[str, list[str]]:
    """identifier -> the files that hold it (as bytes, in UTF-8 or Latin-1)."""
    needles = {i: {i.encode("utf-8"), i.encode("latin-1", "replace")} for i in identifiers}
    found: dict[str, list[str]] = {}
    for path in files:
        data = path.read_bytes()
        for identifier, forms in needles.items():
            if any(form in data for form in forms):
                found.setdefault(identifier, []).append(str(path))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    cfg = load_config(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = synthesize_cohort(cfg.synthetic, cfg.classes, Path(tmp) / "cohort", False)
    identifiers = frozenset(s for s in cohort.phi_strings() if len(s) >= MIN_LENGTH)
    files = outputs(cfg.root)
    if not files:
        print(f"no pipeline outputs under {cfg.root}: run `make demo` first", file=sys.stderr)
        return 2
    leaks = find_leaks(files, identifiers)
    size = sum(p.stat().st_size for p in files)
    print(
        f"{len(identifiers)} identifiers planted in {cohort.n_patients} patients' DICOM headers; "
        f"{len(files)} output files ({size / 2**20:.0f} MiB) searched; "
        f"{len(leaks)} identifiers found"
    )
    for identifier, where in sorted(leaks.items()):
        print(f"  found {identifier!r} in {where[:3]}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
