"""Convert saved Keras models to ONNX, in a process of their own on the TensorFlow backend.

`python -m components.registry.onnx_convert --report REPORT.json MODEL.keras OUT.onnx ...`
loads each model, exports it as a TensorFlow SavedModel and converts that with tf2onnx's
command line (`tf2onnx.convert --saved-model DIR --opset 17 --output OUT.onnx`, its `main`
called here, so TensorFlow is imported once for all the models): the route that works for
all seven backbones, where Keras' `export(format="onnx")` fails on EfficientNetB0. The
report maps each model's position to `ok` or one line saying why it failed; the others are
still converted. `onnx_export.export_onnx` runs this and checks what it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

OPSET = 17
# The SavedModel route needs TensorFlow; a model trained on JAX loads there as well.
BACKEND = "tensorflow"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}"[:300] if lines else type(exc).__name__


@contextlib.contextmanager
def _argv(args: Sequence[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = list(args)
    try:
        yield
    finally:
        sys.argv = saved


def convert(model_file: Path, onnx_file: Path) -> None:
    """Export one `model.keras` as a SavedModel in a temporary folder, then to ONNX.

    Raises:
        ModelFileError: the model cannot be loaded.
        RuntimeError: tf2onnx ran but wrote no file.
        Exception: whatever Keras' export or tf2onnx raise.
    """
    import keras
    from tf2onnx import convert as tf2onnx_convert

    from components.training.backbones import load_model

    model = load_model(model_file)
    try:
        with tempfile.TemporaryDirectory(prefix="myelomet-savedmodel-") as tmp:
            saved = Path(tmp) / "saved_model"
            model.export(str(saved), format="tf_saved_model", verbose=False)
            args = ["--saved-model", str(saved), "--opset", str(OPSET), "--output", str(onnx_file)]
            with _argv(["tf2onnx.convert", *args]):
                tf2onnx_convert.main()
    finally:
        keras.backend.clear_session()
    if not onnx_file.is_file():
        raise RuntimeError(f"tf2onnx wrote no file at {onnx_file}")


def main(argv: Sequence[str] | None = None) -> int:
    """Convert every MODEL OUT pair; the report says which succeeded.

    Returns:
        0 (a model that fails is in the report), or 2 for arguments that are not pairs.
    """
    parser = argparse.ArgumentParser(prog="python -m components.registry.onnx_convert")
    parser.add_argument("--report", type=Path, required=True, help="JSON file to write")
    parser.add_argument("pairs", nargs="+", type=Path, help="MODEL.keras OUT.onnx, repeated")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give model files and their ONNX outputs in pairs: MODEL.keras OUT.onnx")
    os.environ["KERAS_BACKEND"] = BACKEND
    report: dict[str, str] = {}
    for i in range(0, len(args.pairs), 2):
        model_file, onnx_file = args.pairs[i], args.pairs[i + 1]
        try:
            convert(model_file, onnx_file)
            report[str(i // 2)] = "ok"
        except (Exception, SystemExit) as exc:  # tf2onnx's argument errors exit
            onnx_file.unlink(missing_ok=True)
            report[str(i // 2)] = one_line(exc)
        # written after each model, so that a crash still leaves what was done
        args.report.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
