"""A series' answer as DICOM objects for the viewer: a Structured Report and a Grad-CAM image.

For each answered series, built in memory from the original files' headers:

- a Comprehensive 3D SR holding a TID 1500 Measurement Report: one measurement group whose
  finding is the positive class (e.g. multiple myeloma), with its probability and the
  patient-level threshold as measurements, the answer (positive or negative class) as the
  "Impression", the model's name, version and alias as the algorithm identification, every
  source slice referenced, and "research use only" stated (an algorithm parameter, the
  series description and Content Qualification RESEARCH);
- a Secondary Capture (RGB) of the series' most suspicious slice, the one whose probability
  is furthest toward the answer, in its bone window with the Grad-CAM of the answered class
  over it and "RESEARCH USE ONLY" burned in.

Both go into the original study (its Study Instance UID), each in a new series. They carry
the patient's identity on purpose, since they go back into the hospital's own study: they
are written only where the user says (`components.pacs.send`), never to DVC, MLflow or a log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from components.config import Window
from components.data.dataset import apply_window, center_crop, model_input
from components.data.dicom import read_ct
from components.evaluation.gradcam import gradcam
from components.pacs import codes
from components.registered_models import version_by_alias
from components.registry.serving import Predictor
from components.tracking import Store

MANUFACTURER = "myelomet"
RESEARCH_ONLY = "research use only: not for diagnosis or treatment"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
OVERLAY_ALPHA = 0.5
# Type 2 attributes of the Patient and General Study modules the new objects copy.
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


@dataclass(frozen=True)
class ModelIdentity:
    """The model that answered, as the SR names it.

    Attributes:
        name: the registered model's name (or the model URI when it is not registered).
        version: its version in the registry ("" when not registered).
        alias: the alias it was loaded by (e.g. champion), "" when none.
    """

    name: str
    version: str = ""
    alias: str = ""

    def describe(self) -> str:
        version = f" version {self.version}" if self.version else ""
        alias = f" (@{self.alias})" if self.alias else ""
        return f"{self.name}{version}{alias}"


@dataclass(frozen=True)
class SeriesAnswer:
    """The two objects answering one series (each a pydicom Dataset, in memory).

    Attributes:
        series: the series' name in the JSON output (its folder), never a UID.
        report: the Structured Report.
        overlay: the Secondary Capture with the Grad-CAM overlay.
    """

    series: str
    report: Dataset
    overlay: Dataset


def parse_model_uri(model_uri: str) -> tuple[str, str, str] | None:
    """(name, alias, version) of a `models:/<name>@<alias>` or `models:/<name>/<version>` URI;
    None for any other URI (a run's or a logged model's)."""
    found = _MODEL_URI.match(model_uri)
    if found is None:
        return None
    return found["name"], found["alias"] or "", found["version"] or ""


def model_identity(model_uri: str, store: Store) -> ModelIdentity:
    """The name, version and alias of the model at `model_uri`, the version an alias points
    at looked up in `store`'s registry (the URI itself names a model that is not registered).
    """
    parsed = parse_model_uri(model_uri)
    if parsed is None:
        return ModelIdentity(model_uri)
    name, alias, version = parsed
    if alias:
        found = version_by_alias(store, name, alias)
        version = found.version if found is not None else ""
    return ModelIdentity(name, version, alias)


def most_suspicious(
    slices: Sequence[Mapping[str, Any]], probability_key: str, positive: bool
) -> Mapping[str, Any]:
    """The slice row whose probability is furthest toward the answer: the highest when the
    series was answered with the positive class, the lowest otherwise (the first on ties)."""
    values = [float(s[probability_key]) for s in slices]
    return slices[int(np.argmax(values) if positive else np.argmin(values))]


def _header(file: str) -> Dataset:
    """A slice file's header (no pixels), with the patient and study attributes of type 2 that
    it lacks present and empty, as the new objects must carry them."""
    header = pydicom.dcmread(file, stop_before_pixels=True)
    for keyword in _PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _headers(slices: Sequence[Mapping[str, Any]]) -> dict[str, Dataset]:
    """Each slice file's header, by file name, in first-seen order."""
    out: dict[str, Dataset] = {}
    for row in slices:
        if row["file"] not in out:
            out[row["file"]] = _header(row["file"])
    return out


