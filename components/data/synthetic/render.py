"""Rendering one axial slice of a phantom patient in HU: anatomy, lesions, blur and noise.

Shapes are painted back to front (air, trunk, organs, vessels and muscles, paraspinal mass,
canal, bone, lesions), then the scanner's kernel blur and correlated noise are applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from components.data.synthetic.anatomy import Anatomy
from components.data.synthetic.lesions import LesionTrack, radius_at
from components.data.synthetic.scanners import ScannerProfile
from components.data.synthetic.traits import PatientTraits

HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class SliceGeometry:
    """The vertebra in one slice (mm; positions in the vertebra frame unless named otherwise).

    The vertebra frame has its origin at the vertebral body centre and turns with the spine.
    """

    centre_x_mm: float  # the vertebral body centre in patient coordinates
    centre_y_mm: float
    rotation_rad: float
    body_half_width_mm: float
    body_half_depth_mm: float
    canal_centre_y_mm: float
    canal_half_width_mm: float
    canal_half_depth_mm: float
    pedicle_x_mm: float  # distance of each pedicle's centre from the midline
    pedicle_y_mm: float
    pedicle_half_width_mm: float
    pedicle_half_length_mm: float
    lamina_thickness_mm: float
    spinous_process_length_mm: float
    transverse_process_length_mm: float
    has_pedicles: bool


def _slice_geometry(anatomy: Anatomy, slice_index: int) -> SliceGeometry:
    jitter_x, jitter_y, jitter_scale = anatomy.slice_jitter[slice_index]
    scale = 1 + anatomy.scale_per_slice * slice_index + jitter_scale
    z_mm = slice_index * anatomy.slice_gap_mm
    has_pedicles = (
        np.cos(2 * np.pi * z_mm / anatomy.vertebra_height_mm + anatomy.pedicle_phase_rad) > -0.4
    )
    canal_half_depth = anatomy.canal_half_depth_mm * scale
    body_half_depth = anatomy.vertebral_body_half_depth_mm * scale
    canal_centre_y = body_half_depth + 0.75 * canal_half_depth
    return SliceGeometry(
        centre_x_mm=anatomy.drift_per_slice_mm[0] * slice_index + jitter_x,
        centre_y_mm=anatomy.drift_per_slice_mm[1] * slice_index + jitter_y,
        rotation_rad=anatomy.rotation_rad + anatomy.rotation_per_slice_rad * slice_index,
        body_half_width_mm=anatomy.vertebral_body_half_width_mm * scale,
        body_half_depth_mm=body_half_depth,
        canal_centre_y_mm=canal_centre_y,
        canal_half_width_mm=anatomy.canal_half_width_mm * scale,
        canal_half_depth_mm=canal_half_depth,
        pedicle_x_mm=anatomy.canal_half_width_mm * scale
        + 0.8 * anatomy.pedicle_half_width_mm * scale,
        pedicle_y_mm=canal_centre_y - 0.3 * canal_half_depth,
        pedicle_half_width_mm=anatomy.pedicle_half_width_mm * scale,
        pedicle_half_length_mm=anatomy.pedicle_half_length_mm * scale,
        lamina_thickness_mm=anatomy.lamina_thickness_mm * scale,
        spinous_process_length_mm=anatomy.spinous_process_length_mm * scale,
        transverse_process_length_mm=anatomy.transverse_process_length_mm * scale,
        has_pedicles=bool(has_pedicles),
    )


def _ellipse(
    x: np.ndarray,
    y: np.ndarray,
    centre_x: float,
    centre_y: float,
    half_width: float,
    half_depth: float,
    angle: float = 0.0,
) -> np.ndarray:
    """Which points (x, y) lie in an ellipse, turned by `angle` about its centre."""
    dx, dy = x - centre_x, y - centre_y
    if angle:
        cos_a, sin_a = np.cos(angle), np.sin(angle)
        dx, dy = cos_a * dx + sin_a * dy, -sin_a * dx + cos_a * dy
    return (dx / half_width) ** 2 + (dy / half_depth) ** 2 <= 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise with correlation length `sigma_px`."""
    noise = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), sigma_px, truncate=3.0
    )
    return noise / max(float(noise.std()), 1e-6)


