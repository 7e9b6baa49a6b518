"""Metrics with confidence intervals, selection, Grad-CAM, leakage and the study report."""
