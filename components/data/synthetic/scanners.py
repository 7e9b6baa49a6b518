"""The two CT scanners of the demo cohort: DICOM identity, reconstruction kernel and noise."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScannerProfile:
    """One CT scanner of the study: DICOM identity, reconstruction kernel and noise."""

    manufacturer: str
    model: str
    kernel: str
    kvp: float
    thickness_mm: float
    blur_mm: float  # sigma of the Gaussian point-spread of the kernel
    grain_mm: float  # correlation length of the noise; sharp kernels give fine grain
    noise_hu: tuple[float, float]  # per-patient range of the noise standard deviation
    rescale_intercept: float
    station_name: str
    window_center: tuple[float, ...]
    window_width: tuple[float, ...]


SCANNERS: tuple[ScannerProfile, ScannerProfile] = (
    ScannerProfile(
        manufacturer="Philips",
        model="Brilliance 64",
        kernel="B",
        kvp=120.0,
        thickness_mm=2.0,
        blur_mm=0.9,
        grain_mm=0.8,
        noise_hu=(12.0, 20.0),
        rescale_intercept=-1024.0,
        station_name="CTB64-01",
        window_center=(400.0,),
        window_width=(1800.0,),
    ),
    ScannerProfile(
        manufacturer="SIEMENS",
        model="SOMATOM Definition AS+",
        kernel="B70s",
        kvp=120.0,
        thickness_mm=1.5,
        blur_mm=0.45,
        grain_mm=0.4,
        noise_hu=(24.0, 38.0),
        rescale_intercept=0.0,
        station_name="CTAWP73421",
        window_center=(450.0, 40.0),
        window_width=(1500.0, 400.0),
    ),
)
