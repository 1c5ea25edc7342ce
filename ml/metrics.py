"""Metrics of calibrated probabilities against labels: point estimates, bootstrap confidence
intervals, expected calibration error and the one-line-per-metric summary. Pure functions of
arrays (no model, no files), shared by training, checkpoint evaluation and the stress test.

For both tasks "positive" means *any pneumonia*: the binary metrics (sensitivity, specificity,
ROC AUC at the stored threshold, ...) are computed on P(pneumonia) = 1 - P(normal). For the
etiology task the 3-class accuracy, macro ROC AUC and per-class report are added.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from ml.calibration import positive_score
from ml.decision import decide


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def predict_labels(probs: np.ndarray, classes: Sequence[str], threshold: float) -> np.ndarray:
    """The product's decision rule (``ml.decision.decide``, shared with ml.predictor)."""
    return decide(np.asarray(probs), list(classes).index("normal"), threshold)[0]


def _decisions(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probs, labels, pneumonia truth, pneumonia score, predicted class, predicted pneumonia)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    normal = list(classes).index("normal")
    pred = predict_labels(probs, list(classes), threshold)
    return (probs, labels, (labels != normal).astype(int), positive_score(probs, list(classes)),
            pred, (pred != normal).astype(int))


def _safe(fn: Any, *args: Any, **kw: Any) -> float | None:
    try:
        v = float(fn(*args, **kw))
    except ValueError:
        return None
    return v if np.isfinite(v) else None


CI_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")


def headline_metrics(
    y_pos: np.ndarray, pred_pos: np.ndarray, labels: np.ndarray, pred: np.ndarray,
    score: np.ndarray,
) -> dict[str, float | None]:
    """The headline metrics (``CI_KEYS``) of one sample of decisions; None where undefined.

    The point estimate and every bootstrap resample go through this one function, so an
    interval is always the interval of the number printed beside it. Counts for the metrics
    at the threshold (fast enough for 1000 resamples), scikit-learn for the ranking ones.
    """
    n = len(labels)
    tp = int(((y_pos == 1) & (pred_pos == 1)).sum())
    fn = int(((y_pos == 1) & (pred_pos == 0)).sum())
    tn = int(((y_pos == 0) & (pred_pos == 0)).sum())
    fp = int(((y_pos == 0) & (pred_pos == 1)).sum())
    both_classes = 0 < tp + fn < n
    return {
        "accuracy": float((pred == labels).mean()) if n else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None,
        "roc_auc": float(roc_auc_score(y_pos, score)) if both_classes else None,
        "pr_auc": float(average_precision_score(y_pos, score)) if both_classes else None,
    }


def auc_or_chance(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or 0.5 (chance) when only one class is present: a selection score that is
    always defined."""
    positive = np.asarray(positive)
    return float(roc_auc_score(positive, scores)) if 0 < positive.sum() < len(positive) else 0.5


def macro_roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro-averaged one-vs-rest ROC AUC over the classes (every class must be present)."""
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Point estimates. ``labels`` are class indices of ``classes``."""
    probs, labels, y_pos, score, pred, pred_pos = _decisions(probs, labels, classes, threshold)
    headline = headline_metrics(y_pos, pred_pos, labels, pred, score)
    if len(labels):
        # Where a point estimate is undefined it takes scikit-learn's value (precision and F1
        # with no positive call: 0; AP of a one-class set); a resample is dropped instead.
        for k in ("precision", "f1"):
            headline[k] = 0.0 if headline[k] is None else headline[k]
        if headline["pr_auc"] is None:
            headline["pr_auc"] = _safe(average_precision_score, y_pos, score)
    out: dict[str, Any] = {
        "n": len(labels),
        "threshold": float(threshold),
        **headline,
        "ece": expected_calibration_error(probs, labels) if len(labels) else None,
        "confusion_matrix": confusion_matrix(
            labels, pred, labels=list(range(len(classes)))
        ).tolist(),
        "classes": classes,
    }
    if len(classes) > 2:
        out["pneumonia_accuracy"] = float((pred_pos == y_pos).mean())
        out["macro_f1"] = _safe(f1_score, labels, pred, average="macro", zero_division=0)
        present = np.unique(labels)
        if len(present) == len(classes):
            out["roc_auc_macro_ovr"] = _safe(macro_roc_auc, labels, probs)
        out["recall_per_class"] = {
            c: _safe(recall_score, labels == i, pred == i, zero_division=0)
            for i, c in enumerate(classes)
        }
    out["report"] = classification_report(
        labels,
        pred,
        labels=list(range(len(classes))),
        target_names=classes,
        output_dict=True,
        zero_division=0,
    )
    return out


def bootstrap_ci(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap CIs (resampling images) for the headline metrics.

    Note: images of one patient are correlated, so image-level resampling slightly
    understates the width; acceptable for a model card, stated in docs.
    """
    probs, labels, y_pos, score, pred, pred_pos = _decisions(probs, labels, classes, threshold)
    rng = np.random.default_rng(seed)
    n = len(labels)
    samples: dict[str, list[float]] = {k: [] for k in CI_KEYS}
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        resample = headline_metrics(y_pos[i], pred_pos[i], labels[i], pred[i], score[i])
        for k, v in resample.items():
            if v is not None:
                samples[k].append(v)
    out: dict[str, list[float] | None] = {}
    for k, v in samples.items():
        out[k] = (
            [float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))]
            if len(v) >= 10
            else None
        )
    return out


def full_report(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    rep = compute_metrics(probs, labels, classes, threshold)
    rep["ci95"] = bootstrap_ci(probs, labels, classes, threshold, n_boot=n_boot, seed=seed)
    return rep


def format_summary(rep: dict[str, Any]) -> str:
    """Human-readable one-metric-per-line summary with CIs when present."""
    ci = rep.get("ci95") or {}
    lines = []
    keys = ["n", "threshold", *CI_KEYS, "ece", "macro_f1", "roc_auc_macro_ovr"]
    for k in keys:
        if k not in rep or rep[k] is None:
            continue
        v = rep[k]
        s = f"{v:.4f}" if isinstance(v, float) else str(v)
        if ci.get(k):
            s += f"  (95% CI {ci[k][0]:.3f}-{ci[k][1]:.3f})"
        lines.append(f"{k:>18}: {s}")
    lines.append(
        f"{'confusion_matrix':>18}: {rep['confusion_matrix']} (rows=true "
        f"{rep['classes']}, cols=predicted)"
    )
    scope = rep.get("scope")
    if scope:
        lines.append(
            f"{'out of scope':>18}: {scope['out_of_scope']} of {scope['n']} "
            f"({scope['out_of_scope_rate']:.1%}) {scope['reasons']} (metrics include them)"
        )
    return "\n".join(lines)
