"""ONNX files of a candidate's member models, exported and checked before they are registered.

Each member's `model.keras` is converted in a subprocess on the TensorFlow backend,
whatever backend this process runs (`onnx_convert`: a TF SavedModel, then tf2onnx at opset
17; a model trained on JAX loads there too). A file is kept only when onnxruntime's
probabilities on the project's validation slices, preprocessed as the Keras path does
(`dataset.model_input`, the member's size, windows and crop), are the Keras model's to
within TOLERANCE, with the same labels at the candidate's slice threshold. A member that
fails the export or the check is named in one line, and the candidate then gets no ONNX
file at all: a registered version holds ONNX for every member or for none.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components.artifacts import MANIFEST_FILE
from components.config import Config
from components.data.dataset import model_input
from components.registry.onnx_convert import one_line
from components.registry.serving import MemberSpec, ServingSpec
from components.training.loop import predict

if TYPE_CHECKING:
    import keras

ONNX_TAG = "onnx"
ONNX_CHECK_TAG = "onnx.check"
TOLERANCE = 1e-4
MAX_CHECK_SLICES = 64
SYNTHETIC_SLICES = 16
EXPORT_TIMEOUT_S = 600.0  # per member: Xception at 299 px took 88 s on 2 cores
_RUN_BATCH = 16
# TensorFlow's C++ log lines, absl's notice and tf2onnx's own INFO/WARNING log lines: the
# noise a failed export's stderr ends with, around the line that says why.
_NOISE = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages|To enable the following"
    r"|\d{4}-\d\d-\d\d [\d:,]+ - (DEBUG|INFO|WARNING) - |(DEBUG|INFO|WARNING):[\w.]+:)"
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckSlices:
    """The HU slices the ONNX files are checked on, and what they are (for messages)."""

    hu: tuple[np.ndarray, ...]
    source: str


def synthetic_slices(n: int = SYNTHETIC_SLICES, side: int = 64) -> CheckSlices:
    """Deterministic CT-like HU slices (stripes over -1000..1500 HU with noise), for a
    project without a validation split."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = []
    for i in range(n):
        level = -1000.0 + 2500.0 * i / max(n - 1, 1)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * ((i % 4 + 1) * xx + yy))
        hu = level * stripes + rng.normal(0.0, 150.0, (side, side))
        out.append(np.clip(hu, -1024, 3071).astype(np.int16))
    return CheckSlices(tuple(out), f"{n} synthetic slices")


def check_slices(cfg: Config, limit: int = MAX_CHECK_SLICES) -> CheckSlices:
    """Up to `limit` validation slices of the project's split (spread evenly over the val
    image_ids in order), as ingested; synthetic slices when there is no manifest or split.

    Raises:
        ValueError: the split names validation image_ids the manifest lacks.
        FileNotFoundError: a slice file is missing.
    """
    manifest = cfg.path(cfg.ingest.out) / MANIFEST_FILE
    split = cfg.path(cfg.split.out)
    if not (manifest.is_file() and split.is_file()):
        return synthetic_slices()
    rows = pd.read_csv(split, dtype=str)
    ids = sorted(set(rows.loc[rows["split"] == "val", "image_id"]))
    if not ids:
        return synthetic_slices()
    picked = np.unique(np.linspace(0, len(ids) - 1, min(limit, len(ids))).round().astype(int))
    files = pd.read_csv(manifest, usecols=["image_id", "file"], dtype=str).set_index("image_id")
    chosen = [ids[i] for i in picked]
    if not set(chosen) <= set(files.index):
        raise ValueError(
            f"{split}: validation image_ids missing from {manifest}; rerun `myelomet split`"
        )
    hu = tuple(np.load(manifest.parent / files.loc[i, "file"]) for i in chosen)
    return CheckSlices(hu, f"{len(hu)} validation slices")


