"""The decision rule, in one place: evaluation, calibration and serving all call ``decide``.

An image is "pneumonia" when its pneumonia score reaches the operating threshold. The score is
``1 - P(normal)``: P(pneumonia) for the binary head, "any pneumonia" for the etiology head.
Above the threshold, the label is the most likely non-normal class (bacterial or viral).
"""

from __future__ import annotations

import numpy as np


def decide(probs: np.ndarray, normal: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(class index per row, pneumonia score per row) for calibrated (N, K) probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None]
    score = 1.0 - probs[:, normal]
    masked = probs.copy()
    masked[:, normal] = -np.inf
    labels = np.where(score >= threshold, masked.argmax(axis=1), normal)
    return labels.astype(int), score
