"""Cross-validation folds as training and evaluation see them (params `split.folds`).

With `split.folds: k` the split CSV holds k folds in long form. Each fold trains and is
evaluated as a study of its own: its single split is written beside its models
(`<models_out>/fold-<f>/split.csv`, so a fold's folder says exactly what it was trained on),
and `fold_config` points a copy of the configuration at that split and folder. Everything
that trains or scores one split then runs unchanged on a fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components import atomic
from components.config import Config
from components.data.split import fold_numbers, fold_view

FOLD_SPLIT_FILE = "split.csv"


@dataclass(frozen=True)
class Fold:
    """One fold: its number and the configuration that trains and scores it."""

    number: int
    cfg: Config

    @property
    def label(self) -> str:
        return fold_label(self.number)


def fold_label(number: int) -> str:
    """A fold's folder name and prefix in result keys: `fold-<number>`."""
    return f"fold-{number}"


def fold_config(cfg: Config, number: int) -> Config:
    """`cfg` narrowed to one fold: its split file and models folder, a single split."""
    folder = Path(cfg.training.models_out) / fold_label(number)
    return cfg.model_copy(
        update={
            "split": cfg.split.model_copy(
                update={"out": (folder / FOLD_SPLIT_FILE).as_posix(), "folds": 0}
            ),
            "training": cfg.training.model_copy(update={"models_out": folder.as_posix()}),
        }
    )


def _write_if_changed(text: str, path: Path) -> None:
    """Write the CSV text atomically, and not at all when the file already holds it (its
    hash keys the fold's trained models: an unchanged fold must keep its models)."""
    if path.is_file() and path.read_text() == text:
        return
    atomic.write_text(path, text)


def _fold_texts(cfg: Config) -> dict[int, str]:
    """Each fold's split as CSV text, from the split CSV; empty for a single split.

    Raises:
        FileNotFoundError: no split CSV; run `myelomet split`.
        ValueError: params split.folds and the split CSV disagree; rerun `myelomet split`.
    """
    if not cfg.split.folds:
        return {}
    path = cfg.path(cfg.split.out)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `myelomet split` first")
    split = pd.read_csv(path, dtype={"image_id": str, "patient": str, "label": str})
    numbers = fold_numbers(split)
    if numbers != list(range(cfg.split.folds)):
        raise ValueError(
            f"{path} holds folds {numbers}, params split.folds is {cfg.split.folds}; "
            "rerun `myelomet split`"
        )
    return {n: fold_view(split, n).to_csv(index=False) for n in numbers}


def cv_folds(cfg: Config) -> list[Fold]:
    """The folds of the split CSV, each fold's split written beside its models; empty for a
    single split (params split.folds 0).

    Raises:
        FileNotFoundError, ValueError: as `_fold_texts`.
    """
    folds = []
    for number, text in _fold_texts(cfg).items():
        narrowed = fold_config(cfg, number)
        _write_if_changed(text, narrowed.path(narrowed.split.out))
        folds.append(Fold(number, narrowed))
    return folds


def existing_folds(cfg: Config) -> list[Fold]:
    """The folds as training wrote them (`cv_folds`), for evaluation, which must score
    exactly what was trained on the split it is given.

    Raises:
        FileNotFoundError: the split CSV or a fold's split is missing.
        ValueError: a fold's split is not the split CSV's (it was split again since
            training); rerun `myelomet train`.
    """
    folds = []
    for number, text in _fold_texts(cfg).items():
        fold = Fold(number, fold_config(cfg, number))
        path = fold.cfg.path(fold.cfg.split.out)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `myelomet train` first")
        if path.read_text() != text:
            raise ValueError(
                f"{path} is not fold {number} of {cfg.path(cfg.split.out)}: its models were "
                "trained on an earlier split; rerun `myelomet train`"
            )
        folds.append(fold)
    return folds
