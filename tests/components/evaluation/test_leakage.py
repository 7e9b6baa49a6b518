"""The leakage stage switched off still leaves the outputs DVC expects, empty."""

import pandas as pd
import yaml

from components.config import load_config
from components.data.split import SPLIT_COLUMNS
from components.evaluation.leakage import run_leakage


def test_disabled_leakage_leaves_empty_outputs_for_dvc(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"leakage": {"enabled": False}}))
    cfg = load_config(tmp_path / "params.yaml")
    stale = cfg.path(cfg.leakage.models_out) / "VGG16"
    stale.mkdir(parents=True)
    (stale / "predictions.csv").write_text("from an earlier run\n")
    lines: list[str] = []

    assert run_leakage(cfg, tmp_path / "params.yaml", lines.append) is None

    assert list(cfg.path(cfg.leakage.models_out).iterdir()) == []
    split = pd.read_csv(cfg.path(cfg.leakage.split_out))
    assert list(split.columns) == SPLIT_COLUMNS and split.empty
    assert lines == []