def _window(
    anatomy: Anatomy, geometry: SliceGeometry, centre_x: float, centre_y: float, extent: float
) -> tuple[slice, slice]:
    """Rows and columns that cover `extent` mm around a point of the vertebra frame."""
    cos_rot, sin_rot = float(np.cos(geometry.rotation_rad)), float(np.sin(geometry.rotation_rad))
    x = geometry.centre_x_mm + cos_rot * centre_x - sin_rot * centre_y
    y = geometry.centre_y_mm + sin_rot * centre_x + cos_rot * centre_y

    def span(centre: float, origin: float) -> slice:
        lo = int(np.floor((centre - extent - origin) / anatomy.pixel_spacing_mm))
        hi = int(np.ceil((centre + extent - origin) / anatomy.pixel_spacing_mm)) + 1
        size = anatomy.pixels_per_side
        return slice(min(max(lo, 0), size), min(max(hi, 0), size))

    return span(y, anatomy.fov_y_min_mm), span(x, anatomy.fov_x_min_mm)


def _depth(
    x: np.ndarray,
    y: np.ndarray,
    centre_x: float,
    centre_y: float,
    radius: float,
    track: LesionTrack,
    z_mm: float,
) -> np.ndarray:
    """Signed distance (mm, positive inside) to the track's wavy outline of mean `radius`."""
    dx, dy = x - centre_x, y - centre_y
    theta = np.arctan2(dy, dx)
    wave = np.zeros_like(theta)
    harmonics = zip(track.wave_amplitudes, track.wave_phases, strict=True)
    for order, (amplitude, phase) in enumerate(harmonics, start=2):
        if amplitude:
            wave += amplitude * np.cos(order * theta + phase + track.twist_rad_per_mm * z_mm)
    return radius * (1 + wave) - np.hypot(dx, dy)


