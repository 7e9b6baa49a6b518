"""The labels CSV's cells are never echoed: a shifted column puts an MRN or a name where the
label should be, so every message names the line and what is wrong with it."""

from __future__ import annotations

import csv

import pytest

from components.data.ingest import ingest
from components.data.raw_tree import read_labels_csv
from tests import dicom_factory as factory

KEY = bytes.fromhex("5a" * 32)
CLASSES = ("MM", "OMBT")


def test_a_label_that_is_no_class_is_named_by_its_line_not_its_cell(tmp_path):
    root, out = tmp_path / "raw", tmp_path / "out"
    factory.write_plain(root / "a.dcm", phi=factory.Phi(patient_id="MRN-1"), seed=1)
    factory.write_plain(root / "b.dcm", phi=factory.Phi(patient_id="MRN-2"), seed=2)
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nMRN-1,MM\nMRN-2,MRN9876543200\n")

    summary = ingest(root, out, CLASSES, KEY, labels_csv=labels, progress=False)

    [reject] = summary.rejects
    assert reject.reason == "unknown_label"
    assert reject.detail.startswith("line 3 of the labels CSV gives its patient a label that")
    with (out / "rejects.csv").open(newline="") as f:
        written = " ".join(" ".join(row) for row in csv.reader(f))
    for cell in ("MRN9876543200", "9876543200", "MRN-2"):
        assert cell not in written and cell not in reject.detail


def test_a_csv_without_its_header_is_refused_without_its_first_row(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("MRN-4455667,Doe^Jane\nMRN-2,MM\n")
    with pytest.raises(ValueError, match="header `patient_id,label` on line 1") as caught:
        read_labels_csv(labels)
    assert "MRN" not in str(caught.value) and "Doe" not in str(caught.value)


def test_two_labels_for_one_patient_name_the_lines_only(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\nMRN-1,MM\nMRN-1,Roe^Richard\n")
    with pytest.raises(ValueError, match="lines 2 and 3") as caught:
        read_labels_csv(labels)
    assert "MRN-1" not in str(caught.value) and "Roe" not in str(caught.value)
    assert "'MM'" not in str(caught.value)


def test_the_labels_keep_the_line_of_each_patient(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("patient_id,label\n00123,MM\n\nNA , OMBT\n")
    table = read_labels_csv(labels)
    assert dict(table) == {"00123": "MM", "NA": "OMBT"}
    assert (table.line("00123"), table.line("NA")) == (2, 4)
