"""The coded concepts of the answers sent back to the PACS, each with where it comes from.

Every code is a SNOMED CT (`SCT`), DICOM (`DCM`), LOINC (`LN`) or UCUM concept as DICOM PS3.16
lists it; pydicom's `pydicom.sr.codedict.codes`, generated from PS3.16, holds each of them
under the name given in its comment (a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.sr.coding import Code

# The answer, one code per class of params `classes` (the paper's MM and OMBT).
# SCT 1162576007 "Multiple myeloma": PS3.16 CID 64 (codes.SCT.MultipleMyeloma).
MULTIPLE_MYELOMA = Code("1162576007", "SCT", "Multiple myeloma")
# SCT 94222008 "Secondary malignant neoplasm of bone", listed as "Bony metastasis" in PS3.16
# CID 6347 (codes.SCT.SecondaryMalignantNeoplasmOfBone, codes.SCT.BonyMetastasis): the
# osteolytic metastatic bone tumour of the paper.
BONE_METASTASIS = Code("94222008", "SCT", "Secondary malignant neoplasm of bone")
CLASS_CODES: Mapping[str, Code] = {"MM": MULTIPLE_MYELOMA, "OMBT": BONE_METASTASIS}

# TID 1500 Measurement Report: the document title (DCM 126000, CID 7021,
# codes.DCM.ImagingMeasurementReport) and the procedure reported (LN 25045-6, CID 100,
# codes.LN.CTUnspecifiedBodyRegion).
MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
CT_PROCEDURE = Code("25045-6", "LN", "CT unspecified body region")

# TID 1501 rows: the finding site (SCT 421060004 "Spine", codes.SCT.Spine), the answer as a
# qualitative evaluation named "Impression" (DCM 121073, codes.DCM.Impression), and the two
# measurements, "Probability" (DCM 122157, codes.DCM.Probability) and "Threshold Value"
# (DCM 122411, codes.DCM.ThresholdValue), both without units (UCUM "1", codes.UCUM.NoUnits).
SPINE = Code("421060004", "SCT", "Spine")
IMPRESSION = Code("121073", "DCM", "Impression")
PROBABILITY = Code("122157", "DCM", "Probability")
THRESHOLD = Code("122411", "DCM", "Threshold Value")
NO_UNITS = Code("1", "UCUM", "no units")

# TID 1004 Device Observer Identifying Attributes: the observer is a device (DCM 121007,
# codes.DCM.Device).
DEVICE = Code("121007", "DCM", "Device")


def class_code(name: str) -> Code:
    """The code of a class of params `classes`.

    Raises:
        ValueError: the class has no code here.
    """
    try:
        return CLASS_CODES[name]
    except KeyError:
        raise ValueError(
            f"class {name!r} has no SNOMED CT code in components/pacs/codes.py (known: "
            f"{sorted(CLASS_CODES)}); add its concept there to send answers as DICOM"
        ) from None
