import pytest

from bench import bench_phi_leak
from bench.bench_phi_leak import LeakSearch, find_leaks, fuzzy_forms, outputs


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


# Each planted identifier, and copies of it a de-identifier could let through.
FUZZY_COPIES = {
    "19510317": ["born 1951-03-17", "DOB 17.03.1951", "3/17/1951", "17 Mar 1951"],
    "ACC55512345": ["ACC-55512345", "acc 555 12345", "order 55512345"],
    "Wu^Li": ["WU LI", "Li, Wu", "li_wu"],
    "Yamada^Tarou=山田^太郎": ["Tarou", "山田 太郎", "TAROU YAMADA"],
    "Müller^Jürgen": ["MUELLER JUERGEN", "Muller", "jürgen müller"],
    "O'Brien^Sean": ["OBRIEN", "O’Brien", "o brien sean"],
    "1.2.840.113619.2.55.3.0012.4455": ["uid 1.2.840.113619.2.55.3.12.4455"],
}


@pytest.mark.parametrize(
    ("identifier", "copy"), [(i, c) for i, cs in FUZZY_COPIES.items() for c in cs]
)
def test_each_fuzzy_copy_of_a_planted_identifier_is_found(tmp_path, identifier, copy):
    path = tmp_path / "out.txt"
    path.write_bytes(f"slice,{copy},120\n".encode())
    assert find_leaks([path], [identifier], min_length=4) == {identifier: [str(path)]}


def test_unrelated_text_and_binary_bytes_are_not_taken_for_identifiers(tmp_path):
    text = tmp_path / "manifest.csv"
    text.write_text("image_id,patient,model\nim-1,pt-3fa2c1d09b1e,scanner-0a1b2c3d4e5f\n")
    binary = tmp_path / "slice.npy"
    binary.write_bytes(b"\x00W\x00u\x00L\x00i" + bytes(range(256)) * 8)  # spread out, with NULs
    planted = [*FUZZY_COPIES, "Roe^Richard"]
    assert find_leaks([text, binary], planted, min_length=4) == {}


def test_forms_in_the_generators_source_are_left_out():
    search = LeakSearch(["Synthetic^Patient0042^ABC"])
    assert search.drop(b"cohort = 'synthetic' # the Synthetic demo") > 0
    assert b"synthetic" not in search.raw
    assert b"patient0042" in search.raw


def test_fuzzy_forms_cover_dates_names_and_uids():
    assert {"1951-03-17", "17.03.1951", "03/17/1951", "17 March 1951"} <= fuzzy_forms("19510317")
    assert {"Tarou", "山田", "太郎", "山田太郎", "Yamada Tarou"} <= fuzzy_forms(
        "Yamada^Tarou=山田^太郎"
    )
    assert {"Mueller", "Muller", "Juergen Mueller"} <= fuzzy_forms("Müller^Jürgen")
    assert "1.2.3.12" in fuzzy_forms("1.2.3.0012")