def _source_images(
    slices: Sequence[Mapping[str, Any]], headers: Mapping[str, Dataset]
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    frames: dict[str, list[int]] = {}
    for row in slices:
        frames.setdefault(row["file"], [])
        if row.get("frame") is not None:
            frames[row["file"]].append(int(row["frame"]) + 1)
    return [_source_image(headers[file], numbers) for file, numbers in frames.items()]


def _source_image(header: Dataset, frames: list[int]) -> hd.sr.SourceImageForMeasurementGroup:
    """A reference to the frames used of an image; to the whole of it when its IOD has no
    frames (a CT Image object with Number of Frames, as some exporters write one)."""
    if frames:
        try:
            return hd.sr.SourceImageForMeasurementGroup.from_source_image(header, frames)
        except TypeError:
            pass
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(header)


def _study_uid(headers: Mapping[str, Dataset]) -> str:
    studies = {str(ds.StudyInstanceUID) for ds in headers.values()}
    if len(studies) != 1:
        raise ValueError(
            f"the slices of one series belong to {len(studies)} studies; answer each study's "
            "series separately"
        )
    return studies.pop()


def structured_report(
    row: Mapping[str, Any],
    slices: Sequence[Mapping[str, Any]],
    predictor: Predictor,
    model: ModelIdentity,
) -> Dataset:
    """The TID 1500 report of one series (see the module's docstring).

    Args:
        row: the series' row of `Predictor.series_with_slices` (probability, label, threshold).
        slices: its slices' rows (file, frame, probability).
        predictor: the model that answered (its spec names the classes).
        model: the registered model's name, version and alias.

    Returns:
        A Comprehensive 3D SR in the series' study, in a new series.

    Raises:
        ValueError: no slices, slices of several studies, or a class without a code.
    """
    if not slices:
        raise ValueError(f"{row['series']}: no slices to report on")
    spec = predictor.spec
    headers = _headers(slices)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, model.name, model.version]),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=model.describe(),
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version or "unregistered",
        parameters=[
            f"alias: {model.alias or 'none'}",
            f"candidate: {spec.candidate}",
            f"{spec.probability_key} is the mean slice probability of {spec.positive_class}",
            RESEARCH_ONLY,
        ],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{MANUFACTURER} answer"
        ),
        finding_type=codes.class_code(spec.positive_class),
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SPINE)],
        measurements=[
            hd.sr.Measurement(codes.PROBABILITY, float(row[spec.probability_key]), codes.NO_UNITS),
            hd.sr.Measurement(codes.THRESHOLD, float(row["threshold"]), codes.NO_UNITS),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(codes.IMPRESSION, codes.class_code(str(row["label"])))
        ],
        source_images=_source_images(slices, headers),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(codes.DEVICE, device)
        ),
        procedure_reported=codes.CT_PROCEDURE,
        imaging_measurements=[group],
        title=codes.MEASUREMENT_REPORT,
    )
    study_uid = _study_uid(headers)
    return hd.sr.Comprehensive3DSR(
        evidence=[ds for ds in headers.values() if str(ds.StudyInstanceUID) == study_uid],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"{MANUFACTURER} answer, research use only",
        content_qualification="RESEARCH",
        manufacturer_model_name=model.describe()[:64],
    )


def _heat_on_slice(heat: np.ndarray, shape: tuple[int, int], crop: float) -> np.ndarray:
    """A model-input heat map placed back on the whole slice (zero outside the crop)."""
    region = center_crop(np.zeros(shape, dtype=np.float32), crop)
    top = (shape[0] - region.shape[0]) // 2
    left = (shape[1] - region.shape[1]) // 2
    image = Image.fromarray(heat.astype(np.float32), mode="F")
    resized = image.resize((region.shape[1], region.shape[0]), Image.Resampling.BILINEAR)
    out = np.zeros(shape, dtype=np.float32)
    out[top : top + region.shape[0], left : left + region.shape[1]] = np.clip(resized, 0, 1)
    return out


