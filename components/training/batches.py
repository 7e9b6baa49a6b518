"""The data one backbone trains on: every slice of the split as model input at one size
(cached on disk under training.cache_dir, memory-mapped), class weights, and numpy batches
of (x, y, sample weight), optionally augmented.

Also the hashes that key caches and runs: `data_version` (manifest and split contents),
`input_key` (what of the input config shapes the model inputs), `hash_json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from components.artifacts import MANIFEST_FILE
from components.atomic import atomic_path

if TYPE_CHECKING:
    from components.config import Config


class InputDataError(ValueError):
    """The manifest or split cannot be used for training."""


def _sha256_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def input_key(cfg: Config) -> dict[str, Any]:
    """What of the input config shapes the model inputs (part of cache keys and hashes)."""
    return {
        "windows": [w.model_dump() for w in cfg.input.channel_windows()],
        "crop": cfg.input.crop,
    }


def data_version(manifest: Path, split: Path) -> str:
    """Short hash of the manifest and split contents: the data a model was trained on."""
    return _sha256_files([manifest, split])[:16]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainingData:
    """Every slice of the split as model input, in the order of `table`."""

    table: pd.DataFrame  # image_id, patient, label, split; row i is x[i]
    x: np.ndarray  # (n, size, size, 3) float32 0..255, maybe memory-mapped
    y: np.ndarray  # class index into cfg.classes
    version: str

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.table["split"].to_numpy() == split)


def data_paths(cfg: Config) -> tuple[Path, Path]:
    manifest = cfg.path(cfg.ingest.out) / MANIFEST_FILE
    split = cfg.path(cfg.split.out)
    for path, stage in ((manifest, "ingest"), (split, "split")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `myelomet {stage}` first")
    return manifest, split


def _read_table(cfg: Config, manifest: Path, split: Path) -> pd.DataFrame:
    rows = pd.read_csv(split)
    files = pd.read_csv(manifest, usecols=["image_id", "file"])
    table = rows.merge(files, on="image_id", how="left", validate="one_to_one")
    missing = table["file"].isna()
    if missing.any():
        raise InputDataError(
            f"{split}: {int(missing.sum())} image_ids are not in {manifest} "
            f"(e.g. {table.loc[missing, 'image_id'].iloc[0]}); rerun `myelomet split`"
        )
    unknown = sorted(set(table["label"]) - set(cfg.classes))
    if unknown:
        raise InputDataError(f"{split}: labels {unknown} are not in classes {list(cfg.classes)}")
    for name in ("train", "val"):
        if not (table["split"] == name).any():
            raise InputDataError(f"{split}: no {name} rows; training needs train and val")
    return table


def load_inputs(cfg: Config, size: int) -> TrainingData:
    """Every slice of the split as model input at one size, cached under training.cache_dir.

    The cache (`inputs/<size>px-<key>.npy`, memory-mapped when read) is keyed by the data
    version, windows and size, so backbones of the same size share it.

    Raises:
        FileNotFoundError: manifest or split missing.
        InputDataError: they do not fit together.
    """
    from tqdm import tqdm

    from components.data.dataset import model_input

    manifest, split = data_paths(cfg)
    version = data_version(manifest, split)
    table = _read_table(cfg, manifest, split)
    windows = cfg.input.channel_windows()
    key = hash_json([version, size, input_key(cfg)])[:16]
    path = cfg.path(cfg.training.cache_dir) / "inputs" / f"{size}px-{key}.npy"
    n = len(table)
    x: np.ndarray | None = None
    if path.is_file():
        x = np.load(path, mmap_mode="r")
        if x.shape != (n, size, size, 3):
            x = None
    if x is None:
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(n, size, size, 3)
            )
            for i, file in enumerate(
                tqdm(table["file"], desc=f"model inputs {size}px", disable=None)
            ):
                out[i] = model_input(np.load(manifest.parent / file), windows, size, cfg.input.crop)
            out.flush()
            del out
        x = np.load(path, mmap_mode="r")
    y = table["label"].map({c: i for i, c in enumerate(cfg.classes)}).to_numpy(np.int32)
    return TrainingData(table[["image_id", "patient", "label", "split"]], x, y, version)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights n / (k * n_c) of the training labels (absent classes get 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(y) / (n_classes * counts), 0.0)
    return weights.astype(np.float32)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Augment:
    """Random left-right flip, rotation within ±rotation_deg, gain and offset within
    ±intensity (of the 0..255 range), in numpy, so that every backend trains on the same
    images. Only left-right flips: an axial slice flipped front to back is not anatomy."""

    rotation_deg: float
    intensity: float

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from scipy import ndimage

        n = len(x)
        flip = rng.random(n) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        if self.rotation_deg > 0:
            angles = rng.uniform(-self.rotation_deg, self.rotation_deg, n)
            x = np.stack(
                [
                    ndimage.rotate(
                        image, angle, axes=(1, 0), reshape=False, order=1, mode="nearest"
                    )
                    for image, angle in zip(x, angles, strict=True)
                ]
            )
        if self.intensity > 0:
            gain = rng.uniform(1.0 - self.intensity, 1.0 + self.intensity, (n, 1, 1, 1))
            offset = rng.uniform(-self.intensity, self.intensity, (n, 1, 1, 1)) * 255.0
            x = np.clip(x * gain + offset, 0.0, 255.0)
        return x.astype(np.float32)


class Batches:
    """Batches of (x, y, sample weight) gathered from arrays (memory-mapped ones included),
    as numpy arrays any Keras backend takes.

    Each epoch's order and augmentation are drawn from (seed, epoch, batch), so an epoch is
    the same whether or not the run was interrupted before it. The next batch is prepared
    in a background thread while the current one trains. Training batches are whole when
    there are enough rows (a batch of 1-2 images upsets BatchNorm, and every new batch
    shape is another compilation under XLA).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        rows: np.ndarray,
        batch: int,
        shuffle: bool,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.x, self.y, self.w = x, y, w
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch, self.shuffle, self.augment, self.seed = batch, shuffle, augment, seed
        self.drop_remainder = shuffle and len(self.rows) > batch

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch)
        return full if self.drop_remainder or rest == 0 else full + 1

    def _batch(self, order: np.ndarray, epoch: int, i: int) -> tuple[np.ndarray, ...]:
        idx = np.sort(order[i * self.batch : (i + 1) * self.batch])
        xb = np.asarray(self.x[idx], dtype=np.float32)
        if self.augment is not None:
            xb = self.augment(xb, np.random.default_rng([self.seed, epoch, i]))
        return xb, self.y[idx], self.w[idx]

    def epoch(self, index: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The batches of epoch `index` (0-based)."""
        order = self.rows
        if self.shuffle:
            order = np.random.default_rng([self.seed, index]).permutation(self.rows)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._batch, order, index, 0) if len(self) else None
            for i in range(len(self)):
                assert pending is not None
                current = pending.result()
                if i + 1 < len(self):
                    pending = pool.submit(self._batch, order, index, i + 1)
                yield current
