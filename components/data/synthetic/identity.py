"""Fake PHI of the demo cohort: names, IDs, dates and sites, and deterministic DICOM UIDs.

Everything here looks like real identifying data on purpose, so that de-identification has
something to remove; none of it belongs to a real person or place.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, timedelta

import numpy as np

_UID_NAMESPACE = uuid.UUID("6f1c6d2e-3b7a-5e42-9d0a-6d79656c6f6d")

_INSTITUTIONS = (
    ("Synthetic University Hospital", "1 Phantom Way^^Testville^^00001^Nowhere"),
    ("Example Oncology Centre", "77 Placeholder Road^^Sampletown^^00002^Nowhere"),
)
_SURNAMES = ("Doe", "Roe", "Moe", "Poe", "Loe")
_GIVEN_NAMES = ("Alex", "Sam", "Kim", "Lee", "Max", "Jo")


def deterministic_uid(*parts: object) -> str:
    """A deterministic DICOM UID: 2.25 + a name-based UUID (pydicom ignores entropy for 2.25)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def _digits(n_digits: int, *parts: object) -> str:
    """`n_digits` decimal digits hashed from `parts`."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return f"{int(digest, 16) % 10**n_digits:0{n_digits}d}"


def fake_identity(
    rng: np.random.Generator, seed: int, class_index: int, patient_index: int, seen_ids: set[str]
) -> dict[str, str]:
    """Fake PHI for one patient, keyed by DICOM keyword; PatientID is unique in the cohort."""
    key = (seed, class_index, patient_index)
    patient_id = "MX" + _digits(8, *key, "mrn")
    while patient_id in seen_ids:  # a collision is astronomically rare, but keep IDs unique
        patient_id = "MX" + _digits(8, patient_id)
    seen_ids.add(patient_id)
    study_date = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 2922)))
    age = int(rng.integers(42, 86))
    birth_date = date(study_date.year - age, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
    age -= (study_date.month, study_date.day) < (birth_date.month, birth_date.day)
    institution, address = _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]
    name_suffix = _digits(4, *key, "name")
    name_tag = "".join(chr(65 + int(x)) for x in rng.integers(0, 26, 3))
    return {
        "PatientName": f"Synthetic^Patient{name_suffix}^{name_tag}",
        "PatientID": patient_id,
        "PatientBirthDate": birth_date.strftime("%Y%m%d"),
        "PatientSex": "MF"[int(rng.integers(2))],
        "PatientAge": f"{age:03d}Y",
        "PatientAddress": f"{int(rng.integers(1, 999))} {name_tag.title()} Street^^Synthville",
        "InstitutionName": institution,
        "InstitutionAddress": address,
        "ReferringPhysicianName": (
            f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}{name_tag}^"
            f"{_GIVEN_NAMES[int(rng.integers(len(_GIVEN_NAMES)))]}"
        ),
        "AccessionNumber": "AC" + _digits(10, *key, "accession"),
        "StudyID": "S" + _digits(7, *key, "study"),
        "StudyDate": study_date.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(60)):02d}"
        f"{int(rng.integers(60)):02d}",
        "StudyInstanceUID": deterministic_uid(*key, "study"),
        "FrameOfReferenceUID": deterministic_uid(*key, "frame"),
        "DeviceSerialNumber": "SN" + _digits(6, *key, "device"),
        "XRayTubeCurrent": str(int(rng.integers(150, 351))),
    }
