import base64
import json
import os

import keras
import numpy as np
import pydicom
import pytest

from components.data.dataset import model_input
from components.data.dicom import read_ct
from components.registry import serving
from components.registry.serving import MemberSpec, Predictor, ServingSpec
from tests.dicom_factory import (
    write_ct_files,
    write_mr,
    write_multiframe,
    write_not_dicom,
    write_plain,
    write_raw_attribute,
    write_rgb,
)
from tests.model_factory import (
    BACKBONE,
    CLASSES,
    POSITIVE,
    SIZE,
    WINDOWS,
    keras_probability,
    tiny_model,
    write_models_dir,
)

pytestmark = pytest.mark.backends
THRESHOLD = 0.4  # between the probabilities of the test files: both labels occur


# The JSON `ServingSpec.to_json` wrote by hand before ServingSpec was a pydantic model.
SPEC_ON_DISK = {
    "format": 1,
    "candidate": BACKBONE,
    "members": [
        {
            "backbone": BACKBONE,
            "image_size": SIZE,
            "windows": [w.model_dump() for w in WINDOWS],
            "crop": 1.0,
        }
    ],
    "classes": list(CLASSES),
    "positive_class": POSITIVE,
    "thresholds": {"slice": THRESHOLD, "patient": 0.4},
    "keras_backend": "",
}


def _spec(*backbones: str) -> ServingSpec:
    return ServingSpec(
        candidate=backbones[0] if len(backbones) == 1 else "ensemble",
        members=tuple(MemberSpec(backbone=b, image_size=SIZE, windows=WINDOWS) for b in backbones),
        classes=CLASSES,
        positive_class=POSITIVE,
        thresholds={"slice": THRESHOLD, "patient": 0.4},
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return write_models_dir(root, tiny_model()) / BACKBONE / "model.keras"


@pytest.fixture(scope="module")
def predictor(model_file):
    return Predictor.load(_spec(BACKBONE), [model_file])


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    return write_ct_files(tmp_path_factory.mktemp("dicom"), 4)


def _keras_p(predictor: Predictor, hu_slices) -> np.ndarray:
    return keras_probability(predictor.models[0], hu_slices)


def test_paths_and_bytes_give_the_keras_probability_of_model_input(predictor, ct_files):
    expected = _keras_p(predictor, [read_ct(f).hu[0] for f in ct_files])
    assert np.ptp(expected) > 0.01  # the test would prove nothing on a constant model

    by_path = predictor.predict_sources(ct_files)
    by_bytes = predictor.predict_sources([f.read_bytes() for f in ct_files])

    for rows in (by_path, by_bytes):
        assert [set(r) for r in rows] == [{"file", "p_mm", "label", "threshold"}] * len(ct_files)
        p = np.array([r["p_mm"] for r in rows])
        np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)
        assert ((p >= 0) & (p <= 1)).all()
        assert [r["label"] for r in rows] == ["MM" if v >= THRESHOLD else "OMBT" for v in p]
        assert {r["label"] for r in rows} == {"MM", "OMBT"}
        assert all(r["threshold"] == THRESHOLD for r in rows)
    assert [r["file"] for r in by_path] == [str(f) for f in ct_files]
    assert [r["file"] for r in by_bytes] == [f"bytes[{i}]" for i in range(len(ct_files))]
    json.dumps(by_path)  # plain JSON types


def test_predict_hu_matches_keras_and_accepts_a_stack(predictor, ct_files):
    stack = np.stack([read_ct(f).hu[0] for f in ct_files])
    np.testing.assert_allclose(
        predictor.predict_hu(stack), _keras_p(predictor, stack), rtol=1e-5, atol=1e-6
    )
    assert predictor.predict_hu([]).shape == (0,)


