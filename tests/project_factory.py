"""Tiny real projects for the tests that train: HU slices, a manifest and a patient split
written from a seed, and a copy of a project whose MLflow store points at the copy.

A test that changes a trained project (breaks a backbone's folder, registers another
version) works on `copy_project` of a shared one, so the shared one stays as it was trained
whichever tests ran before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from components import tracking
from components.config import load_config
from components.relocation import relocate


def write_tiny_project(root: Path, patients_per_class: int = 10, slices: int = 3) -> None:
    """HU slices of 40 px, a manifest and a patient split: MM slices hold a bright disk,
    OMBT slices a dark hole, anywhere on noisy soft tissue."""
    rng = np.random.default_rng(0)
    folder = root / "data" / "processed"
    (folder / "slices").mkdir(parents=True)
    yy, xx = np.mgrid[:40, :40]
    rows, split = [], []
    for c, label in enumerate(("MM", "OMBT")):
        for p in range(patients_per_class):
            patient = f"{label.lower()}{p:02d}"
            part = "train" if p < 0.6 * patients_per_class else "val" if p % 2 else "test"
            for k in range(slices):
                hu = rng.normal(40, 30, (40, 40))
                cy, cx = rng.uniform(12, 28, 2)
                hu[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(5, 8) ** 2] = (1200, -800)[c]
                image_id = f"{patient}-{k}"
                np.save(folder / "slices" / f"{image_id}.npy", hu.astype(np.int16))
                rows.append(
                    (image_id, patient, label, f"slices/{image_id}.npy", hu.min(), hu.max())
                )
                split.append((image_id, patient, label, part))
    columns = ["image_id", "patient", "label", "file", "hu_min", "hu_max"]
    pd.DataFrame(rows, columns=columns).to_csv(folder / "manifest.csv", index=False)
    (root / "data" / "splits").mkdir(parents=True)
    pd.DataFrame(split, columns=["image_id", "patient", "label", "split"]).to_csv(
        root / "data" / "splits" / "split.csv", index=False
    )
    # No ONNX export at registration (about 10 s a member): the export is tested in
    # test_onnx_export and through the evaluate flow, which turn it on.
    params = {
        "training": {"image_size": 32, "batch_size": 8, "epochs": 1, "weights": "none"},
        "evaluation": {"onnx": False},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def update_params(root: Path, section: str, **values: object) -> None:
    """Set `values` in one section of the project's params.yaml."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def copy_project(source: Path, target: Path) -> Path:
    """A copy of the project at `target`, its MLflow store relocated there as
    `myelomet doctor --relocate` does: new runs of the copy never write into `source`."""
    shutil.copytree(source, target)
    store = tracking.resolve_store(load_config(target / "params.yaml").tracking, target)
    relocate(store)
    return target