def stderr_summary(stderr: str, returncode: int) -> str:
    """The last line of a failed subprocess' stderr that says something (not a log line of
    TensorFlow or tf2onnx, not a traceback's indented line), or its exit status."""
    for line in reversed(stderr.splitlines()):
        text = line.strip()
        if text and not line[0].isspace() and not _NOISE.match(text):
            return text[:300]
    if returncode < 0:
        return f"killed by signal {-returncode} (out of memory?)"
    return f"exit status {returncode}"


def export_onnx(
    model_files: Mapping[str, Path], out_dir: Path, timeout_s: float | None = None
) -> dict[str, Path | str]:
    """Convert the members' `model.keras` files to ONNX in one subprocess on TensorFlow.

    Args:
        model_files: member -> its model.keras.
        out_dir: where the ONNX files are written (created), `member-<i>.onnx`.
        timeout_s: for the whole subprocess; EXPORT_TIMEOUT_S per member when None.

    Returns:
        member -> its ONNX file, or one line saying why it has none. Nothing is checked yet
        (`check_onnx`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    members = list(model_files)
    targets = {m: out_dir / f"member-{i}.onnx" for i, m in enumerate(members)}
    report = out_dir / "onnx_convert.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "components.registry.onnx_convert", "--report", str(report)]
    for m in members:
        command += [str(Path(model_files[m]).resolve()), str(targets[m])]
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "",  # the export needs no GPU; leave it to this process
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
    }
    limit = timeout_s if timeout_s is not None else EXPORT_TIMEOUT_S * max(len(members), 1)
    try:
        done = subprocess.run(
            command, cwd=out_dir, env=env, capture_output=True, text=True, timeout=limit
        )
        failure = None if done.returncode == 0 else stderr_summary(done.stderr, done.returncode)
    except subprocess.TimeoutExpired:
        failure = f"the export took over {limit:g} s and was stopped"
    results: dict[str, str] = json.loads(report.read_text()) if report.is_file() else {}
    out: dict[str, Path | str] = {}
    for i, m in enumerate(members):
        result = results.get(str(i))
        if result == "ok" and targets[m].is_file():
            out[m] = targets[m]
        else:
            out[m] = f"export failed: {result or failure or 'no ONNX file was written'}"
    return out


@dataclass(frozen=True, eq=False)
class Check:
    """One member's check: the largest difference found, or why the file is refused, and
    the positive-class probabilities of both engines (for the candidate's mean)."""

    max_difference: float | None
    problem: str | None = None
    keras_p: np.ndarray | None = None
    onnx_p: np.ndarray | None = None


def check_onnx(
    onnx_file: Path,
    model: keras.Model,
    member: MemberSpec,
    positive: int,
    threshold: float,
    slices: CheckSlices,
) -> Check:
    """Compare onnxruntime (CPUExecutionProvider) on an ONNX file with the Keras model.

    Args:
        onnx_file: the exported file.
        model: the member's Keras model.
        member: its input size, windows and crop (the preprocessing of `model_input`).
        positive: the index of the positive class among the outputs.
        threshold: the candidate's slice threshold.
        slices: HU slices to compare on.

    Returns:
        The largest absolute difference of any class probability, and the problem when it
        is over TOLERANCE, a label at the threshold differs, or onnxruntime cannot run it.
    """
    import onnxruntime as ort

    x = np.stack(
        [model_input(hu, member.windows, member.image_size, member.crop) for hu in slices.hu]
    )
    expected = predict(model, x).astype(np.float64)
    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        got = np.concatenate(
            [
                np.asarray(session.run(None, {name: x[i : i + _RUN_BATCH]})[0])
                for i in range(0, len(x), _RUN_BATCH)
            ]
        ).astype(np.float64)
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        problem = " ".join(one_line(exc).split())
        return Check(None, f"onnxruntime cannot run the file ({problem})")
    if got.shape != expected.shape:
        return Check(None, f"outputs of shape {got.shape}, Keras' {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not math.isfinite(diff) or diff > TOLERANCE:
        return Check(
            diff,
            f"max difference {diff:.2g} to Keras on {slices.source} (limit {TOLERANCE:g})",
        )
    flips = _label_flips(expected[:, positive], got[:, positive], threshold)
    if flips:
        return Check(diff, f"{flips} on {slices.source}")
    return Check(diff, None, expected[:, positive], got[:, positive])


def _label_flips(keras_p: np.ndarray, onnx_p: np.ndarray, threshold: float) -> str | None:
    """`k of n labels at threshold t differ from Keras'`, or None when none does."""
    flips = int(np.sum((keras_p >= threshold) != (onnx_p >= threshold)))
    if not flips:
        return None
    return f"{flips} of {len(keras_p)} labels at threshold {threshold:g} differ from Keras'"


@dataclass(frozen=True)
class OnnxFiles:
    """A candidate's checked ONNX files: every member's, or none and why.

    Attributes:
        files: member -> its checked ONNX file; empty when any member failed.
        problem: one line naming each member that failed and why; None when all passed.
        check: what the check found when every member passed, e.g. `max difference 1.2e-07
            to Keras on 64 validation slices`; empty otherwise.
    """

    files: Mapping[str, Path] = field(default_factory=dict)
    problem: str | None = None
    check: str = ""

    @property
    def tags(self) -> dict[str, str]:
        """The `onnx` tag (`yes`, or `no: <why>`) and the `onnx.check` tag."""
        verdict = "yes" if self.problem is None else f"no: {self.problem}"
        return {ONNX_TAG: verdict, ONNX_CHECK_TAG: self.check or "none"}


def checked_onnx(
    spec: ServingSpec,
    models: Sequence[keras.Model],
    model_files: Sequence[Path],
    slices: CheckSlices,
    out_dir: Path,
    exported: Mapping[str, Path] | None = None,
) -> OnnxFiles:
    """Export the members of a candidate to ONNX and check each file against its model.

    Args:
        spec: the candidate's serving spec (members, classes, slice threshold).
        models: the members' loaded Keras models, in the order of spec.members.
        model_files: their model.keras files, in the same order.
        slices: what to check on (`check_slices`).
        out_dir: where the ONNX files are written.
        exported: member -> an ONNX file exported before, checked instead of exporting;
            None exports here.

    Returns:
        Every member's checked file, or none and the one line saying why (also logged as a
        warning).
    """
    members = [m.backbone for m in spec.members]
    if exported is None:
        found: Mapping[str, Path | str] = export_onnx(
            dict(zip(members, model_files, strict=True)), out_dir
        )
    else:
        found = {m: exported.get(m, "no ONNX file was given") for m in members}
    positive = spec.classes.index(spec.positive_class)
    problems: list[str] = []
    passed: list[Check] = []
    for member, model in zip(spec.members, models, strict=True):
        result = found[member.backbone]
        if isinstance(result, str):
            problems.append(f"{member.backbone}: {result}")
            continue
        check = check_onnx(Path(result), model, member, positive, spec.threshold, slices)
        if check.problem is not None:
            problems.append(f"{member.backbone}: {check.problem}")
        else:
            passed.append(check)
    if not problems and len(passed) > 1:  # the candidate answers the members' mean
        flips = _label_flips(
            np.mean([c.keras_p for c in passed], axis=0),
            np.mean([c.onnx_p for c in passed], axis=0),
            spec.threshold,
        )
        if flips:
            problems.append(f"{spec.candidate} (mean of the members): {flips} on {slices.source}")
    if problems:
        problem = "; ".join(problems)[:1000]
        _log.warning("onnx: %s", problem)
        return OnnxFiles({}, problem)
    files = {m: Path(found[m]) for m in members}  # every value is a Path here
    worst = max(float(c.max_difference or 0.0) for c in passed)
    return OnnxFiles(files, None, f"max difference {worst:.2g} to Keras on {slices.source}")
