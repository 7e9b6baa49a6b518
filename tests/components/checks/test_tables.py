"""The tables the suites validate: per-slice pixel statistics from the HU arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.checks.tables import pixel_stats
from tests.components.checks.test_suites import SIZE, ct_slice, write_dataset


def test_pixel_stats_of_a_good_slice(tmp_path):
    dataset = write_dataset(tmp_path)
    manifest, _ = dataset.read()
    stats = pixel_stats(manifest.head(2), dataset.root, 300.0, progress=False)
    assert list(stats["image_id"]) == list(manifest["image_id"].head(2))
    row = stats.iloc[0]
    assert row["readable"]
    assert (row["height"], row["width"], row["n_pixels"]) == (SIZE, SIZE, SIZE * SIZE)
    assert row["nan_count"] == 0
    assert row["hu_min"] < -900 and row["hu_max"] > 600
    assert 0.01 < row["bone_fraction"] < 0.2


def test_pixel_stats_counts_nan_in_float_slices(tmp_path):
    hu = ct_slice(np.random.default_rng(1)).astype(np.float32)
    hu[:2, :3] = np.nan
    np.save(tmp_path / "a.npy", hu)
    stats = pixel_stats(
        pd.DataFrame({"image_id": ["a"], "file": ["a.npy"]}), tmp_path, 300.0, progress=False
    )
    assert stats.loc[0, "nan_count"] == 6
    assert np.isfinite(stats.loc[0, "hu_range"])
