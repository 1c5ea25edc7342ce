"""Post-hoc calibration: temperature scaling and operating-point threshold selection.

Both are fitted on the *validation* split (never on training data, where a network is
over-confident) and stored in the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(
    logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, max_iter: int = 200
) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017).

    A single scalar cannot change the ranking (AUC) nor the argmax, only the confidence.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or len(z) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # optimise log T: T > 0
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.exp().item())
    if not np.isfinite(t):
        return 1.0
    return float(np.clip(t, 0.05, 20.0))


def positive_score(probs: np.ndarray, classes: list[str]) -> np.ndarray:
    """Probability of "any pneumonia": P(pneumonia) for binary, 1 - P(normal) otherwise."""
    probs = np.asarray(probs, dtype=np.float64)
    if "normal" in classes:
        return 1.0 - probs[:, classes.index("normal")]
    return probs[:, -1]


def threshold_for_sensitivity(
    scores: np.ndarray, positive: np.ndarray, target: float = 0.95
) -> float:
    """Largest threshold t such that sensitivity (score >= t among positives) >= target.

    Taking the *largest* such t maximises specificity at the requested sensitivity. The
    threshold is placed half-way to the next lower positive score so that tiny numerical
    differences between training-time and serving-time scores do not flip a boundary case.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.sort(scores[np.asarray(positive, dtype=bool)])
    if len(pos) == 0:
        return 0.5
    # need at least ceil(target * n) positives at or above t
    n_keep = int(np.ceil(target * len(pos) - 1e-9))
    n_keep = min(max(n_keep, 1), len(pos))
    idx = len(pos) - n_keep  # pos[idx] is the smallest positive score still detected
    t = pos[idx]
    if idx > 0:
        t = 0.5 * (pos[idx - 1] + pos[idx]) if pos[idx - 1] < pos[idx] else t
    return float(np.clip(t, 1e-6, 1.0 - 1e-6))


def apply_temperature(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / float(temperature)
    return torch.softmax(z, dim=1).numpy()
