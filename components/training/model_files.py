"""The error for a saved model file that cannot be read. A module of its own, importing
nothing, so that serving on the ONNX engine names a damaged file without importing Keras."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A saved model that cannot be read: missing, truncated, or not a model of this project
    (a Keras archive, or an ONNX file onnxruntime refuses)."""
