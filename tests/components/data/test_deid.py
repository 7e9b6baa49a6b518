import stat

import pytest

from components.data.deid import DEMO_KEY, load_key, parse_key, pseudonym, study_key

ENV = "MYELOMET_TEST_DEID_KEY"
HEX_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


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


def test_empty_env_var_falls_back_to_file(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "")
    key_file = tmp_path / "deid.key"
    key_file.write_text(HEX_KEY + "\n")
    key_file.chmod(0o600)
    assert load_key(ENV, key_file) == bytes.fromhex(HEX_KEY)


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


def test_the_synthetic_cohort_gets_the_demo_key_whatever_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("K", "a" * 64)
    synthetic = tmp_path / "data" / "raw" / "synthetic"
    key = study_key(
        tmp_path / "data" / "raw" / ".." / "raw" / "synthetic", synthetic, "K", tmp_path / "f"
    )
    assert key == DEMO_KEY and not (tmp_path / "f").exists()
    assert study_key(tmp_path / "real", synthetic, "K", tmp_path / "f") == bytes.fromhex("a" * 64)


def test_the_demo_key_is_refused_for_real_data(tmp_path, monkeypatch):
    monkeypatch.setenv("K", DEMO_KEY.decode())
    with pytest.raises(ValueError, match="public demo key"):
        study_key(tmp_path / "real", tmp_path / "synthetic", "K", tmp_path / "f")
