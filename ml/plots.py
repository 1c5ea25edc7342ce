"""Figures: ROC, precision-recall and confusion matrix of an evaluation (``save_plots``), and
the training log with its loss/AUC curves (``write_history``). matplotlib runs on the Agg
backend and is imported only when a figure is drawn: serving never pays for it."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ml.decision import decide

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend: imported when a figure is drawn, never on import
    of this module, and without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    """Lay out, write and close the figure (a training draws one every epoch: none is kept)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def save_plots(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    out_dir: str | Path,
    prefix: str = "",
) -> list[Path]:
    """ROC, precision-recall and confusion-matrix PNGs (matplotlib Agg)."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    labels = np.asarray(labels, dtype=int)
    normal = classes.index("normal")
    y_pos = (labels != normal).astype(int)
    # The product's rule and score (ml.decision): the ROC point is where the model decides.
    pred_lbl, score = decide(np.asarray(probs), normal, threshold)
    paths: list[Path] = []
    if 0 < y_pos.sum() < len(y_pos):
        fpr, tpr, _ = roc_curve(y_pos, score)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"AUC={roc_auc_score(y_pos, score):.3f}")
        pred = pred_lbl != normal
        ax.scatter(
            [1 - ((~pred) & (y_pos == 0)).sum() / max((y_pos == 0).sum(), 1)],
            [(pred & (y_pos == 1)).sum() / max(y_pos.sum(), 1)],
            color="red",
            zorder=3,
            label=f"threshold {threshold:.3f}",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (pneumonia vs normal)")
        ax.legend(loc="lower right")
        paths.append(_save(fig, out_dir / f"{prefix}roc.png", dpi=110))

        prec, rec, _ = precision_recall_curve(y_pos, score)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(rec, prec, label=f"AP={average_precision_score(y_pos, score):.3f}")
        ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall")
        ax.legend(loc="lower left")
        paths.append(_save(fig, out_dir / f"{prefix}pr.png", dpi=110))

    cm = confusion_matrix(labels, pred_lbl, labels=list(range(len(classes))))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    paths.append(_save(fig, out_dir / f"{prefix}confusion.png", dpi=110))
    return paths


def plot_history(history: Sequence[dict[str, float]], path: Path) -> None:
    """Training and validation loss, validation ROC AUC and accuracy per epoch."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(ep, [h["train_loss"] for h in history], label="train loss")
    axes[0].plot(ep, [h["val_loss"] for h in history], label="val loss")
    axes[0].set(xlabel="epoch", ylabel="loss")
    axes[0].legend()
    axes[1].plot(ep, [h["val_roc_auc"] for h in history], label="val ROC AUC")
    axes[1].plot(ep, [h["val_accuracy"] for h in history], label="val accuracy (argmax)")
    axes[1].set(xlabel="epoch", ylim=(0.5, 1.0))
    axes[1].legend(loc="lower right")
    _save(fig, path, dpi=100)


def write_history(history: Sequence[dict[str, float]], log_dir: Path) -> None:
    """``history.json``, ``history.csv`` and ``curves.png`` in ``log_dir`` (rewritten every
    epoch, so a long run can be watched)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "history.json").write_text(json.dumps(list(history), indent=2) + "\n")
    with open(log_dir / "history.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    plot_history(history, log_dir / "curves.png")


def plot_comparison(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``python -m ml compare``: validation AUC, training time and inference speed per
    architecture."""
    plt = _pyplot()
    names = [r["arch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].bar(names, [r["roc_auc"] or 0 for r in rows], color="tab:blue")
    aucs = [r["roc_auc"] or 0.0 for r in rows]
    axes[0].set(title="val ROC AUC", ylim=(max(0.0, min(aucs) - 0.05), 1.0))
    axes[1].bar(names, [r["train_seconds"] for r in rows], color="tab:orange")
    axes[1].set(title="training time (s)")
    axes[2].bar(names, [r["infer_img_s"] for r in rows], color="tab:green")
    axes[2].set(title="inference img/s (CPU, bs 32)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    _save(fig, path, dpi=100)
