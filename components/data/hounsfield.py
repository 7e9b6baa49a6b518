"""Stored pixel values to Hounsfield units: the modality LUT of a frame, checked and rounded.

`frame_lut` finds a frame's rescale attributes (its functional groups in enhanced
multi-frame CT, else the dataset), `check_rescale` rejects an impossible slope or intercept
before any pixel is read, and `to_hu` applies pydicom's modality LUT and rejects a frame
whose HU no CT scanner produces (`bad_rescale`).
"""

from __future__ import annotations

import math

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from components.data.dicom_attributes import as_float, functional_item
from components.data.rejects import DicomRejected, RejectReason

_INT16 = np.iinfo(np.int16)


def to_hu(pixels: np.ndarray, lut: Dataset, ds: Dataset) -> np.ndarray:
    """One frame's modality LUT (`lut`: its rescale attributes), rounded to int16 HU."""
    return _rounded(_checked_range(apply_modality_lut(pixels, lut), _padding_mask(pixels, ds)))


# Hounsfield units a CT file can hold: tissue starts at air (-1000) and dense metal reaches
# about 30000; below air only fill values for pixels outside the scanned field, down to
# -3024 (GE and Siemens write it, often without declaring Pixel Padding) and -3072.
HU_RANGE = (-4096, 32767)


# The smallest slope magnitude kept: below it even 16 stored bits could not span the 1000 HU
# between air and water, so the image would come out as (almost) one grey.
MIN_SLOPE = 1000 / 2**16


def check_rescale(rescale: tuple[float | None, float | None, str]) -> None:
    """Reject a slope that is not finite or nearly zero, or an intercept that is not finite
    (`bad_rescale`)."""
    slope, intercept, _ = rescale
    if slope is not None and (not math.isfinite(slope) or abs(slope) < MIN_SLOPE):
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            f"RescaleSlope is {slope}: every pixel would map to (almost) one value or none; the "
            "file's modality LUT is broken, export the series again",
        )
    if intercept is not None and not math.isfinite(intercept):
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            f"RescaleIntercept is {intercept}; the file's modality LUT is broken, export the "
            "series again",
        )


def _padding_mask(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """True where a stored value is Pixel Padding (outside the scanned field, e.g. GE's
    -2000 stored for -3024 HU): not tissue, so not held to HU_RANGE."""
    mask = np.zeros(pixels.shape, dtype=bool)
    value = as_float(ds.get("PixelPaddingValue"))
    if value is None:
        return mask
    limit = as_float(ds.get("PixelPaddingRangeLimit"))
    low, high = (value, value) if limit is None else sorted((value, limit))
    return (pixels >= low) & (pixels <= high)


def _checked_range(values: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """`values` (HU) when they are finite and, padding aside, within HU_RANGE."""
    tissue = values[~padding] if padding.any() else values
    if tissue.size == 0 or not np.isfinite(tissue).all():
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            "the modality LUT gives no finite Hounsfield units; export the series again",
        )
    low, high = float(tissue.min()), float(tissue.max())
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            # the values themselves are not quoted: a number typed into RescaleIntercept
            # (a date, a record number) would come back in them
            f"Hounsfield units after rescale reach {_beyond(low, high)} the "
            f"{HU_RANGE[0]}..{HU_RANGE[1]} a CT scanner produces; check RescaleSlope and "
            "RescaleIntercept",
        )
    return values


def _rounded(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        values = np.rint(values)
    # Clipping only matters for broken rescale values; real CT stays far inside int16.
    return np.clip(values, _INT16.min, _INT16.max).astype(np.int16)


def rescale_of(ds: Dataset) -> tuple[float | None, float | None, str]:
    """(slope, intercept, hu_source) of the modality LUT in `ds`; no slope or intercept
    when it is a Modality LUT Sequence or there is none."""
    if ds.get("ModalityLUTSequence"):
        return None, None, "modality_lut_sequence"
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0), "rescale"
    return None, None, "none"


def _number(ds: Dataset, keyword: str, default: float) -> float:
    """The attribute's one number (`default` when absent).

    Raises:
        DicomRejected: it is present but empty, text or several values (`bad_rescale`); the
            value itself is not quoted.
    """
    if keyword not in ds:
        return default
    value = as_float(ds[keyword].value)
    if value is None:
        raise DicomRejected(
            RejectReason.BAD_RESCALE,
            f"{keyword} is not one number; the file's modality LUT is broken, export the "
            "series again",
        )
    return value


def frame_lut(ds: Dataset, frame: int) -> Dataset:
    """The modality LUT attributes of one frame: those of its functional groups (enhanced
    multi-frame images), else the dataset itself."""
    item = functional_item(ds, frame, "PixelValueTransformationSequence")
    if item is None:
        return ds
    lut = Dataset()
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in item:
            setattr(lut, keyword, item[keyword].value)
    return lut


def _beyond(low: float, high: float) -> str:
    """Which side(s) of HU_RANGE the values reach."""
    sides = [
        word for word, out in (("below", low < HU_RANGE[0]), ("above", high > HU_RANGE[1])) if out
    ]
    return " and ".join(sides)
