"""De-identify a received instance in memory, before any byte of it is written.

The copy keeps only the attributes ingest reads (`KEPT`: geometry, pixel description,
rescale, the scanner's maker, model and kernel, the body part, the pixels), in the spirit
of the PS3.15 basic profile: names, IDs, dates, accession numbers, institutions,
descriptions and private elements are not copied at all. UIDs become keyed UIDs
(`2.25.<HMAC>`, the same original always giving the same new one), PatientID and
PatientName the patient pseudonym. The pseudonyms ingest of the original file would compute
are written in a private block (`components.data.pulled`), so ingest of the pulled tree
gives the same manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from components.data.deid import pseudonym
from components.data.ingest_run import (
    IMAGE_ID_LENGTH,
    IMAGE_PREFIX,
    PATIENT_PREFIX,
    SERIES_PREFIX,
)
from components.data.pulled import GivenNames, mark

KEPT: tuple[str, ...] = (
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "ConvolutionKernel",
    "KVP",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PatientPosition",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "BurnedInAnnotation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "PixelData",
)
# Functional groups of enhanced CT: only the macros ingest reads, each item filtered.
FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
FUNCTIONAL_MACROS = (
    "PixelMeasuresSequence",
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "CTReconstructionSequence",
    "CTXRayDetailsSequence",
    "PixelValueTransformationSequence",
    "FrameVOILUTSequence",
)
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
METHOD = "myelomet pull: PS3.15 basic profile, keep-list, keyed UIDs"  # LO: 64 at most


@dataclass(frozen=True)
class InstanceNames:
    """Where an instance goes: its patient and series pseudonyms and its file name."""

    patient: str
    series: str
    file_name: str


def patient_pseudonym(key: bytes, patient_id: str) -> str:
    """The patient pseudonym ingest gives this PatientID."""
    return pseudonym(key, patient_id.strip(), PATIENT_PREFIX)


def series_pseudonym(key: bytes, series_uid: str) -> str:
    """The series pseudonym ingest gives this Series Instance UID."""
    return pseudonym(key, series_uid.strip(), SERIES_PREFIX)


def image_ids(key: bytes, sop_uid: str, n_frames: int) -> tuple[str, ...]:
    """The image id ingest gives each frame of the instance."""
    return tuple(
        pseudonym(key, f"{sop_uid.strip()}#{frame}", IMAGE_PREFIX, IMAGE_ID_LENGTH)
        for frame in range(max(n_frames, 1))
    )


def file_name(key: bytes, sop_uid: str) -> str:
    """The pulled file's name: the image id of its first frame."""
    return f"{image_ids(key, sop_uid, 1)[0]}.dcm"


def keyed_uid(key: bytes, uid: str) -> str:
    """A new UID for `uid`: `2.25.` and 128 bits of its keyed hash (PS3.5 B.2)."""
    digest = pseudonym(key, str(uid).strip(), "uid", 32).removeprefix("uid-")
    return f"2.25.{int(digest, 16)}"


def deidentify(ds: Dataset, transfer_syntax: UID, key: bytes, patient: str, series: str) -> Dataset:
    """A new dataset holding only what ingest needs of `ds`, ready to write.

    Args:
        ds: the received instance (it is not changed).
        transfer_syntax: the transfer syntax its pixel data is encoded in.
        key: the de-identification key.
        patient: the patient pseudonym (`patient_pseudonym` of the original PatientID).
        series: the series pseudonym (`series_pseudonym` of the original series UID).

    Returns:
        The de-identified dataset, with its File Meta.
    """
    sop_uid = str(ds.SOPInstanceUID)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    out = Dataset()
    for keyword in KEPT:
        if keyword in ds:
            out[keyword] = ds[keyword]
    for keyword in FUNCTIONAL_GROUPS:
        if keyword in ds:
            setattr(out, keyword, Sequence(_macros(item) for item in ds[keyword].value))
    new_sop = keyed_uid(key, sop_uid)
    out.SOPInstanceUID = new_sop
    for keyword in REPLACED_UIDS:
        if ds.get(keyword):
            setattr(out, keyword, keyed_uid(key, str(ds.get(keyword))))
    out.PatientID = patient
    out.PatientName = patient
    out.PatientBirthDate = ""
    out.PatientSex = ""
    out.StudyDate = ""
    out.StudyTime = ""
    out.StudyID = ""
    out.AccessionNumber = ""
    out.ReferringPhysicianName = ""
    out.SeriesNumber = ds.get("SeriesNumber")
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    mark(out, key, GivenNames(patient, series, image_ids(key, sop_uid, n_frames)))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = new_sop
    meta.TransferSyntaxUID = transfer_syntax
    out.file_meta = meta
    return out


def _macros(item: Dataset) -> Dataset:
    kept = Dataset()
    for keyword in FUNCTIONAL_MACROS:
        if keyword in item:
            kept[keyword] = item[keyword]
    return kept
