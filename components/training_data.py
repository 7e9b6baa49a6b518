"""The data one backbone trains on: every slice of the split as model input at one size
(cached on disk under training.cache_dir, memory-mapped), class weights, and tf.data batches
of (x, y, sample weight), optionally augmented.

Also the hashes that key caches and runs: `data_version` (manifest and split contents),
`input_key` (what of the input config shapes the model inputs), `hash_json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import tensorflow as tf

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
    manifest = cfg.path(cfg.ingest.out) / "manifest.csv"
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

    from components.dataset import model_input

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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, size, size, 3))
        for i, file in enumerate(tqdm(table["file"], desc=f"model inputs {size}px", disable=None)):
            out[i] = model_input(np.load(manifest.parent / file), windows, size, cfg.input.crop)
        out.flush()
        del out
        os.replace(tmp, path)
        x = np.load(path, mmap_mode="r")
    y = table["label"].map({c: i for i, c in enumerate(cfg.classes)}).to_numpy(np.int32)
    return TrainingData(table[["image_id", "patient", "label", "split"]], x, y, version)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights n / (k * n_c) of the training labels (absent classes get 0)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(y) / (n_classes * counts), 0.0)
    return weights.astype(np.float32)


# --------------------------------------------------------------------------- tf.data


def batches(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    rows: np.ndarray,
    batch: int,
    shuffle: bool,
    augment: Callable[..., Any] | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (x, y, sample weight) gathered from arrays (memory-mapped ones included),
    shuffled with `seed` when `shuffle`."""
    import tensorflow as tf

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.sort(idx)
        return np.asarray(x[idx], dtype=np.float32), y[idx], w[idx]

    ds = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    # whole batches only when there are some: a batch of 1-2 images upsets BatchNorm
    ds = ds.batch(batch, drop_remainder=shuffle and len(rows) > batch)
    shape = (None, *x.shape[1:])

    @tf.autograph.experimental.do_not_convert
    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        xb, yb, wb = tf.numpy_function(gather, [idx], (tf.float32, tf.int32, tf.float32))
        xb.set_shape(shape)
        yb.set_shape((None,))
        wb.set_shape((None,))
        return xb, yb, wb

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augmenter(rotation_deg: float, intensity: float, seed: int) -> Callable[..., Any]:
    """Random left-right flip, rotation within ±rotation_deg, gain and offset within
    ±intensity (of the 0..255 range), on batches of (x, y, w).

    Only left-right flips: an axial slice flipped front to back is not anatomy.
    """
    import keras
    import tensorflow as tf

    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    rotate = (
        keras.layers.RandomRotation(rotation_deg / 360.0, fill_mode="nearest", seed=seed)
        if rotation_deg > 0
        else None
    )

    @tf.autograph.experimental.do_not_convert
    def augment(x: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = flip(x, training=True)
        if rotate is not None:
            x = rotate(x, training=True)
        if intensity > 0:
            n = tf.shape(x)[0]
            gain = tf.random.uniform((n, 1, 1, 1), 1.0 - intensity, 1.0 + intensity)
            offset = tf.random.uniform((n, 1, 1, 1), -intensity, intensity) * 255.0
            x = tf.clip_by_value(x * gain + offset, 0.0, 255.0)
        return x, y, w

    return augment
