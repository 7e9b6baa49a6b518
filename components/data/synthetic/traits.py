"""Per-patient bone and lesion traits of the demo cohort, the only part that depends on class.

Class-specific lesion traits (MM: many small round punched-out lesions and diffuse osteopenia;
OMBT: few large irregular lesions, sometimes a cortical breach, a sclerotic rim or a paraspinal
mass) are drawn once per patient from ranges that `difficulty` pulls toward each other; at
difficulty 1 both classes share one distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.data.synthetic.anatomy import Anatomy
from components.data.synthetic.scanners import ScannerProfile

# Per-patient trait ranges, (MM, OMBT). `difficulty` moves both toward their average.
_TRAIT_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "trabecular_hu": ((110.0, 190.0), (170.0, 250.0)),
    "texture_hu": ((22.0, 36.0), (14.0, 26.0)),
    "lesions_per_slice": ((2.5, 9.0), (1.0, 3.0)),
    "lesion_radius_mm": ((1.6, 4.2), (4.5, 10.5)),
    "irregularity": ((0.0, 0.05), (0.1, 0.28)),
    "edge_mm": ((0.1, 0.4), (0.6, 1.8)),
    "heterogeneity_hu": ((0.0, 4.0), (6.0, 18.0)),
    "posterior_share": ((0.03, 0.12), (0.12, 0.35)),
}
# Per-patient probabilities, (MM, OMBT).
_TRAIT_PROBABILITIES: dict[str, tuple[float, float]] = {
    "sclerotic_rim": (0.0, 0.4),
    "cortical_breach": (0.05, 0.5),
    "soft_tissue_mass": (0.05, 0.35),
}


@dataclass(frozen=True)
class PatientTraits:
    """What a patient's slices share: scanner, region, bone and lesion style."""

    scanner: str
    region: str
    noise_hu: float
    trabecular_hu: float
    cortical_hu: float
    texture_hu: float
    lesions_per_slice: float
    lesion_radius_mm: float
    irregularity: float
    edge_mm: float
    heterogeneity_hu: float
    posterior_share: float
    sclerotic_rim: bool
    cortical_breach: bool
    soft_tissue_mass: bool


def _morphed_range(name: str, class_index: int, difficulty: float) -> tuple[float, float]:
    """The range of trait `name` for a class, moved toward the other class by `difficulty`."""
    own, other = _TRAIT_RANGES[name][class_index], _TRAIT_RANGES[name][1 - class_index]
    lo = own[0] + difficulty * ((own[0] + other[0]) / 2 - own[0])
    hi = own[1] + difficulty * ((own[1] + other[1]) / 2 - own[1])
    return lo, hi


def _morphed_probability(name: str, class_index: int, difficulty: float) -> float:
    """The probability of trait `name` for a class, moved toward the other's by `difficulty`."""
    own = _TRAIT_PROBABILITIES[name][class_index]
    other = _TRAIT_PROBABILITIES[name][1 - class_index]
    return own + difficulty * ((own + other) / 2 - own)


def sample_traits(
    rng: np.random.Generator,
    class_index: int,
    difficulty: float,
    scanner: ScannerProfile,
    anatomy: Anatomy,
) -> PatientTraits:
    """Class-specific traits, drawn with fixed uniforms so difficulty morphs the same patient."""
    range_uniforms = {name: rng.random() for name in _TRAIT_RANGES}
    probability_uniforms = {name: rng.random() for name in _TRAIT_PROBABILITIES}
    values = {}
    for name, uniform in range_uniforms.items():
        lo, hi = _morphed_range(name, class_index, difficulty)
        values[name] = lo + uniform * (hi - lo)

    def has(name: str) -> bool:
        return bool(
            probability_uniforms[name] < _morphed_probability(name, class_index, difficulty)
        )

    trabecular_hu = values["trabecular_hu"]
    return PatientTraits(
        scanner=f"{scanner.manufacturer} {scanner.model}",
        region=anatomy.region,
        noise_hu=rng.uniform(*scanner.noise_hu),
        cortical_hu=float(np.clip(680 + 1.4 * trabecular_hu + rng.normal(0, 50), 700, 1200)),
        sclerotic_rim=has("sclerotic_rim"),
        cortical_breach=has("cortical_breach"),
        soft_tissue_mass=has("soft_tissue_mass"),
        **values,
    )
