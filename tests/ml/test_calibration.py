"""ml.calibration: temperature scaling and operating threshold."""

from __future__ import annotations

import numpy as np
import torch

from ml.calibration import (
    apply_temperature,
    fit_temperature,
    positive_score,
    threshold_for_sensitivity,
)


def test_temperature_recovers_known_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (4000, 3))
    probs = torch.softmax(torch.tensor(true_logits), 1).numpy()
    # sample one label per row from its categorical distribution (vectorised)
    labels = (rng.uniform(size=(len(probs), 1)) > probs.cumsum(1)).sum(1)
    t = fit_temperature(true_logits * 2.5, labels)  # a network 2.5x over-confident
    assert abs(t - 2.5) < 0.25
    np.testing.assert_allclose(apply_temperature(true_logits * 2.5, t).sum(1), 1.0, atol=1e-9)


def test_threshold_meets_sensitivity_and_is_largest() -> None:
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.beta(5, 2, 300), rng.beta(2, 5, 200)])
    positive = np.concatenate([np.ones(300, bool), np.zeros(200, bool)])
    for target in (0.8, 0.9, 0.95, 0.99):
        t = threshold_for_sensitivity(scores, positive, target)
        sens = (scores[positive] >= t).mean()
        assert sens >= target
        # raising the threshold past the next positive score would break the target
        above = np.sort(scores[positive][scores[positive] >= t])[0]
        assert (scores[positive] > above).mean() < target


def test_positive_score() -> None:
    p = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(positive_score(p, ["normal", "bacterial", "viral"]), [0.8, 0.1])
    b = np.array([[0.5, 0.5], [0.95, 0.05]])
    np.testing.assert_allclose(positive_score(b, ["normal", "pneumonia"]), [0.5, 0.05])
