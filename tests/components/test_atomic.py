import numpy as np
import pytest

from components import atomic


def test_write_text_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "state.json"
    atomic.write_text(path, "old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_the_temporary_keeps_the_suffix_so_numpy_writes_where_asked(tmp_path):
    path = tmp_path / "x.npy"
    with atomic.atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npy" and tmp != path
        np.save(tmp, np.arange(3))
    assert np.load(path).tolist() == [0, 1, 2]


def test_a_partial_suffix_names_a_hidden_temporary(tmp_path):
    path = tmp_path / "im-1.dcm"
    with atomic.atomic_path(path, ".partial") as tmp:
        assert tmp.name.startswith(".im-1.dcm.") and tmp.name.endswith(".partial")
        tmp.write_bytes(b"x")
    assert path.read_bytes() == b"x"


def test_two_writers_get_different_temporaries(tmp_path):
    path = tmp_path / "a.txt"
    with atomic.atomic_path(path) as first, atomic.atomic_path(path) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert path.read_text() == "1"
