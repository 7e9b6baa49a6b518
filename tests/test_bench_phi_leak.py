from bench import bench_phi_leak
from bench.bench_phi_leak import find_leaks, outputs


def test_a_planted_identifier_is_found_in_the_outputs_and_nothing_else(tmp_path, monkeypatch):
    (tmp_path / "data" / "processed").mkdir(parents=True)
    (tmp_path / "data" / "processed" / "manifest.csv").write_text("image_id\nim-1\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "study.html").write_bytes("<p>Ölund^Åsa</p>".encode("latin-1"))
    (tmp_path / "data" / "raw").mkdir()
    (tmp_path / "data" / "raw" / "1.dcm").write_text("Doe^Jane MRN123456")  # the input

    files = outputs(tmp_path)
    leaks = find_leaks(files, frozenset({"Ölund^Åsa", "Doe^Jane", "MRN123456"}))

    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "data/processed/manifest.csv",
        "reports/study.html",
    ]
    assert leaks == {"Ölund^Åsa": [str(tmp_path / "reports" / "study.html")]}
    monkeypatch.setattr(bench_phi_leak, "CHUNK_BYTES", 7)  # an identifier across chunks
    assert find_leaks(files, frozenset({"Ölund^Åsa", "Doe^Jane"})) == leaks
