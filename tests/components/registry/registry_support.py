"""What the registry tests share besides fixtures: the candidate's thresholds, Keras's own
probabilities to compare with, and the command line run in this process."""

import contextlib
import io
from pathlib import Path

import numpy as np

from components.training.backbones import load_model
from myelomet.cli import main
from tests.model_factory import BACKBONE, keras_probability

THRESHOLDS = {"slice": 0.4, "patient": 0.35}


def keras_p(models_dir: Path, hu_slices) -> np.ndarray:
    return keras_probability(load_model(models_dir / BACKBONE / "model.keras"), hu_slices)


def run_cli(params: Path, *args: str) -> tuple[int, str, str]:
    """`myelomet --params PARAMS ARGS...` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--params", str(params), *args])
    return code, out.getvalue(), err.getvalue()
