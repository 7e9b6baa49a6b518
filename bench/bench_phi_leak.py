"""Search everything a finished demo wrote for the identifiers planted in its DICOM files.

After `make demo` (or `dvc repro`), this re-creates the synthetic cohort of params.yaml in
a temporary folder, takes every identifying string it writes into the DICOM headers (names,
IDs, birth dates, accession numbers, UIDs, institutions) and searches every file the
pipeline produced for each of them, in every form a copy could take (`fuzzy_forms`): dates
in other formats, names by their parts, in either order, transliterated (`Müller` ->
`Mueller`, `Muller`) or without apostrophes, IDs with other separators, any case. Text (a
chunk without a NUL byte) is searched once more with separators removed on both sides, so
`acc 555 12345` is found for `ACC55512345`. The files searched: the processed slices and
CSVs, the splits, the models, the reports, the MLflow database and artifacts, the
pipeline's logs. It prints how many identifiers were planted, how many files and bytes were
searched and how many identifiers were found (the answer should be 0), and exits 1 if any
was.

    .venv/bin/python bench/bench_phi_leak.py [--params params.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterable
from datetime import datetime
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
# Shorter forms (sex, age, short numbers) also occur by chance in binary files; a form of
# digits only needs DIGITS_LENGTH (a 6-digit number is any count or metric).
MIN_LENGTH = 6
DIGITS_LENGTH = 8
CHUNK_BYTES = 16 * 2**20
# What may stand between the parts of a name or an ID in a copy.
SEPARATORS = ("", " ", "^", "-", "_", ".", ",", ", ", "/")
# Removed from text (and from each form) before the second, separator-blind search.
_JOINERS = re.compile(rb"(?:[\s\-_./^'`]|\xe2\x80\x99)+")
_TRANSLITERATION = {
    "ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue",
    "æ": "ae", "Æ": "Ae", "ø": "oe", "Ø": "Oe", "å": "aa", "Å": "Aa",
}  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


def squeeze(data: bytes) -> bytes:
    """`data` without the separators a copy may put between parts (space, -_./^ and quotes)."""
    return _JOINERS.sub(b"", data)


def _transliterations(text: str) -> set[str]:
    """`text`, with umlauts and the like spelt out (`ü` -> `ue`), and with accents dropped."""
    spelt = "".join(_TRANSLITERATION.get(c, c) for c in text)
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return {text, spelt, plain}


def _date_forms(value: str) -> set[str]:
    """A YYYYMMDD date in the formats people and software write dates in."""
    try:
        day = datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return set()
    y4, y2 = f"{day.year:04d}", f"{day.year % 100:02d}"
    m2, d2, m1, d1 = f"{day.month:02d}", f"{day.day:02d}", str(day.month), str(day.day)
    month = _MONTHS[day.month - 1]
    forms = set()
    for sep in ("", "-", "/", ".", " "):
        for year in (y4, y2):
            forms |= {sep.join((year, m2, d2)), sep.join((d2, m2, year)), sep.join((m2, d2, year))}
        forms |= {sep.join((d1, m1, y4)), sep.join((m1, d1, y4))}
    for name in (month, month[:3]):
        forms |= {
            f"{d1} {name} {y4}",
            f"{d2}-{name}-{y4}",
            f"{name} {d1}, {y4}",
            f"{name} {d1} {y4}",
            f"{y4}-{name}-{d2}",
        }
    return forms


def _name_forms(value: str) -> set[str]:
    """A DICOM person name's groups (`=`), components (`^`) and words, and its family and
    given names joined in either order by each separator."""
    forms = set()
    for group in value.split("="):
        components = [c.strip() for c in group.split("^") if c.strip()]
        forms.add(group)
        forms.update(components)
        forms.update(w for c in components for w in re.split(r"[\s\-]+", c) if w)
        if len(components) >= 2:
            family, given = components[0], components[1]
            for sep in SEPARATORS:
                forms |= {f"{family}{sep}{given}", f"{given}{sep}{family}"}
            forms.add(" ".join(components[1:] + components[:1]))
    return forms


def _id_forms(value: str) -> set[str]:
    """An ID's runs of digits, pairs of its words, and a UID without leading zeros."""
    forms = set(re.findall(rf"\d{{{DIGITS_LENGTH},}}", value))
    words = value.split()
    forms.update(" ".join(words[i : i + 2]) for i in range(len(words) - 1))
    if re.fullmatch(r"\d+(\.\d+)+", value):
        forms.add(".".join(str(int(c)) for c in value.split(".")))
    return forms


