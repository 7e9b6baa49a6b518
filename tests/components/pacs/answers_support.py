"""CT series for the answer tests: real pydicom files, several slices sharing one study and
one series, as a scanner writes them."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.dicom_factory import Phi, ct_dataset, stored_pixels

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def write_series(
    folder: Path,
    n: int,
    *,
    study_uid: str | None = None,
    seed: int = 0,
    phi: Phi | None = None,
    orientation: list[float] | None = AXIAL,
) -> list[Path]:
    """n slices of one series in `folder` (of `study_uid`, a new study when None)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = ct_dataset(
            stored_pixels(seed=seed + i), phi=phi or Phi(), intercept=-1024.0 + 150.0 * (seed + i)
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-180.0, -180.0, 42.5 + 1.5 * i]
        if orientation is not None:
            ds.ImageOrientationPatient = orientation
        path = folder / f"im{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
