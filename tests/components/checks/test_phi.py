"""Which column names count as protected health information."""

from __future__ import annotations

from components.checks.phi import phi_columns
from components.data.ingest import MANIFEST_COLUMNS


def test_contract_columns_are_not_phi_but_identifiers_are():
    assert phi_columns(MANIFEST_COLUMNS) == []
    contract = [
        "image_id",
        "patient",
        "label",
        "hu_min",
        "hu_max",
        "file",
        "frame",
        "modality",
        "rows",
        "columns",
        "pixel_spacing_row",
        "pixel_spacing_col",
        "slice_thickness",
        "manufacturer",
        "model",
        "kernel",
        "kvp",
        "rescale_slope",
        "rescale_intercept",
        "transfer_syntax",
        "photometric",
        "split",
    ]
    assert phi_columns(contract) == []
    phi = [
        "PatientName",
        "PatientID",
        "patient_id",
        "OtherPatientIDs",
        "PatientBirthDate",
        "birth_date",
        "dob",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "series_uid",
        "AccessionNumber",
        "ReferringPhysicianName",
        "InstitutionAddress",
    ]
    assert phi_columns(phi) == phi