def fuzzy_forms(identifier: str) -> frozenset[str]:
    """Every form of `identifier` a copy could take (case aside: the search ignores it).

    Names (`^` or `=` in them) by their parts and in either order, dates in other formats,
    IDs by their digits and word pairs, UIDs without leading zeros; each also transliterated.
    """
    forms = {identifier, *_date_forms(identifier), *_id_forms(identifier)}
    if "^" in identifier or "=" in identifier:
        forms |= _name_forms(identifier)
    return frozenset(t for f in forms for t in _transliterations(f) if t.strip())


class LeakSearch:
    """The byte patterns of every form of some identifiers, and a search for them.

    Each form is searched lower-cased in its UTF-8 and Latin-1 bytes; in text also with
    separators removed (`squeeze`). Forms shorter than `min_length` bytes are left out
    (they occur by chance), and so are forms of digits only shorter than DIGITS_LENGTH.
    """

    def __init__(self, identifiers: Iterable[str], min_length: int = MIN_LENGTH) -> None:
        if not 3 <= min_length <= 8:  # a window of the search is 3 to 8 bytes (an uint64)
            raise ValueError(f"min_length must be 3 to 8 bytes, got {min_length}")
        self.min_length = min_length
        self.raw: dict[bytes, set[str]] = {}
        self.squeezed: dict[bytes, set[str]] = {}
        for identifier in identifiers:
            for form in fuzzy_forms(identifier):
                for encoding in ("utf-8", "latin-1"):
                    try:
                        pattern = form.encode(encoding).lower()
                    except UnicodeEncodeError:
                        continue
                    self._add(self.raw, pattern, identifier)
                    self._add(self.squeezed, squeeze(pattern), identifier)

    def _add(self, table: dict[bytes, set[str]], pattern: bytes, identifier: str) -> None:
        digits = pattern.isdigit()
        if len(pattern) >= (max(DIGITS_LENGTH, self.min_length) if digits else self.min_length):
            table.setdefault(pattern, set()).add(identifier)

    def drop(self, data: bytes) -> int:
        """Leave out every pattern that occurs in `data` (text that identifies no one, such
        as the code that generated the identifiers); returns how many."""
        hits = self.search(data)
        for table, found in zip((self.raw, self.squeezed), hits, strict=True):
            for pattern in found:
                del table[pattern]
        return sum(len(found) for found in hits)

    def search(self, data: bytes) -> tuple[set[bytes], set[bytes]]:
        """The raw and the squeezed patterns that occur in `data` (any case)."""
        lowered = data.lower()
        raw = _find(lowered, self.raw, self.min_length)
        squeezed = (
            set() if b"\x00" in lowered else _find(squeeze(lowered), self.squeezed, self.min_length)
        )
        return raw, squeezed

    def identifiers(self, hits: tuple[set[bytes], set[bytes]]) -> set[str]:
        """The identifiers whose forms are among `hits`."""
        raw, squeezed = hits
        return {i for p in raw for i in self.raw[p]} | {
            i for p in squeezed for i in self.squeezed[p]
        }

    @property
    def longest(self) -> int:
        return max((len(p) for table in (self.raw, self.squeezed) for p in table), default=0)


