"""The demo cohort: axial CT phantoms of vertebrae with MM or OMBT lesions, written as DICOM.

Each patient is one CT series of a few axial slices through a lumbar or thoracic vertebra.
Only the lesion traits depend on the class (`traits`); anatomy (`anatomy`), scanner
(`scanners`) and identity (`identity`) do not. Every patient draws from its own random
streams, so the files depend only on the config and the class names.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from tqdm import tqdm

from components.config import SyntheticConfig
from components.data.synthetic.anatomy import Anatomy, sample_anatomy
from components.data.synthetic.identity import deterministic_uid, fake_identity
from components.data.synthetic.lesions import sample_lesion_tracks
from components.data.synthetic.provenance import mark
from components.data.synthetic.render import render_slice
from components.data.synthetic.scanners import SCANNERS, ScannerProfile
from components.data.synthetic.traits import PatientTraits, sample_traits


@dataclass(frozen=True)
class PatientRecord:
    """One synthetic patient as written: where, which class, and the PHI in its files."""

    label: str
    folder: str
    patient_id: str
    patient_name: str
    birth_date: str
    study_date: str
    accession: str
    study_uid: str
    series_uid: str
    n_slices: int
    traits: PatientTraits
    phi: frozenset[str]


@dataclass(frozen=True)
class CohortSummary:
    """What `synthesize_cohort` wrote."""

    out: Path
    classes: tuple[str, str]
    seed: int
    difficulty: float
    patients: tuple[PatientRecord, ...]

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def n_slices(self) -> int:
        return sum(p.n_slices for p in self.patients)

    @property
    def patients_per_class(self) -> dict[str, int]:
        return {label: sum(p.label == label for p in self.patients) for label in self.classes}

    @property
    def slices_per_class(self) -> dict[str, int]:
        return {
            label: sum(p.n_slices for p in self.patients if p.label == label)
            for label in self.classes
        }

    def phi_strings(self) -> frozenset[str]:
        """Every identifying string written into the files (names, IDs, dates, UIDs, sites).

        Sex and age are written too but are left out: they are not identifiers and are far too
        short to search for.
        """
        return frozenset().union(*(p.phi for p in self.patients))

    def counts(self) -> dict[str, object]:
        """Counts only, no PHI: safe to print or to write as a DVC metric."""
        return {
            "n_patients": self.n_patients,
            "n_slices": self.n_slices,
            "patients_per_class": self.patients_per_class,
            "slices_per_class": self.slices_per_class,
        }


def synthesize_cohort(
    cfg: SyntheticConfig, classes: tuple[str, str], out: Path, progress: bool = True
) -> CohortSummary:
    """Write a synthetic CT cohort as `out/<CLASS>/<P0001>/<0001>.dcm`.

    `classes[0]` gets the MM lesion style, `classes[1]` the OMBT style. Files depend only on
    `cfg` and `classes`: reruns give byte-identical files. An existing `out` is replaced once
    the new cohort is complete.

    Args:
        cfg: cohort size, slices per patient, image size, difficulty and seed.
        classes: the two class folder names, MM-like first.
        out: the cohort root.
        progress: show a progress bar over patients.

    Returns:
        What was written, including every PHI string (`phi_strings()`).

    Raises:
        ValueError: `classes` are not two distinct folder names.
        FileExistsError: `out` holds files this function would not have written.
    """
    if len(classes) != 2 or len(set(classes)) != 2 or not all(_safe_name(c) for c in classes):
        raise ValueError(f"classes must be two distinct folder names, got {list(classes)}")
    out = Path(out)
    _check_replaceable(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    per_class = cfg.patients_per_class
    folder_numbers = np.random.default_rng([cfg.seed, 101]).permutation(2 * per_class) + 1
    records: list[PatientRecord] = []
    seen_ids: set[str] = set()
    try:
        with tqdm(
            total=2 * per_class, desc="synthesize", unit="patient", disable=not progress
        ) as bar:
            for patient_index in range(per_class):
                for class_index, label in enumerate(classes):
                    number = folder_numbers[2 * patient_index + class_index]
                    folder = tmp / label / f"P{number:04d}"
                    record = _write_patient(
                        cfg, class_index, patient_index, label, folder, seen_ids
                    )
                    records.append(record)
                    bar.update(1)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    records.sort(key=lambda r: (r.label != classes[0], r.folder))
    return CohortSummary(out, (classes[0], classes[1]), cfg.seed, cfg.difficulty, tuple(records))


def _safe_name(name: str) -> bool:
    return bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name


def _check_replaceable(out: Path) -> None:
    """Refuse to delete anything but a previous cohort (.dcm files, three levels deep)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; remove it or choose another out")
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        ok_dir = path.is_dir() and not path.is_symlink() and len(rel.parts) <= 2
        ok_file = path.is_file() and path.suffix == ".dcm" and len(rel.parts) == 3
        if not (ok_dir or ok_file):
            raise FileExistsError(
                f"{out}: holds {rel}, which synthesize did not write; "
                "remove it yourself or choose another out"
            )


