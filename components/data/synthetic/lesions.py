"""Lesion tracks of one phantom patient: ellipsoids with wavy outlines through the slab.

A track is drawn once per patient, so a lesion's position and size drift from slice to slice
the way they would through a real vertebra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.data.synthetic.anatomy import Anatomy
from components.data.synthetic.traits import PatientTraits


@dataclass(frozen=True)
class LesionTrack:
    """A lesion (or soft-tissue mass) through the slab: an ellipsoid with a wavy outline.

    The centre is in units of the anchor's semi-axes: the vertebral body's, a pedicle's, or
    for a mass the body's plus half the mass radius, along a direction from the body centre.
    """

    anchor: str  # "body", "pedicle" or "mass"
    side: float  # -1 or 1: which pedicle, or which side of the body a mass sits on
    offset_x: float
    offset_y: float
    drift_x_per_mm: float  # drift of (offset_x, offset_y) per mm of z
    drift_y_per_mm: float
    z_centre_mm: float  # z of the widest cut, from the first slice
    half_height_mm: float
    radius_mm: float
    wave_amplitudes: tuple[float, ...]  # of outline harmonics 2-6, as fractions of the radius
    wave_phases: tuple[float, ...]
    twist_rad_per_mm: float  # rotation of the outline per mm of z
    hu: float
    breaches_cortex: bool  # may spread beyond the marrow into cortex and soft tissue


def _outline(
    rng: np.random.Generator, irregularity: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Amplitudes and phases of harmonics 2-6 of a wavy outline; amplitudes sum to irregularity."""
    weights = rng.dirichlet(np.ones(5))
    amplitudes = tuple(float(a) for a in irregularity * weights)
    phases = tuple(float(x) for x in rng.uniform(0, 2 * np.pi, 5))
    return amplitudes, phases


def sample_lesion_tracks(
    rng: np.random.Generator, traits: PatientTraits, anatomy: Anatomy, n_slices: int
) -> list[LesionTrack]:
    """Lesions as ellipsoids through the slab, so positions and sizes drift slice to slice."""
    slab_mm = (n_slices - 1) * anatomy.slice_gap_mm
    mean_half_height = 1.75 * traits.lesion_radius_mm
    # Expected lesions cut by one slice (radius >= half its maximum) = lesions_per_slice.
    n_tracks = int(
        np.ceil(
            traits.lesions_per_slice * (slab_mm + 2 * mean_half_height) / (1.73 * mean_half_height)
        )
    )
    tracks = [
        _lesion(rng, traits, anatomy, rng.uniform(-mean_half_height, slab_mm + mean_half_height))
        for _ in range(n_tracks)
    ]
    if traits.cortical_breach:
        largest = max(range(len(tracks)), key=lambda i: tracks[i].radius_mm)
        tracks[largest] = _lesion(
            rng, traits, anatomy, tracks[largest].z_centre_mm, breaches_cortex=True
        )
    for slice_index in range(n_slices):  # every slice shows pathology, as in the paper's selection
        z_mm = slice_index * anatomy.slice_gap_mm
        if not any(_visible(track, z_mm) for track in tracks if track.anchor == "body"):
            tracks.append(_lesion(rng, traits, anatomy, z_mm, anchor="body"))
    if traits.soft_tissue_mass:
        breaching = [track for track in tracks if track.breaches_cortex and track.anchor == "body"]
        side = (
            np.sign(breaching[0].offset_x)
            if breaching and breaching[0].offset_x
            else rng.choice([-1.0, 1.0])
        )
        angle = rng.uniform(0, np.deg2rad(70))  # from lateral toward anterior
        amplitudes, phases = _outline(rng, rng.uniform(0.1, 0.25))
        tracks.append(
            LesionTrack(
                anchor="mass",
                side=float(side),
                offset_x=float(np.cos(angle)),
                offset_y=float(-np.sin(angle)),
                drift_x_per_mm=0.0,
                drift_y_per_mm=0.0,
                z_centre_mm=slab_mm / 2,
                # through the whole slab, shrinking a little at its ends
                half_height_mm=10 * slab_mm + 50,
                radius_mm=rng.uniform(10, 20),
                wave_amplitudes=amplitudes,
                wave_phases=phases,
                twist_rad_per_mm=rng.normal(0, 0.02),
                hu=rng.uniform(35, 50),
                breaches_cortex=True,
            )
        )
    return tracks


def _lesion(
    rng: np.random.Generator,
    traits: PatientTraits,
    anatomy: Anatomy,
    z_centre_mm: float,
    breaches_cortex: bool = False,
    anchor: str | None = None,
) -> LesionTrack:
    """One lesion in the style of `traits`; body lesions in units of the body semi-axes."""
    radius = traits.lesion_radius_mm * rng.uniform(0.6, 1.3)
    if anchor is None:
        anchor = (
            "pedicle" if not breaches_cortex and rng.random() < traits.posterior_share else "body"
        )
    side = float(rng.choice([-1.0, 1.0]))
    if breaches_cortex:
        angle = rng.uniform(-np.pi - 0.3, 0.3)  # anterior or lateral, not into the canal
        radial_fraction = rng.uniform(0.8, 1.0)
    else:
        angle = rng.uniform(-np.pi, np.pi)
        smaller_semi_axis = min(
            anatomy.vertebral_body_half_width_mm, anatomy.vertebral_body_half_depth_mm
        )
        radial_fraction = np.sqrt(rng.random()) * max(0.0, 1 - (radius + 1.5) / smaller_semi_axis)
        if anchor == "pedicle":
            radial_fraction = rng.uniform(0, 0.4)
            # a large pedicle lesion destroys the pedicle
            breaches_cortex = radius > anatomy.pedicle_half_width_mm + 1
    amplitudes, phases = _outline(rng, traits.irregularity)
    return LesionTrack(
        anchor=anchor,
        side=side,
        offset_x=float(radial_fraction * np.cos(angle)),
        offset_y=float(radial_fraction * np.sin(angle)),
        drift_x_per_mm=rng.normal(0, 0.006),
        drift_y_per_mm=rng.normal(0, 0.006),
        z_centre_mm=float(z_centre_mm),
        half_height_mm=radius * rng.uniform(1.0, 2.5),
        radius_mm=radius,
        wave_amplitudes=amplitudes,
        wave_phases=phases,
        twist_rad_per_mm=rng.normal(0, 0.04),
        hu=rng.uniform(25, 55),
        breaches_cortex=breaches_cortex,
    )


def radius_at(track: LesionTrack, z_mm: float) -> float:
    """The radius of the track's cut at `z_mm`; 0 outside the ellipsoid."""
    q = 1 - ((z_mm - track.z_centre_mm) / track.half_height_mm) ** 2
    return track.radius_mm * float(np.sqrt(q)) if q > 0 else 0.0


def _visible(track: LesionTrack, z_mm: float) -> bool:
    """Whether the cut at `z_mm` is at least half the track's largest radius."""
    return radius_at(track, z_mm) >= 0.5 * track.radius_mm