def render_slice(
    anatomy: Anatomy,
    traits: PatientTraits,
    tracks: list[LesionTrack],
    scanner: ScannerProfile,
    slice_index: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One axial slice in HU: anatomy, lesions, kernel blur and scanner noise."""
    size, spacing = anatomy.pixels_per_side, anatomy.pixel_spacing_mm
    shape = (size, size)
    pixel_centres = (np.arange(size, dtype=np.float32) + 0.5) * spacing
    x, y = np.meshgrid(pixel_centres + anatomy.fov_x_min_mm, pixel_centres + anatomy.fov_y_min_mm)
    geometry = _slice_geometry(anatomy, slice_index)
    z_mm = slice_index * anatomy.slice_gap_mm
    coarse_noise = _smooth_noise(rng, shape, 5.0 / spacing)
    fine_noise = _smooth_noise(rng, shape, 0.6 / spacing)
    cos_rot, sin_rot = float(np.cos(geometry.rotation_rad)), float(np.sin(geometry.rotation_rad))
    # vertebra frame: rotated with the spine
    x_vert = cos_rot * (x - geometry.centre_x_mm) + sin_rot * (y - geometry.centre_y_mm)
    y_vert = -sin_rot * (x - geometry.centre_x_mm) + cos_rot * (y - geometry.centre_y_mm)
    body_half_width, body_half_depth = geometry.body_half_width_mm, geometry.body_half_depth_mm
    canal_half_width, canal_half_depth = geometry.canal_half_width_mm, geometry.canal_half_depth_mm
    canal_y, lamina = geometry.canal_centre_y_mm, geometry.lamina_thickness_mm

    image = np.full(shape, -1000.0, dtype=np.float32) + 5 * fine_noise
    fat_hu = anatomy.fat_hu + 8 * coarse_noise
    muscle_hu = anatomy.muscle_hu + 6 * coarse_noise
    trunk_x, trunk_y = anatomy.trunk_half_width_mm, anatomy.trunk_half_depth_mm
    trunk_cy = anatomy.trunk_centre_y_mm
    trunk = _ellipse(x, y, 0, trunk_cy, trunk_x, trunk_y)
    image[trunk] = fat_hu[trunk]
    inset = anatomy.subcutaneous_fat_mm
    muscle_wall = _ellipse(x, y, 0, trunk_cy, trunk_x - inset, trunk_y - inset)
    image[muscle_wall] = muscle_hu[muscle_wall]
    inset += anatomy.muscle_wall_mm
    cavity = _ellipse(x, y, 0, trunk_cy, trunk_x - inset, trunk_y - inset)
    image[cavity] = fat_hu[cavity]

    if anatomy.region == "lumbar":
        viscera_half_depth = 0.45 * trunk_y
        viscera = cavity & _ellipse(
            x, y, 0, -body_half_depth - 30 - viscera_half_depth, 0.8 * trunk_x, viscera_half_depth
        )
        gut_hu = np.where(coarse_noise > 1.1, fat_hu, 30 + 15 * coarse_noise)
        gut_hu = np.where(coarse_noise < -1.7, -850 + 50 * fine_noise, gut_hu)  # bowel gas
        image[viscera] = gut_hu[viscera]
    else:
        lung_half_width, lung_half_depth = anatomy.lung_semi_axes_mm
        for side in (-1, 1):
            lung = cavity & _ellipse(
                x_vert,
                y_vert,
                side * (body_half_width + 6 + lung_half_width),
                -0.2 * lung_half_depth,
                lung_half_width,
                lung_half_depth,
            )
            image[lung] = (-860 + 25 * coarse_noise + 15 * fine_noise)[lung]
        heart = cavity & _ellipse(x_vert, y_vert, -8, -body_half_depth - 50, 50, 42)
        image[heart] = (40 + 5 * coarse_noise)[heart]

    # Vessels and muscles, in the vertebra frame so they follow the spine.
    aorta_radius = anatomy.aorta_radius_mm
    if anatomy.region == "lumbar":
        aorta_centre = (0.35 * body_half_width, -body_half_depth - aorta_radius - 2)
        vena_cava = _ellipse(x_vert, y_vert, -0.8 * body_half_width, -body_half_depth - 14, 12, 8)
        image[vena_cava] = 35
        psoas_half_width, psoas_half_depth = anatomy.psoas_semi_axes_mm
        for side in (-1, 1):
            muscle = _ellipse(
                x_vert,
                y_vert,
                side * (body_half_width + 0.8 * psoas_half_width),
                -0.1 * body_half_depth,
                psoas_half_width,
                psoas_half_depth,
            )
            process_tip_x = canal_half_width + lamina + geometry.transverse_process_length_mm + 8
            muscle |= _ellipse(x_vert, y_vert, side * process_tip_x, canal_y, 12, 8)
            image[muscle] = muscle_hu[muscle]
    else:
        aorta_centre = (0.9 * body_half_width, -0.5 * body_half_depth - aorta_radius)
    aorta = _ellipse(x_vert, y_vert, *aorta_centre, aorta_radius, aorta_radius)
    image[aorta] = 40 + 4 * fine_noise[aorta]
    if anatomy.aorta_calcified:
        distance = np.hypot(x_vert - aorta_centre[0], y_vert - aorta_centre[1])
        calcification = (np.abs(distance - aorta_radius) < 1.0) & (
            np.sin(3 * np.arctan2(y_vert, x_vert)) > 0.6
        )
        image[calcification] = 350
    erector_half_width, erector_half_depth = anatomy.erector_spinae_semi_axes_mm
    for side in (-1, 1):
        muscle = trunk & _ellipse(
            x_vert,
            y_vert,
            side * (canal_half_width + lamina + 0.8 * erector_half_width),
            canal_y + canal_half_depth + 0.6 * erector_half_depth,
            erector_half_width,
            erector_half_depth,
        )
        image[muscle] = muscle_hu[muscle]

    for track in tracks:
        if track.anchor == "mass":
            radius = radius_at(track, z_mm)
            centre_x = track.side * (body_half_width + 0.5 * radius) * track.offset_x
            centre_y = (body_half_depth + 0.5 * radius) * track.offset_y
            extent = radius * (1 + sum(track.wave_amplitudes)) + 1.0
            window = _window(anatomy, geometry, centre_x, centre_y, extent)
            depth = _depth(x_vert[window], y_vert[window], centre_x, centre_y, radius, track, z_mm)
            mass = trunk[window] & (depth > 0)
            image[window][mass] = (track.hu + traits.heterogeneity_hu * coarse_noise[window])[mass]

    canal = _ellipse(x_vert, y_vert, 0, canal_y, canal_half_width, canal_half_depth)
    image[canal] = -60
    dural_sac = _ellipse(x_vert, y_vert, 0, canal_y, 0.8 * canal_half_width, 0.8 * canal_half_depth)
    image[dural_sac] = 10 + 3 * fine_noise[dural_sac]
    if anatomy.region == "thoracic":
        cord = _ellipse(x_vert, y_vert, 0, canal_y, 0.5 * canal_half_width, 0.45 * canal_half_depth)
        image[cord] = 32

    vertebral_body, bone = _vertebra(x, y, x_vert, y_vert, anatomy, geometry)
    # At coarse pixel sizes the shell is still at least one pixel thick.
    cortex = bone & (
        ndimage.distance_transform_edt(bone) <= max(1.0, anatomy.cortical_thickness_mm / spacing)
    )
    marrow = bone & ~cortex
    image[cortex] = (traits.cortical_hu + 40 * fine_noise)[cortex]
    image[marrow] = (traits.trabecular_hu + traits.texture_hu * fine_noise)[marrow]
    posterior_marrow = marrow & ~vertebral_body
    image[posterior_marrow] += 60

    for track in tracks:
        radius = radius_at(track, z_mm)
        if track.anchor == "mass" or radius <= 0:
            continue
        if track.anchor == "body":
            centre_x = (track.offset_x + track.drift_x_per_mm * z_mm) * body_half_width
            centre_y = (track.offset_y + track.drift_y_per_mm * z_mm) * body_half_depth
        else:
            pedicle_x, pedicle_y = track.side * geometry.pedicle_x_mm, geometry.pedicle_y_mm
            centre_x = pedicle_x + track.offset_x * geometry.pedicle_half_width_mm
            centre_y = pedicle_y + track.offset_y * geometry.pedicle_half_length_mm
        extent = radius * (1 + sum(track.wave_amplitudes)) + 2.0 + traits.edge_mm
        window = _window(anatomy, geometry, centre_x, centre_y, extent)
        patch, patch_noise = image[window], fine_noise[window]  # views: painting patch paints image
        depth = _depth(x_vert[window], y_vert[window], centre_x, centre_y, radius, track, z_mm)
        allowed = np.ones(depth.shape, bool) if track.breaches_cortex else marrow[window]
        if traits.sclerotic_rim:
            rim = np.clip((depth + 1.8) / 0.6 + 0.5, 0, 1) * (bone[window] & allowed)
            patch += rim * (750 + 60 * patch_noise - patch)
        fill = np.clip(depth / traits.edge_mm + 0.5, 0, 1) * allowed
        patch += fill * (track.hu + traits.heterogeneity_hu * patch_noise - patch)

    image = ndimage.gaussian_filter(image, scanner.blur_mm / spacing)
    image += traits.noise_hu * _smooth_noise(rng, shape, scanner.grain_mm / spacing)
    return np.clip(image, HU_MIN, HU_MAX)


def _vertebra(
    x: np.ndarray,
    y: np.ndarray,
    x_vert: np.ndarray,
    y_vert: np.ndarray,
    anatomy: Anatomy,
    geometry: SliceGeometry,
) -> tuple[np.ndarray, np.ndarray]:
    """The vertebral body and all bone of the slice (body, arch, processes, thoracic ribs)."""
    body_half_width, body_half_depth = geometry.body_half_width_mm, geometry.body_half_depth_mm
    canal_half_width, canal_half_depth = geometry.canal_half_width_mm, geometry.canal_half_depth_mm
    canal_y, lamina = geometry.canal_centre_y_mm, geometry.lamina_thickness_mm
    vertebral_body = _ellipse(x_vert, y_vert, 0, 0, body_half_width, body_half_depth)
    # With pedicles the arch closes on the body; without them the foramina stay open.
    arch_from_y = 0.85 * body_half_depth if geometry.has_pedicles else geometry.pedicle_y_mm
    posterior = _ellipse(
        x_vert, y_vert, 0, canal_y, canal_half_width + lamina, canal_half_depth + lamina
    ) & (y_vert > arch_from_y)
    spinous_length = geometry.spinous_process_length_mm
    posterior |= _ellipse(
        x_vert,
        y_vert,
        0,
        canal_y + canal_half_depth + lamina + 0.5 * spinous_length - 3,
        3.5,
        0.5 * spinous_length,
    )
    process_length = geometry.transverse_process_length_mm
    process_angle = anatomy.transverse_process_angle_rad
    for side in (-1, 1):
        facet_x = side * (canal_half_width + 0.6 * lamina)
        posterior |= _ellipse(x_vert, y_vert, facet_x, canal_y + 0.4 * canal_half_depth, 5.0, 5.0)
        if geometry.has_pedicles:
            posterior |= _ellipse(
                x_vert,
                y_vert,
                side * geometry.pedicle_x_mm,
                geometry.pedicle_y_mm,
                geometry.pedicle_half_width_mm,
                geometry.pedicle_half_length_mm,
            )
            process_x = side * (
                canal_half_width + lamina + 0.5 * process_length * np.cos(process_angle)
            )
            process_y = canal_y + 0.5 * process_length * np.sin(process_angle)
            posterior |= _ellipse(
                x_vert,
                y_vert,
                process_x,
                process_y,
                0.5 * process_length + 2,
                3.5,
                angle=side * process_angle,
            )
    bone = (vertebral_body | posterior) & ~_ellipse(
        x_vert, y_vert, 0, canal_y, canal_half_width + 0.6, canal_half_depth + 0.6
    )
    if anatomy.region == "thoracic":
        bone |= _ribs(x, y, x_vert, y_vert, anatomy, geometry)
    return vertebral_body, bone


def _ribs(
    x: np.ndarray,
    y: np.ndarray,
    x_vert: np.ndarray,
    y_vert: np.ndarray,
    anatomy: Anatomy,
    geometry: SliceGeometry,
) -> np.ndarray:
    """Rib segments along the chest wall and the rib heads beside the vertebral body."""
    cavity_x = anatomy.trunk_half_width_mm - anatomy.subcutaneous_fat_mm - anatomy.muscle_wall_mm
    cavity_y = anatomy.trunk_half_depth_mm - anatomy.subcutaneous_fat_mm - anatomy.muscle_wall_mm
    trunk_cy = anatomy.trunk_centre_y_mm
    outer = _ellipse(x, y, 0, trunk_cy, cavity_x + 2, cavity_y + 2)
    inner = _ellipse(x, y, 0, trunk_cy, cavity_x - 3, cavity_y - 3)
    theta = np.arctan2(y - trunk_cy, x)
    # Oblique ribs cut by an axial plane: short segments, none at the midline.
    segments = (np.sin(13 * theta + anatomy.pedicle_phase_rad) > 0.35) & (
        np.abs(np.cos(theta)) > 0.4
    )
    ribs = outer & ~inner & segments
    for side in (-1, 1):
        ribs |= _ellipse(
            x_vert,
            y_vert,
            side * (geometry.body_half_width_mm + 4),
            0.55 * geometry.body_half_depth_mm,
            5,
            4.5,
        )
    return ribs
