"""The published numbers of the study this project reproduces, shown beside ours."""

from __future__ import annotations

# Table 2 of Şimşek MK, Çetinoğlu YK, Bırcan R, Balcı A. Differentiating multiple myeloma and
# osteolytic bone metastasis on spinal CT scan: a comprehensive study using convolutional
# neural network. Harran Üniv Tıp Fak Derg 2025;22(1):1-7, doi:10.35440/hutfd.1563046.
# Test set of 300 images drawn at random from all slices (a patient's slices in both train
# and test), no stated positive class or threshold, no intervals, no AUC value. Percentages
# are written here as fractions; F1 and kappa as printed.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "DenseNet121": {
        "sensitivity": 0.7989,
        "specificity": 0.9127,
        "ppv": 0.9267,
        "npv": 0.7667,
        "accuracy": 0.8467,
        "f1": 0.858,
        "kappa": 0.693,
    },
    "DenseNet169": {
        "sensitivity": 0.8086,
        "specificity": 0.8623,
        "ppv": 0.8733,
        "npv": 0.7933,
        "accuracy": 0.8333,
        "f1": 0.8397,
        "kappa": 0.667,
    },
    "EfficientNetB0": {
        "sensitivity": 0.7846,
        "specificity": 0.7176,
        "ppv": 0.6800,
        "npv": 0.8133,
        "accuracy": 0.7467,
        "f1": 0.7286,
        "kappa": 0.493,
    },
    "MobileNet": {
        "sensitivity": 0.8428,
        "specificity": 0.8865,
        "ppv": 0.8933,
        "npv": 0.8333,
        "accuracy": 0.8633,
        "f1": 0.8673,
        "kappa": 0.7227,
    },
    "MobileNetV2": {
        "sensitivity": 0.8393,
        "specificity": 0.9318,
        "ppv": 0.9400,
        "npv": 0.8200,
        "accuracy": 0.8800,
        "f1": 0.8868,
        "kappa": 0.760,
    },
    "VGG16": {
        "sensitivity": 0.8103,
        "specificity": 0.9286,
        "ppv": 0.9400,
        "npv": 0.7800,
        "accuracy": 0.8600,
        "f1": 0.8704,
        "kappa": 0.720,
    },
    "Xception": {
        "sensitivity": 0.6959,
        "specificity": 0.8585,
        "ppv": 0.9000,
        "npv": 0.6067,
        "accuracy": 0.7533,
        "f1": 0.7849,
        "kappa": 0.507,
    },
}
PAPER_CITATION = (
    "Şimşek MK, Çetinoğlu YK, Bırcan R, Balcı A. Harran Üniv Tıp Fak Derg 2025;22(1):1-7, "
    "doi:10.35440/hutfd.1563046"
)
