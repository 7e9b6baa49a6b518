"""The tables the suites validate, read and derived from the stage outputs.

- `manifest`: one row per slice, the manifest as written by ingest, plus the per-row
  columns `class_fraction` (share of slices of the row's class) and `patient_labels`
  (distinct labels of the row's patient), so that table-wide rules fail on the rows that
  break them.
- `pixels`: one row per slice, statistics computed from the HU slices (`pixel_stats`).
- `split`: the split outer-joined with the manifest on `image_id`, plus `in_manifest`,
  `manifest_patient`, `manifest_label`, `patient_splits` (distinct splits of the row's
  patient) and `split_fraction` (share of patients, or of images in image mode, of the
  row's split).

  With cross-validation folds (a `fold` column: one split row per image and fold) the
  split columns are per fold: `patient_splits` counts the splits of the row's patient
  within the row's fold, `split_fraction` the share of the fold's patients in the row's
  split; and two columns are added: `image_folds` (distinct folds holding the row's
  image) and `patient_test_folds` (folds in which the row's patient is in test).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.data.split import FOLD_COLUMN


def read_tables(manifest_path: Path, split_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read manifest.csv and split.csv.

    Args:
        manifest_path: the manifest written by `myelomet ingest`.
        split_path: the split written by `myelomet split`.

    Returns:
        The manifest and the split.

    Raises:
        FileNotFoundError: a file is missing; the message names the command that writes it.
    """
    for path, command in ((manifest_path, "myelomet ingest"), (split_path, "myelomet split")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not found; run `{command}` first")
    return pd.read_csv(manifest_path), pd.read_csv(split_path)


def prepare_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with the per-row columns `class_fraction` and `patient_labels`.

    Args:
        manifest: the manifest as read from manifest.csv.

    Returns:
        A copy with the derived columns (left out when their inputs are missing).
    """
    frame = manifest.copy()
    if "label" in frame:
        frame["class_fraction"] = frame["label"].map(frame["label"].value_counts(normalize=True))
        if "patient" in frame:
            frame["patient_labels"] = frame.groupby("patient")["label"].transform("nunique")
    return frame


def prepare_split(split: pd.DataFrame, manifest: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The split outer-joined with the manifest, with the per-row check columns.

    Args:
        split: the split as read from split.csv.
        manifest: the manifest as read from manifest.csv.
        mode: "patient" (split_fraction counts patients) or "image" (counts images).

    Returns:
        One row per split row plus one per manifest image missing from the split (with
        `split` empty); see the module docstring for the derived columns.
    """
    if "image_id" not in split or "image_id" not in manifest:
        return split.copy()
    ref = manifest.drop_duplicates("image_id").set_index("image_id")
    ref = pd.DataFrame(
        {
            "manifest_patient": ref.get("patient"),
            "manifest_label": ref.get("label"),
        },
        index=ref.index,
    )
    frame = split.merge(ref, how="outer", left_on="image_id", right_index=True, indicator=True)
    frame["in_manifest"] = frame.pop("_merge") != "left_only"
    for col in ("patient", "label"):
        if col in frame:
            frame[col] = frame[col].fillna(frame[f"manifest_{col}"])
    if FOLD_COLUMN in frame:
        return _per_fold_columns(frame).reset_index(drop=True)
    if {"patient", "split"} <= set(frame.columns):
        frame["patient_splits"] = frame.groupby("patient")["split"].transform("nunique")
        key = "patient" if mode == "patient" else "image_id"
        assigned = frame.dropna(subset=["split"])
        share = assigned.groupby("split")[key].nunique() / max(assigned[key].nunique(), 1)
        frame["split_fraction"] = frame["split"].map(share)
    return frame.reset_index(drop=True)


def _per_fold_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The check columns of a cross-validation split (see the module docstring); rows
    outside any fold (manifest images missing from the split) get none but
    `image_folds` 0 and their patient's `patient_test_folds`."""
    fold = FOLD_COLUMN
    frame["image_folds"] = frame.groupby("image_id")[fold].transform("nunique")
    if not {"patient", "split"} <= set(frame.columns):
        return frame
    frame["patient_splits"] = frame.groupby([fold, "patient"])["split"].transform("nunique")
    tested = frame[frame["split"] == "test"].groupby("patient")[fold].nunique()
    frame["patient_test_folds"] = frame["patient"].map(tested).fillna(0).astype(int)
    assigned = frame.dropna(subset=["split", fold])
    per_split = assigned.groupby([fold, "split"])["patient"].nunique()
    share = per_split.div(assigned.groupby(fold)["patient"].nunique(), level=fold)
    keys = pd.MultiIndex.from_frame(frame[[fold, "split"]])
    frame["split_fraction"] = share.reindex(keys).to_numpy()
    return frame


def _slice_stats(path: Path, bone_hu: float) -> dict[str, Any]:
    try:
        hu = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return {"readable": False, "error": f"{type(exc).__name__}: {exc}"}
    if hu.ndim != 2:
        return {"readable": False, "error": f"expected a 2-D slice, got shape {hu.shape}"}
    stats: dict[str, Any] = {
        "readable": True,
        "error": None,
        "height": hu.shape[0],
        "width": hu.shape[1],
        "n_pixels": int(hu.size),
        "nan_count": 0,
    }
    if np.issubdtype(hu.dtype, np.floating):
        finite = np.isfinite(hu)
        stats["nan_count"] = int(hu.size - np.count_nonzero(finite))
        hu = hu[finite]
    if hu.size:
        lo, hi = float(hu.min()), float(hu.max())
        stats |= {
            "hu_min": lo,
            "hu_max": hi,
            "hu_range": hi - lo,
            "bone_fraction": np.count_nonzero(hu >= bone_hu) / hu.size,
        }
    return stats


def pixel_stats(
    manifest: pd.DataFrame,
    root: Path,
    bone_hu: float,
    workers: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-slice statistics computed from the HU arrays the manifest points at.

    A missing or unreadable file is a row with `readable` False and the reason in `error`,
    not an exception, so that validation reports it with every other fault.

    Args:
        manifest: rows with `image_id` and `file` (relative to `root`).
        root: the manifest's folder.
        bone_hu: HU at or above which a pixel counts as bone.
        workers: threads loading files (numpy releases the GIL while reading and reducing).
        progress: show a progress bar on stderr.

    Returns:
        One row per manifest row: image_id, file, readable, error, height, width, n_pixels,
        nan_count, hu_min, hu_max, hu_range, bone_fraction.

    Raises:
        ValueError: the manifest has no `image_id` or `file` column.
    """
    missing = [c for c in ("image_id", "file") if c not in manifest]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; rerun `myelomet ingest`")
    files = manifest["file"].tolist()
    paths = [root / str(f) for f in files]
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        rows = list(
            tqdm(
                pool.map(lambda p: _slice_stats(p, bone_hu), paths),
                total=len(paths),
                desc="pixel statistics",
                unit="slice",
                disable=not progress,
            )
        )
    columns = [
        "readable",
        "error",
        "height",
        "width",
        "n_pixels",
        "nan_count",
        "hu_min",
        "hu_max",
        "hu_range",
        "bone_fraction",
    ]
    stats = pd.DataFrame(rows, columns=columns)
    stats.insert(0, "file", files)
    stats.insert(0, "image_id", manifest["image_id"].tolist())
    return stats
