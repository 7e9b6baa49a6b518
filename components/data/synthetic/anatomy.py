"""The class-independent anatomy of one phantom patient: vertebra, trunk and field of view.

Geometry is in millimetres in DICOM patient coordinates (x to the patient's left, y posterior);
the vertebral body centre of each patient sits near x = y = 0. Vertebral parts are sized for
the first slice and change a little from slice to slice (drift, rotation, scale, jitter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.data.synthetic.scanners import ScannerProfile


@dataclass(frozen=True)
class Anatomy:
    """Class-independent geometry of one patient (mm unless named otherwise).

    Ellipses are given by their semi-axes: a half width along x and a half depth along y.
    """

    region: str  # "lumbar" or "thoracic"
    pixels_per_side: int
    pixel_spacing_mm: float
    fov_x_min_mm: float  # outer edge of the first image column
    fov_y_min_mm: float  # outer edge of the first image row
    z_start_mm: float  # table position of the first slice
    slice_gap_mm: float
    trunk_half_width_mm: float
    trunk_half_depth_mm: float
    trunk_centre_y_mm: float
    subcutaneous_fat_mm: float
    muscle_wall_mm: float
    vertebral_body_half_width_mm: float
    vertebral_body_half_depth_mm: float
    canal_half_width_mm: float
    canal_half_depth_mm: float
    pedicle_half_width_mm: float
    pedicle_half_length_mm: float
    lamina_thickness_mm: float
    spinous_process_length_mm: float
    transverse_process_length_mm: float
    transverse_process_angle_rad: float
    cortical_thickness_mm: float
    rotation_rad: float  # of the vertebra about z in the first slice
    rotation_per_slice_rad: float
    scale_per_slice: float
    drift_per_slice_mm: tuple[float, float]  # of the vertebral body centre, (x, y)
    slice_jitter: tuple[tuple[float, float, float], ...]  # per slice: x mm, y mm, scale
    vertebra_height_mm: float  # period along z of the pedicles
    pedicle_phase_rad: float  # where in that period the slab starts; also places the ribs
    psoas_semi_axes_mm: tuple[float, float]
    erector_spinae_semi_axes_mm: tuple[float, float]
    lung_semi_axes_mm: tuple[float, float]
    aorta_radius_mm: float
    aorta_calcified: bool
    fat_hu: float
    muscle_hu: float


def sample_anatomy(
    rng: np.random.Generator,
    pixels_per_side: int,
    n_slices: int,
    scanner: ScannerProfile,
    lumbar: bool,
) -> Anatomy:
    """Class-independent vertebra, body habitus and field of view."""
    region = "lumbar" if lumbar else "thoracic"
    size_factor = rng.uniform(0.9, 1.1)  # overall patient size
    body_half_width = size_factor * (rng.uniform(21, 26) if lumbar else rng.uniform(16, 20))
    body_half_depth = size_factor * (rng.uniform(15, 19) if lumbar else rng.uniform(14, 17))
    canal_half_width = size_factor * (rng.uniform(10, 12) if lumbar else rng.uniform(7.5, 9))
    canal_half_depth = size_factor * (rng.uniform(7, 9) if lumbar else rng.uniform(7, 8.5))
    lamina_thickness = size_factor * rng.uniform(5, 7)
    spinous_length = size_factor * (rng.uniform(22, 30) if lumbar else rng.uniform(14, 22))
    canal_centre_y = body_half_depth + 0.75 * canal_half_depth
    soft_tissue_behind_spine = rng.uniform(15, 35)
    back_skin_y = (
        canal_centre_y
        + canal_half_depth
        + lamina_thickness
        + spinous_length
        + soft_tissue_behind_spine
    )
    trunk_half_depth = size_factor * (rng.uniform(100, 125) if lumbar else rng.uniform(105, 125))
    fov_mm = rng.uniform(150, 200)
    pixel_spacing = round(fov_mm / pixels_per_side, 4)
    air_behind_back = rng.uniform(12, 30)
    fov_y_max = back_skin_y + air_behind_back
    slice_jitter = tuple(
        (rng.normal(0, 0.5), rng.normal(0, 0.5), rng.normal(0, 0.008)) for _ in range(n_slices)
    )
    return Anatomy(
        region=region,
        pixels_per_side=pixels_per_side,
        pixel_spacing_mm=pixel_spacing,
        fov_x_min_mm=rng.uniform(-10, 10) - pixels_per_side * pixel_spacing / 2,
        fov_y_min_mm=fov_y_max - pixels_per_side * pixel_spacing,
        z_start_mm=round(rng.uniform(-420, -150), 1),
        slice_gap_mm=scanner.thickness_mm,
        trunk_half_width_mm=size_factor * rng.uniform(140, 175),
        trunk_half_depth_mm=trunk_half_depth,
        trunk_centre_y_mm=back_skin_y - trunk_half_depth,
        subcutaneous_fat_mm=rng.uniform(8, 30),
        muscle_wall_mm=rng.uniform(6, 11),
        vertebral_body_half_width_mm=body_half_width,
        vertebral_body_half_depth_mm=body_half_depth,
        canal_half_width_mm=canal_half_width,
        canal_half_depth_mm=canal_half_depth,
        pedicle_half_width_mm=size_factor * rng.uniform(4, 5.5),
        pedicle_half_length_mm=size_factor * rng.uniform(7, 10),
        lamina_thickness_mm=lamina_thickness,
        spinous_process_length_mm=spinous_length,
        transverse_process_length_mm=size_factor
        * (rng.uniform(16, 24) if lumbar else rng.uniform(13, 18)),
        transverse_process_angle_rad=np.deg2rad(
            rng.uniform(5, 15) if lumbar else rng.uniform(20, 35)
        ),
        cortical_thickness_mm=rng.uniform(1.2, 2.2),
        rotation_rad=np.deg2rad(rng.normal(0, 4)),
        rotation_per_slice_rad=np.deg2rad(rng.normal(0, 0.4)),
        scale_per_slice=rng.uniform(-0.006, 0.006),
        drift_per_slice_mm=(rng.normal(0, 0.15), rng.normal(0, 0.15)),
        slice_jitter=slice_jitter,
        vertebra_height_mm=rng.uniform(24, 32),
        pedicle_phase_rad=rng.uniform(0, 2 * np.pi),
        psoas_semi_axes_mm=(size_factor * rng.uniform(8, 14), size_factor * rng.uniform(12, 18)),
        erector_spinae_semi_axes_mm=(
            size_factor * rng.uniform(17, 24),
            size_factor * rng.uniform(14, 20),
        ),
        lung_semi_axes_mm=(rng.uniform(45, 60), rng.uniform(60, 80)),
        aorta_radius_mm=rng.uniform(8, 12),
        aorta_calcified=bool(rng.random() < 0.3),
        fat_hu=rng.uniform(-115, -85),
        muscle_hu=rng.uniform(35, 55),
    )