def test_bad_items_get_error_rows_and_the_good_ones_still_predict(predictor, ct_files, tmp_path):
    sources = [
        ct_files[0],
        write_mr(tmp_path / "mr.dcm").path,
        write_not_dicom(tmp_path / "notes.txt"),
        write_rgb(tmp_path / "rgb.dcm").path,
        tmp_path / "missing.dcm",
        b"\x00garbage" * 50,
        ct_files[1].read_bytes(),
    ]
    rows = predictor.predict_sources(sources)

    assert len(rows) == len(sources)
    errors = [r.get("error", "").split(":")[0] for r in rows]
    assert errors == [
        "",
        "modality_not_ct",
        "not_dicom",
        "colour_image",
        "unreadable",
        "not_dicom",
        "",
    ]
    for row in rows[1:-1]:
        assert set(row) == {"file", "error"}
    good = predictor.predict_sources([ct_files[0], ct_files[1]])
    assert [rows[0]["p_mm"], rows[-1]["p_mm"]] == pytest.approx([r["p_mm"] for r in good])


def test_base64_text_instead_of_the_file_gets_a_hint(predictor, ct_files):
    rows = predictor.predict_sources([base64.b64encode(ct_files[0].read_bytes()), b"junk"])
    assert rows[0]["error"].startswith("not_dicom: ")
    assert "base64-encoded DICOM file: decode them first" in rows[0]["error"]
    assert "base64" not in rows[1]["error"]


def test_multi_frame_file_gives_one_row_per_frame(predictor, tmp_path):
    written = write_multiframe(tmp_path / "multi.dcm", frames=3, intercept=-800)
    rows = predictor.predict_sources([written.path])
    assert [(r["file"], r["frame"]) for r in rows] == [(str(written.path), i) for i in range(3)]
    assert list(rows[0]) == ["file", "frame", "p_mm", "label", "threshold"]
    np.testing.assert_allclose(
        [r["p_mm"] for r in rows], _keras_p(predictor, written.hu), rtol=1e-5, atol=1e-6
    )