def gradcam_on_slice(predictor: Predictor, hu: np.ndarray, target: str) -> np.ndarray:
    """The Grad-CAM of class `target` over one HU slice, averaged over the predictor's
    members (each at its own input size and crop): float32 in [0, 1], the slice's shape."""
    index = predictor.spec.classes.index(target)
    maps = []
    for member, model in zip(predictor.spec.members, predictor.models, strict=True):
        batch = model_input(hu, member.windows, member.image_size, member.crop)[None]
        heat, _ = gradcam(model, batch, target=index)
        maps.append(_heat_on_slice(heat[0], hu.shape, member.crop))
    return np.mean(maps, axis=0).astype(np.float32)


def overlay_pixels(hu: np.ndarray, heat: np.ndarray, window: Window, caption: str) -> np.ndarray:
    """An RGB uint8 image: the slice in `window`, the heat map in the jet colours over it
    (opacity growing with the heat) and `caption` burned in at the top left."""
    background = apply_window(hu, window)[..., None].repeat(3, axis=-1)
    colour = colormaps["jet"](heat)[..., :3] * 255.0
    alpha = (OVERLAY_ALPHA * heat)[..., None]
    image = Image.fromarray(np.rint(background * (1 - alpha) + colour * alpha).astype(np.uint8))
    size = max(8, min(hu.shape) // 32)
    ImageDraw.Draw(image).text(
        (2, 2), caption, fill=(255, 255, 0), font=ImageFont.load_default(size=size)
    )
    return np.asarray(image)


def patient_orientation(header: Dataset) -> tuple[str, str] | None:
    """The row and column directions (e.g. ("L", "P")) from Image Orientation (Patient); None
    when the header has none."""
    cosines = header.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return None
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def direction(vector: Sequence[float]) -> str:
        order = np.argsort(-np.abs(vector))
        return "".join(
            letters[axis][0 if vector[axis] > 0 else 1]
            for axis in order
            if abs(vector[axis]) > 1e-3
        )

    return direction([float(v) for v in cosines[:3]]), direction([float(v) for v in cosines[3:]])


def secondary_capture(
    row: Mapping[str, Any], slices: Sequence[Mapping[str, Any]], predictor: Predictor
) -> Dataset:
    """The Grad-CAM Secondary Capture of a series' most suspicious slice.

    Args:
        row: the series' row of `Predictor.series_with_slices`.
        slices: its slices' rows.
        predictor: the model that answered.

    Returns:
        An RGB Secondary Capture in the slice's study, in a new series.

    Raises:
        ValueError: no slices.
        DicomRejected: the chosen slice cannot be read again.
    """
    if not slices:
        raise ValueError(f"{row['series']}: no slices to show")
    spec = predictor.spec
    label = str(row["label"])
    chosen = most_suspicious(slices, spec.probability_key, label == spec.positive_class)
    image = read_ct(Path(chosen["file"]), predictor.max_frame_pixels, predictor.max_item_bytes)
    hu = image.hu[int(chosen.get("frame") or 0)]
    heat = gradcam_on_slice(predictor, hu, label)
    caption = (
        f"RESEARCH USE ONLY  {spec.probability_key}={float(row[spec.probability_key]):.2f}"
        f" -> {label}"
    )
    pixels = overlay_pixels(hu, heat, spec.members[0].windows[0], caption)
    header = _header(chosen["file"])
    orientation = patient_orientation(header)
    spacing = header.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in spacing) if spacing else None,
        patient_orientation=orientation or ("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    if orientation is None:  # unknown: Patient Orientation is type 2, so present and empty
        sc.PatientOrientation = ""
    # Laterality is type 2C: the original's side, else empty (the spine is not paired).
    sides = (header.get("Laterality"), header.get("ImageLaterality"))
    sc.Laterality = next((side for side in sides if side in ("R", "L")), "")
    sc.SeriesDescription = f"{MANUFACTURER} Grad-CAM, research use only"
    sc.BurnedInAnnotation = "NO"  # the caption names no patient
    return sc


def answer_series(
    row: Mapping[str, Any],
    slices: Sequence[Mapping[str, Any]],
    predictor: Predictor,
    model: ModelIdentity,
) -> SeriesAnswer:
    """The SR and the Secondary Capture answering one series.

    Raises:
        ValueError: as `structured_report`.
        DicomRejected: as `secondary_capture`.
    """
    return SeriesAnswer(
        series=str(row["series"]),
        report=structured_report(row, slices, predictor, model),
        overlay=secondary_capture(row, slices, predictor),
    )
