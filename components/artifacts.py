"""The names other code and other tools rely on: the files each stage writes, the
probability column, and the exit codes of a training process. A leaf: it imports nothing.
"""

from __future__ import annotations

# ingest.out
MANIFEST_FILE = "manifest.csv"
REJECTS_FILE = "rejects.csv"
SLICES_DIR = "slices"

# training.models_out/<backbone>/
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training_curves.png"
PREDICTIONS_FILE = "predictions.csv"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
CHECKPOINT_DIR = "checkpoint"
# training.models_out/: the study's MLflow parent run
STUDY_FILE = "study.json"

# evaluation.reports_out/ and validation.docs_out/
EVALUATION_METRICS_FILE = "metrics.json"
COMPARISONS_FILE = "comparisons.csv"
TRAINING_SUMMARY_FILE = "train.json"
STUDY_PAGE = "study.html"
VALIDATION_PAGE = "index.html"

# Exit codes of a backbone's training process (`python -m components.training.worker`).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_DATA = 4


def probability_column(positive_class: str) -> str:
    """Name of the predicted-probability column (e.g. p_mm) of predictions and answers."""
    return f"p_{positive_class.lower()}"