def test_folders_are_walked_and_batches_keep_the_order(predictor, ct_files, tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "PREDICT_BATCH", 2)
    folder = tmp_path / "study"
    for i, f in enumerate(ct_files):
        (folder / f"series{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"series{i % 2}" / f.name).write_bytes(f.read_bytes())
    write_not_dicom(folder / "series0" / "README")
    (folder / "series1" / "zz-gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (tmp_path / "empty").mkdir()

    rows = predictor.predict_sources([folder, tmp_path / "empty"], names=["study", "nothing"])

    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    )
    assert [r["file"] for r in rows] == [f"study/{f}" for f in files] + ["nothing"]
    assert "error" in rows[files.index("series0/README")]
    assert rows[files.index("series1/zz-gone.dcm")]["error"].startswith("unreadable:")
    assert rows[-1]["error"].startswith("unreadable: the folder holds no files")
    by_file = {r["file"]: r["p_mm"] for r in rows if "p_mm" in r}
    direct = predictor.predict_sources(ct_files)
    expected = {
        f"study/series{i % 2}/{f.name}": r["p_mm"]
        for i, (f, r) in enumerate(zip(ct_files, direct, strict=True))
    }
    assert by_file == pytest.approx(expected)


def test_items_over_the_size_limit_get_an_error_row(model_file, ct_files):
    small = Predictor.load(_spec(BACKBONE), [model_file], max_item_bytes=1024)
    rows = small.predict_sources([ct_files[0], ct_files[0].read_bytes()])
    assert all(
        r["error"].startswith("unreadable: ") and "over the limit" in r["error"] for r in rows
    )
    assert serving.MAX_ITEM_BYTES == 64 * 1024 * 1024


def test_a_frame_over_the_pixel_limit_gets_an_error_row(model_file, ct_files):
    strict = Predictor.load(_spec(BACKBONE), [model_file], max_frame_pixels=64 * 64 - 1)
    rows = strict.predict_sources([ct_files[0], ct_files[0].read_bytes()])
    assert all(r["error"].startswith("frame_too_large: ") for r in rows)
    assert "p_mm" not in rows[0]


def test_names_must_match_the_sources(predictor, ct_files):
    with pytest.raises(ValueError, match="2 names for 1 sources"):
        predictor.predict_sources(ct_files[:1], names=["a", "b"])


def test_an_ensemble_averages_its_members(predictor, ct_files):
    other = tiny_model(seed=2)
    ensemble = Predictor(_spec(BACKBONE, "VGG16"), [predictor.models[0], other])
    hu = [read_ct(f).hu[0] for f in ct_files]
    x = np.stack([model_input(h, WINDOWS, SIZE) for h in hu])
    expected = (
        keras.ops.convert_to_numpy(predictor.models[0](x))[:, 0]
        + keras.ops.convert_to_numpy(other(x))[:, 0]
    ) / 2
    np.testing.assert_allclose(ensemble.predict_hu(hu), expected, rtol=1e-5, atol=1e-6)


def test_models_that_do_not_fit_the_spec_are_refused(predictor):
    wrong_size = _spec(BACKBONE).model_copy(
        update={"members": (MemberSpec(backbone=BACKBONE, image_size=64, windows=WINDOWS),)}
    )
    with pytest.raises(ValueError, match=r"the spec says \(64, 64, 3\)"):
        Predictor(wrong_size, predictor.models)
    with pytest.raises(ValueError, match="1 models for 2 members"):
        Predictor(_spec(BACKBONE, BACKBONE), predictor.models)


def test_spec_round_trips_through_json_and_rejects_bad_input():
    spec = _spec(BACKBONE)
    text = spec.model_dump_json(indent=2)
    again = ServingSpec.from_json(text)
    assert again == spec
    assert (again.threshold, again.probability_key, again.negative_class) == (0.4, "p_mm", "OMBT")
    assert json.loads(text) == SPEC_ON_DISK  # what models logged before the pydantic model hold
    assert ServingSpec.from_json(json.dumps(SPEC_ON_DISK)) == spec
    older = {**SPEC_ON_DISK, "members": [{**SPEC_ON_DISK["members"][0]}]}
    del older["keras_backend"], older["members"][0]["crop"]
    assert ServingSpec.from_json(json.dumps(older)) == spec  # the defaults fill what is absent
    with pytest.raises(ValueError, match="format 2"):
        ServingSpec.from_json(json.dumps({**SPEC_ON_DISK, "format": 2}))
    with pytest.raises(ValueError, match="not a serving spec"):
        ServingSpec.from_json("{}")
    with pytest.raises(ValueError, match="3 channel windows"):
        ServingSpec.from_json(
            json.dumps({**SPEC_ON_DISK, "members": [{**older["members"][0], "windows": []}]})
        )
    fields = {"candidate": "x", "members": spec.members, "classes": CLASSES}
    with pytest.raises(ValueError, match="'slice' threshold"):
        ServingSpec(**fields, positive_class=POSITIVE, thresholds={"patient": 0.5})
    with pytest.raises(ValueError, match="two names including"):
        ServingSpec(
            **fields | {"classes": ("MM", "OMBT", "X")},
            positive_class=POSITIVE,
            thresholds={"slice": 0.5},
        )


def test_a_slice_with_an_impossible_rescale_gets_an_error_not_a_probability(predictor, tmp_path):
    bad = write_plain(tmp_path / "bad.dcm", slope=0.0).path
    rows = predictor.predict_sources([bad])
    assert "p_mm" not in rows[0] and rows[0]["error"].startswith("bad_rescale:")


@pytest.mark.parametrize(
    ("keyword", "value", "why"),
    [
        ("RescaleSlope", b"abc ", "RescaleSlope is not one number"),
        ("RescaleSlope", b"1\\2 ", "RescaleSlope is not one number"),
        ("RescaleIntercept", b"MRN12345", "RescaleIntercept is not one number"),
        ("RescaleSlope", b"1e-300", "RescaleSlope is 1e-300"),
        ("RescaleSlope", b"-1e-9 ", "RescaleSlope is -1e-09"),
        ("RescaleSlope", b"NaN ", "RescaleSlope is nan"),
    ],
)
def test_an_unusable_rescale_value_is_that_file_s_error_row_alone(
    predictor, ct_files, tmp_path, keyword, value, why
):
    bad = write_raw_attribute(tmp_path / "bad.dcm", keyword, value)

    rows = predictor.predict_sources([ct_files[0], bad, ct_files[1]])

    assert [r["file"] for r in rows] == [str(ct_files[0]), str(bad), str(ct_files[1])]
    assert set(rows[1]) == {"file", "error"} and rows[1]["error"].startswith("bad_rescale: ")
    assert why in rows[1]["error"] and "MRN" not in rows[1]["error"]
    good = predictor.predict_sources([ct_files[0], ct_files[1]])
    assert [rows[0]["p_mm"], rows[2]["p_mm"]] == pytest.approx([r["p_mm"] for r in good])


def test_the_smallest_slope_kept_still_spans_air_to_water(predictor, tmp_path):
    """A slope just above the floor keeps its file; one just below is refused."""
    floor = 1000 / 2**16
    kept = write_plain(tmp_path / "kept.dcm", slope=floor * 1.01, intercept=-20).path
    refused = write_plain(tmp_path / "refused.dcm", slope=floor * 0.99, intercept=-20).path
    rows = predictor.predict_sources([kept, refused])
    assert "error" not in rows[0] and rows[1]["error"].startswith("bad_rescale: RescaleSlope is")


def test_a_failure_no_reject_reason_foresees_is_an_error_row_naming_its_type_only(
    predictor, ct_files
):
    rows = predictor.predict_sources([ct_files[0], "scan/with\x00nul.dcm", ct_files[1]])
    assert [("error" in r) for r in rows] == [False, True, False]
    assert rows[1]["error"] == (
        "unreadable: unexpected ValueError while reading it; check the file opens in a DICOM "
        "viewer, and report it if it does"
    )


def test_items_found_unusable_before_reading_get_their_own_error_row(predictor, ct_files):
    early = serving.DicomRejected(serving.RejectReason.NOT_DICOM, "row 1 holds text")
    rows = predictor.predict_sources([ct_files[0], early], ["good.dcm", "row-1"])
    assert rows[0]["file"] == "good.dcm" and "error" not in rows[0]
    assert rows[1] == {"file": "row-1", "error": "not_dicom: row 1 holds text"}


def _series(folder, n: int, uid: str, seed: int = 0, prefix: str = "") -> None:
    """n CT files of one series (SeriesInstanceUID `uid`) in `folder`."""
    for i in range(n):
        path = write_plain(folder / f"{prefix}{i}.dcm", seed=seed + i, intercept=-1024 + 250 * i)
        ds = pydicom.dcmread(path.path)
        ds.SeriesInstanceUID = uid
        ds.save_as(path.path)


def test_per_series_is_the_mean_slice_probability_at_the_patient_threshold(predictor, tmp_path):
    study = tmp_path / "ROE_RICHARD"
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in (11, 22, 33, 44)]
    _series(study / "one", 3, uids[0])
    _series(study / "two", 2, uids[1], seed=5)
    write_not_dicom(study / "two" / "notes.txt")
    _series(study / "both", 2, uids[2], seed=8)
    _series(study / "both", 1, uids[3], prefix="b")
    write_not_dicom(study / "empty" / "notes.txt")

    rows = {r["series"]: r for r in predictor.predict_series([study])}

    one = rows[str(study / "one")]
    per_slice = [r["p_mm"] for r in predictor.predict_sources([study / "one"])]
    assert one["p_mm"] == pytest.approx(np.mean(per_slice))
    assert (one["threshold"], one["n_slices"], one["n_rejected"]) == (0.4, 3, 0)
    assert one["label"] == (POSITIVE if one["p_mm"] >= 0.4 else CLASSES[1])
    assert (rows[str(study / "two")]["n_slices"], rows[str(study / "two")]["n_rejected"]) == (2, 1)
    both = [rows[f"{study / 'both'} (series {k})"]["n_slices"] for k in (1, 2)]
    assert sorted(both) == [1, 2]
    empty = rows[str(study / "empty")]
    assert (empty["n_slices"], empty["n_rejected"]) == (0, 1) and "error" in empty
    assert not any(uid in json.dumps(list(rows.values())) for uid in uids)


def test_a_fifo_among_the_files_is_answered_at_once_with_its_own_error(
    predictor, ct_files, tmp_path
):
    # predict and serving open only regular files: a FIFO would block the read forever
    os.mkfifo(tmp_path / "pipe.dcm")
    (tmp_path / "link.dcm").symlink_to(tmp_path / "pipe.dcm")
    rows = predictor.predict_sources([tmp_path / "pipe.dcm", ct_files[0], tmp_path / "link.dcm"])

    assert [r.get("error", "").split(":")[0] for r in rows] == [
        "not_regular_file",
        "",
        "not_regular_file",
    ]
    assert 0.0 <= rows[1]["p_mm"] <= 1.0
