from pathlib import Path

import pytest
import yaml

from components.config import SplitConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_parse_and_resolve_paths_from_root():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.root == REPO
    assert cfg.path(cfg.split.out) == REPO / "data/splits/split.csv"
    assert cfg.positive_class in cfg.classes


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"split": {"train": 0.7, "val": 0.2, "test": 0.2}}, "sum to 1"),
        ({"positive_class": "XX"}, "positive_class"),
        ({"input": {"mode": "grey", "grey_window": "lung"}}, "grey_window"),
        ({"synthetic": {"slices_min": 9, "slices_max": 3}}, "slices_min"),
        ({"splitt": {}}, "splitt"),
        ({"training": {"overrides": {"VGG19": {"epochs": 3}}}}, "overrides.VGG19: unknown"),
        ({"training": {"overrides": {"VGG16": {"seed": 3}}}}, r"\['seed'\] cannot differ"),
        ({"training": {"overrides": {"VGG16": {"epochs": 0}}}}, "epochs"),
        ({"evaluation": {"select_metric": "patient_acu"}}, "(?s)select_metric.*e.g. 'patient_auc'"),
        ({"ingest": {"max_frame_pixels": 0}}, "max_frame_pixels"),
        ({"split": {"folds": 1}}, "split.folds must be 0 .* or at least 3 .*got 1"),
        ({"split": {"folds": 2}}, "split.folds must be 0 .* or at least 3 .*got 2"),
        ({"split": {"folds": -5}}, "split.folds must be 0 .* or at least 3 .*got -5"),
        ({"split": {"folds": 5, "mode": "image"}}, "split.folds 5 needs split.mode patient"),
    ],
)
def test_bad_params_fail_with_a_message_naming_the_key(tmp_path, data, message):
    with pytest.raises(ValueError, match=message) as caught:
        load_config(_write(tmp_path, data))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("training:\n  learning_rate: .inf\n", "training.learning_rate is inf"),
        ("input:\n  windows:\n    bone: {center: .nan, width: 1800}\n", "bone.center is nan"),
        ("training:\n  overrides:\n    VGG16: {learning_rate: -.inf}\n", "VGG16.learning_rate"),
        ("validation:\n  bone_fraction: [0.01, .NaN]\n", r"validation.bone_fraction\[1\] is nan"),
    ],
)
def test_non_finite_numbers_are_refused_in_one_line(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{key}.*give a finite number") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="finite number"):
        SplitConfig(train=float("nan"))


def test_missing_params_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="--params"):
        load_config(tmp_path / "nope.yaml")


def test_a_backbone_override_changes_that_backbone_only(tmp_path):
    overrides = {"VGG16": {"scratch_learning_rate": 1e-4, "epochs": 3}}
    cfg = load_config(_write(tmp_path, {"training": {"epochs": 6, "overrides": overrides}}))
    vgg = cfg.training.for_backbone("VGG16")
    assert (vgg.scratch_learning_rate, vgg.epochs, vgg.overrides) == (1e-4, 3, {})
    other = cfg.training.for_backbone("MobileNet")
    assert (other.scratch_learning_rate, other.epochs) == (cfg.training.scratch_learning_rate, 6)


@pytest.mark.parametrize(
    ("text", "where"),
    [("training:\n  epochs: [3\n", ":3:1:"), ("training:\n\tepochs: 3\n", ":2:1:")],
)
def test_a_malformed_params_file_names_line_and_column(tmp_path, text, where):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="not valid YAML") as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}{where}" in message and "\n" not in message


def test_an_error_inside_a_backbone_override_names_the_override(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("training:\n  overrides:\n    VGG16: {epochs: 0}\n")
    with pytest.raises(ValueError, match=r"training\.overrides\.VGG16: epochs: "):
        load_config(path)


def test_view_fractions_are_the_fractions_or_one_fold_s_shares(tmp_path):
    single = load_config(_write(tmp_path, {"split": {"train": 0.7, "val": 0.1, "test": 0.2}}))
    assert single.split.view_fractions() == single.split.fractions()
    assert single.split.folds == 0
    cv = load_config(_write(tmp_path, {"split": {"folds": 5}})).split
    assert cv.view_fractions() == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2})
    assert SplitConfig(folds=3).view_fractions() == pytest.approx(
        dict.fromkeys(cv.fractions(), 1 / 3)
    )
