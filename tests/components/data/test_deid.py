import os
import shutil
import stat

import pandas as pd
import pydicom
import pytest

from components.config import SyntheticConfig
from components.data.deid import DEMO_KEY, load_key, parse_key, pseudonym, study_key
from components.data.ingest import ingest
from components.data.synthetic.cohort import synthesize_cohort
from components.data.synthetic.provenance import (
    MARKER_ELEMENT,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    is_synthesized,
)
from tests import dicom_factory as factory

ENV = "MYELOMET_TEST_DEID_KEY"
HEX_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
CLASSES = ("MM", "OMBT")
TINY = SyntheticConfig(patients_per_class=1, slices_min=2, slices_max=2, size=64, seed=5)


def test_env_var_wins_over_key_file(tmp_path, monkeypatch):
    key_file = tmp_path / "deid.key"
    key_file.write_text("ff" * 32)
    monkeypatch.setenv(ENV, HEX_KEY)
    assert load_key(ENV, key_file) == bytes.fromhex(HEX_KEY)


def test_env_var_passphrase_is_used_as_utf8(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "  correct horse battery staple  ")
    assert load_key(ENV, tmp_path / "absent.key") == b"correct horse battery staple"
    assert not (tmp_path / "absent.key").exists()


def test_key_file_is_created_0600_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    key_file = tmp_path / "nested" / "dir" / "deid.key"
    first = load_key(ENV, key_file)
    assert len(first) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first.hex()
    assert load_key(ENV, key_file) == first


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_env_var_is_refused_not_a_silent_fallback(tmp_path, monkeypatch, blank):
    monkeypatch.setenv(ENV, blank)
    key_file = tmp_path / "deid.key"
    key_file.write_text(HEX_KEY + "\n")
    key_file.chmod(0o600)
    with pytest.raises(ValueError, match=f"{ENV} is set but blank") as caught:
        load_key(ENV, key_file)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="set but blank"):
        study_key(tmp_path, ENV, tmp_path / "new.key")
    assert not (tmp_path / "new.key").exists()


def test_short_key_is_refused_with_a_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "secret")
    with pytest.raises(ValueError, match="token_hex"):
        load_key(ENV, tmp_path / "deid.key")


def test_world_readable_key_file_warns(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    key_file = tmp_path / "deid.key"
    key_file.write_text(HEX_KEY)
    key_file.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        load_key(ENV, key_file)


def test_same_key_same_pseudonym_different_key_different():
    a, b = parse_key(HEX_KEY, "test"), parse_key("ee" * 32, "test")
    assert pseudonym(a, "MRN-1", "pt") == pseudonym(a, "MRN-1", "pt")
    assert pseudonym(a, "MRN-1", "pt") != pseudonym(b, "MRN-1", "pt")
    assert pseudonym(a, "MRN-1", "pt") != pseudonym(a, "MRN-2", "pt")


def test_pseudonym_format_and_prefix_separation():
    key = bytes.fromhex(HEX_KEY)
    value = pseudonym(key, "MRN-1", "pt")
    assert value.startswith("pt-") and len(value) == 3 + 12
    int(value[3:], 16)
    assert len(pseudonym(key, "x", "im", 16)) == 3 + 16
    # Same value, other kind of thing: unrelated digits.
    assert pseudonym(key, "MRN-1", "f")[2:] != value[3:]
    with pytest.raises(ValueError):
        pseudonym(key, "x", "pt", 0)
    with pytest.raises(ValueError):
        pseudonym(b"", "x", "pt")


@pytest.fixture(scope="module")
def synthetic_cohort(tmp_path_factory):
    """A tiny cohort written by the synthesizer, at the demo's path under a project."""
    out = tmp_path_factory.mktemp("project") / "data" / "raw" / "synthetic"
    synthesize_cohort(TINY, CLASSES, out, progress=False)
    return out


def _copy(cohort, tmp_path):
    root = tmp_path / "data" / "raw" / "synthetic"
    shutil.copytree(cohort, root)
    return root


def test_files_the_synthesizer_wrote_are_recognised_by_their_marks(synthetic_cohort, tmp_path):
    files = sorted(synthetic_cohort.rglob("*.dcm"))
    assert files and all(is_synthesized(f) for f in files)
    real = factory.write_plain(tmp_path / "real.dcm").path
    assert not is_synthesized(real)
    # the synthesizer's implementation UID alone is not enough: the private marker is needed
    ds = pydicom.dcmread(files[0])
    del ds[ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR).get_tag(MARKER_ELEMENT)]
    ds.save_as(tmp_path / "unmarked.dcm")
    assert not is_synthesized(tmp_path / "unmarked.dcm")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert not is_synthesized(fifo)  # returns at once: a FIFO is never opened


def test_the_synthetic_cohort_gets_the_demo_key_when_no_key_is_set(
    synthetic_cohort, tmp_path, monkeypatch
):
    monkeypatch.delenv(ENV, raising=False)
    assert study_key(synthetic_cohort, ENV, tmp_path / "f") == DEMO_KEY
    assert not (tmp_path / "f").exists()


def test_a_set_key_is_used_even_for_the_synthetic_cohort(synthetic_cohort, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, HEX_KEY)
    assert study_key(synthetic_cohort, ENV, tmp_path / "f") == bytes.fromhex(HEX_KEY)


def test_real_data_gets_the_key_file_wherever_it_sits(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    root = tmp_path / "data" / "raw" / "synthetic"  # the demo's folder name: not the demo
    factory.write_plain(root / "MM" / "p1" / "a.dcm")
    key = study_key(root, ENV, tmp_path / "deid.key")
    assert key != DEMO_KEY and key == bytes.fromhex((tmp_path / "deid.key").read_text())


def test_a_mixed_tree_without_a_key_is_refused_with_one_line(
    synthetic_cohort, tmp_path, monkeypatch
):
    monkeypatch.delenv(ENV, raising=False)
    root = _copy(synthetic_cohort, tmp_path)
    factory.write_plain(root / "MM" / "planted" / "real.dcm")
    with pytest.raises(ValueError, match=f"set {ENV} to a secret key") as caught:
        study_key(root, ENV, tmp_path / "f")
    assert "\n" not in str(caught.value) and not (tmp_path / "f").exists()


def test_a_set_key_renames_a_real_file_planted_in_the_synthetic_folder(
    synthetic_cohort, tmp_path, monkeypatch
):
    root = _copy(synthetic_cohort, tmp_path)
    planted = factory.write_plain(root / "MM" / "planted" / "real.dcm")
    patient_id = str(planted.ds.PatientID)
    patients = {}
    for name, key_text in (("a", HEX_KEY), ("b", "ee" * 32)):
        monkeypatch.setenv(ENV, key_text)
        key = study_key(root, ENV, tmp_path / "f")
        summary = ingest(root, tmp_path / name, CLASSES, key, progress=False)
        manifest = pd.read_csv(summary.manifest_path, dtype=str)
        patients[name] = set(manifest["patient"])
        assert pseudonym(key, patient_id, "pt") in patients[name]
        assert pseudonym(DEMO_KEY, patient_id, "pt") not in patients[name]
    assert patients["a"].isdisjoint(patients["b"])


def test_the_demo_key_is_refused_for_real_data(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, DEMO_KEY.decode())
    factory.write_plain(tmp_path / "real" / "MM" / "p" / "a.dcm")
    with pytest.raises(ValueError, match="public demo key"):
        study_key(tmp_path / "real", ENV, tmp_path / "f")
