"""ml.metrics: metrics against hand counts, CIs, ECE."""

from __future__ import annotations

import numpy as np
import pytest

from ml.metrics import (
    bootstrap_ci,
    compute_metrics,
    expected_calibration_error,
    predict_labels,
)


def test_binary_metrics_match_hand_counts() -> None:
    probs1 = np.array([0.9, 0.8, 0.3, 0.6, 0.1, 0.2, 0.7, 0.05])
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    probs = np.stack([1 - probs1, probs1], 1)
    m = compute_metrics(probs, labels, ["normal", "pneumonia"], threshold=0.5)
    # predictions: 1 1 0 1 0 0 1 0 -> tp=3 fn=1 tn=3 fp=1
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75) and m["precision"] == pytest.approx(0.75)
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["n"] == 8 and m["threshold"] == 0.5


def test_etiology_decision_rule() -> None:
    classes = ["normal", "bacterial", "viral"]
    probs = np.array([[0.5, 0.3, 0.2], [0.7, 0.1, 0.2], [0.1, 0.2, 0.7]])
    # threshold on 1 - P(normal): 0.5, 0.3, 0.9
    assert predict_labels(probs, classes, 0.4).tolist() == [1, 0, 2]
    assert predict_labels(probs, classes, 0.2).tolist() == [1, 2, 2]
    m = compute_metrics(probs, np.array([1, 0, 2]), classes, 0.4)
    assert m["accuracy"] == 1.0 and "macro_f1" in m


def test_bootstrap_ci_brackets_point_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    p1 = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 400), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    point = compute_metrics(probs, labels, ["normal", "pneumonia"], 0.5)
    ci = bootstrap_ci(probs, labels, ["normal", "pneumonia"], 0.5, n_boot=200)
    for k in ("accuracy", "sensitivity", "roc_auc"):
        lo, hi = ci[k]
        assert lo <= point[k] <= hi and hi - lo < 0.2


def test_ece() -> None:
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=20000) < conf  # perfectly calibrated
    labels = np.where(correct, 1, 0)
    probs = np.stack([1 - conf, conf], 1)
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = np.stack([np.zeros_like(conf), np.ones_like(conf)], 1)
    assert expected_calibration_error(overconfident, labels) > 0.2
