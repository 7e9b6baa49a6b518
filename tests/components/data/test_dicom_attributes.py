"""The acquisition attributes carry no header text: a vendor from a fixed vocabulary, keyed
pseudonyms, defined terms and numbers in a CT scanner's range; pydicom quotes no value."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydicom.dataelem import RawDataElement

from components.data.deid import pseudonym
from components.data.dicom import open_ct
from components.data.dicom_attributes import (
    BODY_PART_PREFIX,
    KERNEL_PREFIX,
    OTHER,
    SCANNER_PREFIX,
    VENDORS,
    text_pseudonym,
    vendor,
)
from components.data.rejects import DicomRejected, RejectReason
from tests import dicom_factory as factory
from tests.tool_env import project_env

KEY = b"a test key of at least sixteen bytes"


@pytest.mark.parametrize(
    ("manufacturer", "expected"),
    [
        ("GE MEDICAL SYSTEMS", "GE"),
        ("GE Healthcare", "GE"),
        ("SIEMENS", "Siemens"),
        ("Siemens Healthineers AG", "Siemens"),
        ("Philips Medical Systems (Cleveland)", "Philips"),
        ("TOSHIBA_MEC", "Canon/Toshiba"),
        ("Canon Medical Systems", "Canon/Toshiba"),
        ("Hitachi Medical Corporation", "Hitachi"),
        ("FUJIFILM Healthcare", "Fujifilm"),
        ("Shanghai United Imaging Healthcare Co.,Ltd.", "United Imaging"),
        ("UIH", "United Imaging"),
        ("ACME Imaging", OTHER),
        ("Doe^Jane 1951-03-12", OTHER),
        ("GEORGE Hospital", OTHER),  # a word that starts like a vendor's is not its name
        ("Siemens Philips", OTHER),  # two makers: no guess
        ("", ""),
        (None, ""),
    ],
)
def test_the_vendor_is_a_term_of_the_vocabulary_or_other(manufacturer, expected):
    assert vendor(manufacturer) == expected
    assert expected in (*VENDORS, "")


def test_text_pseudonyms_are_keyed_and_ignore_case_and_spacing():
    kernel = text_pseudonym("B70f", KERNEL_PREFIX, KEY)
    assert kernel == pseudonym(KEY, "b70f", KERNEL_PREFIX) and kernel.startswith("kernel-")
    assert text_pseudonym("  b70F ", KERNEL_PREFIX, KEY) == kernel
    assert text_pseudonym("B70f", KERNEL_PREFIX, b"another key of sixteen bytes") != kernel
    assert text_pseudonym("B70f", BODY_PART_PREFIX, KEY) != kernel.replace("kernel", "bodypart")
    assert text_pseudonym("", KERNEL_PREFIX, KEY) == ""
    assert text_pseudonym("B70f", KERNEL_PREFIX, None) == ""


def test_the_frame_attributes_hold_no_header_text(tmp_path):
    written = factory.write_plain(tmp_path / "a.dcm")
    ds = written.ds
    ds.Manufacturer = "GE Medical Doe^Jane"
    ds.ManufacturerModelName = "Jane 1951-03-12"
    ds.ConvolutionKernel = ["B70f", "ACC99887766"]
    ds.BodyPartExamined = "DOE JANE"
    ds.BurnedInAnnotation = "Doe"
    ds.KVP = 19510312  # a date typed into a number
    ds.InstanceNumber = 510312
    ds.save_as(written.path, enforce_file_format=True)

    [piece] = list(open_ct(written.path).slices(KEY))
    frame = piece.attributes
    assert frame["manufacturer"] == "GE"
    assert frame["model"] == pseudonym(KEY, "ge/jane 1951-03-12", SCANNER_PREFIX)
    assert frame["kernel"] == pseudonym(KEY, "b70f/acc99887766", KERNEL_PREFIX)
    assert frame["body_part"] == pseudonym(KEY, "doe jane", BODY_PART_PREFIX)
    assert frame["burned_in_annotation"] == OTHER
    assert frame["kvp"] is None and frame["instance_number"] is None
    assert frame["photometric"] == "MONOCHROME2" and frame["slice_thickness"] == 1.5
    text = repr(frame).upper()
    for planted in ("DOE", "JANE", "1951", "ACC99887766", "19510312", "510312"):
        assert planted not in text


@pytest.mark.parametrize(
    ("keyword", "value", "reason", "says"),
    [
        ("Modality", "Doe Jane", RejectReason.MODALITY_NOT_CT, "modality of no defined term"),
        ("Modality", "MR", RejectReason.MODALITY_NOT_CT, "modality MR"),
        ("PhotometricInterpretation", "JANE", RejectReason.COLOUR_IMAGE, "of no defined term"),
        ("PhotometricInterpretation", "RGB", RejectReason.COLOUR_IMAGE, "interpretation RGB"),
    ],
)
def test_a_reject_names_a_defined_term_never_other_text(tmp_path, keyword, value, reason, says):
    written = factory.write_plain(tmp_path / "a.dcm")
    setattr(written.ds, keyword, value)
    written.ds.save_as(written.path, enforce_file_format=True)
    with pytest.raises(DicomRejected) as caught:
        open_ct(written.path)
    assert caught.value.reason == reason and says in caught.value.detail
    assert "JANE" not in caught.value.detail.upper()


_READ = """
import logging, sys
from components.data.dicom_warnings import quiet_dicom_library
from components.data.dicom import read_ct
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
if sys.argv[2] == "quiet":
    quiet_dicom_library()
image = read_ct(sys.argv[1])
print(image.frames[0]["instance_number"], len(image.series_instance_uid))
"""


def test_pydicom_quotes_no_header_value_once_quietened(tmp_path):
    """A leading-zero UID and an ID in an IS: pydicom warns quoting them, and logs them to a
    configured root logger, unless `quiet_dicom_library` ran; the file is read either way."""
    written = factory.write_plain(tmp_path / "a.dcm")
    ds = written.ds
    ds.SeriesInstanceUID = "1.2.840.113619.2.55.3.0012.4455"
    del ds.InstanceNumber
    ds[0x00200013] = RawDataElement(0x00200013, "IS", 12, b"MRN98765432x", 0, False, True)
    ds.save_as(written.path, enforce_file_format=True)

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", _READ, str(written.path), mode],
            capture_output=True,
            text=True,
            env=project_env(),
            check=True,
        )

    loud, quiet = run("loud"), run("quiet")
    assert "MRN98765432x" in loud.stderr and "0012.4455" in loud.stderr  # the leak, as it was
    assert quiet.stdout == loud.stdout == "None 31\n"
    for planted in ("MRN98765432x", "98765432", "0012.4455", "Doe", "Jane"):
        assert planted not in quiet.stderr + quiet.stdout
