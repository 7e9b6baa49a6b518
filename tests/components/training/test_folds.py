"""Cross-validation folds as training sees them: each fold's split written beside its
models, rewritten only when it changes, and refused when params and the split disagree."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import load_config
from components.data.split import split_manifest
from components.training.folds import cv_folds, existing_folds, fold_config


def _project(root: Path, folds: int, written: int | None = None) -> Path:
    """params.yaml with `split.folds: folds` and a split CSV of `written` folds."""
    params = {"split": {"folds": folds}, "training": {"models_out": "models"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = pd.DataFrame(
        [
            {"image_id": f"{label}{p}-{s}", "patient": f"{label}{p}", "label": label}
            for label in ("MM", "OMBT")
            for p in range(6)
            for s in range(2)
        ]
    )
    split = split_manifest(manifest, {"train": 0.6, "val": 0.2, "test": 0.2}, 0, folds=written)
    out = root / "data/splits/split.csv"
    out.parent.mkdir(parents=True)
    split.to_csv(out, index=False)
    return root / "params.yaml"


def test_each_fold_gets_its_own_split_and_models_folder(tmp_path):
    cfg = load_config(_project(tmp_path, 3, 3))
    folds = cv_folds(cfg)
    assert [f.number for f in folds] == [0, 1, 2]
    whole = pd.read_csv(tmp_path / "data/splits/split.csv")
    for fold in folds:
        path = tmp_path / "models" / fold.label / "split.csv"
        assert fold.cfg.path(fold.cfg.split.out) == path
        assert fold.cfg.path(fold.cfg.training.models_out) == tmp_path / "models" / fold.label
        assert fold.cfg.split.folds == 0
        view = pd.read_csv(path)
        expected = whole[whole["fold"] == fold.number].drop(columns="fold")
        pd.testing.assert_frame_equal(view, expected.reset_index(drop=True))
    assert [f.number for f in existing_folds(cfg)] == [0, 1, 2]


def test_an_unchanged_fold_split_is_not_rewritten(tmp_path):
    cfg = load_config(_project(tmp_path, 3, 3))
    cv_folds(cfg)
    path = tmp_path / "models/fold-1/split.csv"
    stamp = path.stat().st_mtime_ns
    cv_folds(cfg)
    assert path.stat().st_mtime_ns == stamp
    assert not list(path.parent.glob("*.tmp"))


def test_params_and_split_must_agree(tmp_path):
    with pytest.raises(ValueError, match=r"holds folds \[0, 1, 2\], params split.folds is 4"):
        cv_folds(load_config(_project(tmp_path, 4, 3)))


def test_a_single_split_has_no_folds(tmp_path):
    cfg = load_config(_project(tmp_path, 0, 0))
    assert cv_folds(cfg) == [] == existing_folds(cfg)
    assert not (tmp_path / "models").exists()
    assert fold_config(cfg, 2).training.models_out == "models/fold-2"


def test_evaluation_needs_the_folds_training_wrote(tmp_path):
    cfg = load_config(_project(tmp_path, 3, 3))
    with pytest.raises(
        FileNotFoundError, match="fold-0/split.csv: not found; run `myelomet train`"
    ):
        existing_folds(cfg)


def test_evaluation_refuses_folds_trained_on_an_earlier_split(tmp_path):
    cfg = load_config(_project(tmp_path, 3, 3))
    cv_folds(cfg)
    stale = tmp_path / "models/fold-2/split.csv"
    stale.write_text(stale.read_text().replace(",test", ",val", 1))
    with pytest.raises(ValueError, match="fold-2/split.csv is not fold 2 of .*rerun `myelomet"):
        existing_folds(cfg)