def _balanced_slot(
    seed: int, class_index: int, patient_index: int, per_class: int
) -> tuple[int, bool]:
    """Scanner index and lumbar flag of patient `patient_index` of class `class_index`.

    Both are balanced within each class (and crossed with each other), so neither the scanner
    nor the spinal region predicts the class: a model has to look at the lesions.
    """
    slot = int(
        np.random.default_rng([seed, 202, class_index]).permutation(per_class)[patient_index]
    )
    return slot % 2, (slot // 2) % 2 == 0


def _write_patient(
    cfg: SyntheticConfig,
    class_index: int,
    patient_index: int,
    label: str,
    folder: Path,
    seen_ids: set[str],
) -> PatientRecord:
    """Synthesize one patient's slices into `folder`."""
    # Separate streams so that difficulty changes lesions only, never anatomy or identity.
    key = (cfg.seed, class_index, patient_index)
    traits_seed, anatomy_seed, lesions_seed, image_seed, identity_seed = np.random.SeedSequence(
        list(key)
    ).spawn(5)
    scanner_index, lumbar = _balanced_slot(
        cfg.seed, class_index, patient_index, cfg.patients_per_class
    )
    scanner = SCANNERS[scanner_index]
    anatomy_rng = np.random.default_rng(anatomy_seed)
    n_slices = int(anatomy_rng.integers(cfg.slices_min, cfg.slices_max + 1))
    anatomy = sample_anatomy(anatomy_rng, cfg.size, n_slices, scanner, lumbar)
    traits = sample_traits(
        np.random.default_rng(traits_seed), class_index, cfg.difficulty, scanner, anatomy
    )
    tracks = sample_lesion_tracks(np.random.default_rng(lesions_seed), traits, anatomy, n_slices)
    identity = fake_identity(np.random.default_rng(identity_seed), *key, seen_ids)

    folder.mkdir(parents=True)
    image_rng = np.random.default_rng(image_seed)
    series_uid = deterministic_uid(*key, "series")
    sop_uids = []
    for slice_index in range(n_slices):
        hu = render_slice(anatomy, traits, tracks, scanner, slice_index, image_rng)
        stored = np.rint(hu - scanner.rescale_intercept).astype(np.int16)
        sop_uid = deterministic_uid(*key, "sop", slice_index)
        sop_uids.append(sop_uid)
        ds = _ct_dataset(identity, anatomy, scanner, series_uid, sop_uid, slice_index, stored)
        dcmwrite(folder / f"{slice_index + 1:04d}.dcm", ds, enforce_file_format=True)
    phi = {
        identity["PatientName"],
        identity["PatientID"],
        identity["PatientBirthDate"],
        identity["PatientAddress"],
        identity["InstitutionName"],
        identity["InstitutionAddress"],
        identity["ReferringPhysicianName"],
        identity["AccessionNumber"],
        identity["StudyID"],
        identity["StudyDate"],
        identity["StudyInstanceUID"],
        identity["FrameOfReferenceUID"],
        identity["DeviceSerialNumber"],
        scanner.station_name,
        series_uid,
        *sop_uids,
    }
    return PatientRecord(
        label=label,
        folder=folder.name,
        patient_id=identity["PatientID"],
        patient_name=identity["PatientName"],
        birth_date=identity["PatientBirthDate"],
        study_date=identity["StudyDate"],
        accession=identity["AccessionNumber"],
        study_uid=identity["StudyInstanceUID"],
        series_uid=series_uid,
        n_slices=n_slices,
        traits=traits,
        phi=frozenset(phi),
    )


def _ct_dataset(
    identity: dict[str, str],
    anatomy: Anatomy,
    scanner: ScannerProfile,
    series_uid: str,
    sop_uid: str,
    slice_index: int,
    stored: np.ndarray,
) -> Dataset:
    """One CT Image Storage dataset with its file meta and the synthesizer's marks."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    mark(ds)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    for level in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{level}Date", identity["StudyDate"])
        setattr(ds, f"{level}Time", identity["StudyTime"])
    ds.AccessionNumber = identity["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = identity["InstitutionName"]
    ds.InstitutionAddress = identity["InstitutionAddress"]
    ds.ReferringPhysicianName = identity["ReferringPhysicianName"]
    ds.StationName = scanner.station_name
    part = "LSPINE" if anatomy.region == "lumbar" else "TSPINE"
    ds.StudyDescription = "CT SPINE WITHOUT CONTRAST"
    ds.SeriesDescription = f"{part} {scanner.thickness_mm:g}mm {scanner.kernel}"
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = identity["PatientName"]
    ds.PatientID = identity["PatientID"]
    ds.PatientBirthDate = identity["PatientBirthDate"]
    ds.PatientSex = identity["PatientSex"]
    ds.PatientAge = identity["PatientAge"]
    ds.PatientAddress = identity["PatientAddress"]
    ds.BodyPartExamined = part
    ds.SliceThickness = scanner.thickness_mm
    ds.KVP = scanner.kvp
    ds.DeviceSerialNumber = identity["DeviceSerialNumber"]
    ds.SoftwareVersions = "SYN 1.0"
    ds.ReconstructionDiameter = round(anatomy.pixel_spacing_mm * anatomy.pixels_per_side, 2)
    ds.XRayTubeCurrent = identity["XRayTubeCurrent"]
    ds.ConvolutionKernel = scanner.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = identity["StudyInstanceUID"]
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = identity["StudyID"]
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = slice_index + 1
    z_mm = round(anatomy.z_start_mm + slice_index * anatomy.slice_gap_mm, 2)
    ds.ImagePositionPatient = [
        round(anatomy.fov_x_min_mm + anatomy.pixel_spacing_mm / 2, 4),
        round(anatomy.fov_y_min_mm + anatomy.pixel_spacing_mm / 2, 4),
        z_mm,
    ]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = identity["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = z_mm
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [anatomy.pixel_spacing_mm, anatomy.pixel_spacing_mm]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    centers, widths = scanner.window_center, scanner.window_width
    ds.WindowCenter = list(centers) if len(centers) > 1 else centers[0]
    ds.WindowWidth = list(widths) if len(widths) > 1 else widths[0]
    ds.RescaleIntercept = scanner.rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.PixelData = stored.astype("<i2").tobytes()
    return ds