def _find(data: bytes, patterns: dict[bytes, set[str]], width: int) -> set[bytes]:
    """The patterns that occur in `data`: windows of `width` bytes that start a pattern are
    checked in full (every pattern is at least `width` long)."""
    if not patterns or len(data) < width:
        return set()
    anchors: dict[int, list[bytes]] = {}
    for pattern in patterns:
        anchors.setdefault(int.from_bytes(pattern[:width], "big"), []).append(pattern)
    keys = np.array(sorted(anchors), dtype=np.uint64)
    windows = _windows(data, width)
    # a table of the anchors' first 3 bytes picks the few windows worth a binary search
    shift = np.uint64(8 * (width - 3))
    first = np.zeros(2**24, dtype=bool)
    first[(keys >> shift).astype(np.int64)] = True
    candidates = np.nonzero(first[(windows >> shift).astype(np.int64)])[0]
    at_key = np.minimum(np.searchsorted(keys, windows[candidates]), len(keys) - 1)
    found = set()
    for at in candidates[keys[at_key] == windows[candidates]].tolist():
        found.update(p for p in anchors[int(windows[at])] if data.startswith(p, at))
    return found


def outputs(root: Path) -> list[Path]:
    """Every file under the output folders that exist."""
    return sorted(
        p
        for folder in OUTPUT_FOLDERS
        if (root / folder).is_dir()
        for p in (root / folder).rglob("*")
        if p.is_file()
    )


def _windows(data: bytes, width: int) -> np.ndarray:
    """Every `width`-byte window of data as a big-endian integer, one per offset."""
    values = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
    n = len(values) - width + 1
    out = np.zeros(max(n, 0), dtype=np.uint64)
    for k in range(width):
        out = (out << np.uint64(8)) | values[k : k + n]
    return out


def _distinct(files: list[Path]) -> list[Path]:
    """One file of each content (a model is in models/ and again in MLflow's artifacts)."""
    seen: dict[str, Path] = {}
    for path in files:
        with path.open("rb") as handle:
            seen.setdefault(hashlib.file_digest(handle, "sha256").hexdigest(), path)
    return list(seen.values())


def find_leaks(
    files: list[Path], identifiers: Iterable[str] | LeakSearch, min_length: int = MIN_LENGTH
) -> dict[str, list[str]]:
    """identifier -> the files that hold it in any of its forms, every byte of every file
    read once (a chunk at a time, each overlapping the last by the longest pattern)."""
    search = (
        identifiers if isinstance(identifiers, LeakSearch) else LeakSearch(identifiers, min_length)
    )
    overlap = max(search.longest - 1, 0)
    found: dict[str, set[str]] = {}
    for path in _distinct(files):
        with path.open("rb") as handle:
            tail = b""  # the end of the previous chunk: a form may straddle two
            while chunk := handle.read(CHUNK_BYTES):
                data = tail + chunk
                for identifier in search.identifiers(search.search(data)):
                    found.setdefault(identifier, set()).add(str(path))
                tail = data[-overlap:] if overlap else b""
    return {k: sorted(v) for k, v in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    cfg = load_config(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = synthesize_cohort(cfg.synthetic, cfg.classes, Path(tmp) / "cohort", False)
    planted = {s for s in cohort.phi_strings() if len(s) >= MIN_LENGTH}
    # site names and station ids the phantom generator takes from its own source, and the
    # forms found there ("Synthetic", a name part): they are in every copy of the code (the
    # logged model's too), and identify no patient
    package = Path(__file__).parents[1] / "components"
    source = "".join(p.read_text() for p in package.rglob("*.py"))
    constants = {s for s in planted if s in source}
    search = LeakSearch(planted - constants)
    common = search.drop(source.encode())
    files = outputs(cfg.root)
    if not files:
        print(f"no pipeline outputs under {cfg.root}: run `make demo` first", file=sys.stderr)
        return 2
    leaks = find_leaks(files, search)
    size = sum(p.stat().st_size for p in files)
    print(
        f"{len(planted - constants)} identifiers planted in {cohort.n_patients} patients' DICOM "
        f"headers, searched in {len(search.raw) + len(search.squeezed)} forms (and "
        f"{len(constants)} site names and {common} forms found in the generator's source, "
        "left out); "
        f"{len(files)} output files ({size / 2**20:.0f} MiB) searched; "
        f"{len(leaks)} identifiers found"
    )
    for identifier, where in sorted(leaks.items()):
        print(f"  found {identifier!r} in {where[:3]}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
