"""Metrics (scikit-learn), bootstrap confidence intervals, plots and JSON reports.

For both tasks "positive" means *any pneumonia*: the binary metrics (sensitivity, specificity,
ROC AUC at the stored threshold, ...) are computed on P(pneumonia) = 1 - P(normal). For the
etiology task the 3-class accuracy, macro ROC AUC and per-class report are added.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
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


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Point estimates. ``labels`` are class indices of ``classes``."""
    probs, labels, y_pos, score, pred, pred_pos = _decisions(probs, labels, classes, threshold)
    tn, fp, fn, tp = confusion_matrix(y_pos, pred_pos, labels=[0, 1]).ravel()
    out: dict[str, Any] = {
        "n": len(labels),
        "threshold": float(threshold),
        "accuracy": float((pred == labels).mean()) if len(labels) else None,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "precision": _safe(precision_score, y_pos, pred_pos, zero_division=0),
        "f1": _safe(f1_score, y_pos, pred_pos, zero_division=0),
        "roc_auc": _safe(roc_auc_score, y_pos, score),
        "pr_auc": _safe(average_precision_score, y_pos, score),
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
            out["roc_auc_macro_ovr"] = _safe(
                roc_auc_score, labels, probs, multi_class="ovr", average="macro"
            )
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


CI_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")


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
        yp, pp, yl, pl, sc = y_pos[i], pred_pos[i], labels[i], pred[i], score[i]
        tp = int(((yp == 1) & (pp == 1)).sum())
        fn = int(((yp == 1) & (pp == 0)).sum())
        tn = int(((yp == 0) & (pp == 0)).sum())
        fp = int(((yp == 0) & (pp == 1)).sum())
        samples["accuracy"].append(float((yl == pl).mean()))
        if tp + fn:
            samples["sensitivity"].append(tp / (tp + fn))
        if tn + fp:
            samples["specificity"].append(tn / (tn + fp))
        if tp + fp:
            samples["precision"].append(tp / (tp + fp))
        if 2 * tp + fp + fn:
            samples["f1"].append(2 * tp / (2 * tp + fp + fn))
        if 0 < yp.sum() < n:
            samples["roc_auc"].append(float(roc_auc_score(yp, sc)))
            samples["pr_auc"].append(float(average_precision_score(yp, sc)))
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


def save_plots(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    out_dir: str | Path,
    prefix: str = "",
) -> list[Path]:
    """ROC, precision-recall and confusion-matrix PNGs (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    labels = np.asarray(labels, dtype=int)
    y_pos = (labels != classes.index("normal")).astype(int)
    score = positive_score(np.asarray(probs), classes)
    paths: list[Path] = []
    if 0 < y_pos.sum() < len(y_pos):
        fpr, tpr, _ = roc_curve(y_pos, score)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"AUC={roc_auc_score(y_pos, score):.3f}")
        pred = score >= threshold
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
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}roc.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

        prec, rec, _ = precision_recall_curve(y_pos, score)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(rec, prec, label=f"AP={average_precision_score(y_pos, score):.3f}")
        ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall")
        ax.legend(loc="lower left")
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}pr.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    pred_lbl = predict_labels(np.asarray(probs), classes, threshold)
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
    fig.tight_layout()
    paths.append(out_dir / f"{prefix}confusion.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Checkpoint-level evaluation and site recalibration
# --------------------------------------------------------------------------------------------


def _eval_split(data: str | Path, split: str | None) -> str | tuple[str, ...] | None:
    """With a train/val/test layout evaluate on ``split`` (default "test")."""
    from ml.data import SPLIT_DIRS

    root = Path(data)
    if root.is_dir() and any((root / d).is_dir() for d in SPLIT_DIRS):
        return split or ("test" if (root / "test").is_dir() else None)
    return None


@dataclass
class CheckpointOutputs:
    """A checkpoint's outputs over a labelled folder, through the serving path."""

    probs: np.ndarray  # calibrated, the evaluated head
    logits: np.ndarray  # raw, the evaluated head
    labels: np.ndarray
    predictor: Any
    skipped: list[str]
    # Scope verdicts (multi-head checkpoints): per image, None for single-task models.
    scope: list[Any] = field(default_factory=list)


def checkpoint_probs(
    checkpoint: str | Path,
    data: str | Path,
    split: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    task: str | None = None,
) -> CheckpointOutputs:
    """Calibrated probabilities of ``task``'s head (default: the checkpoint's own task, or
    binary for a multi-head checkpoint) over a labelled folder/CSV.

    Images go through the serving path (decode_image -> to_model_tensor, DICOM attributes to
    the scope gate), not the training cache, so this measures exactly what the product
    computes.
    """
    import torch

    from ml.data import discover, label_index, task_records
    from ml.predictor import Predictor
    from ml.preprocess import ImageDecodeError, decode_image

    pred = Predictor.from_checkpoint(checkpoint, device=device, head=task)
    records = task_records(discover(data, split=_eval_split(data, split)), pred.task)
    if not records:
        raise ValueError(f"no labelled images for task {pred.task!r} under {data}")
    logits_all: list[torch.Tensor] = []
    labels: list[int] = []
    skipped: list[str] = []
    scope: list[Any] = []
    for start in range(0, len(records), batch_size):
        xs, metas = [], []
        for r in records[start : start + batch_size]:
            try:
                decoded = decode_image(r.path)
            except ImageDecodeError as exc:
                skipped.append(f"{r.path}: {exc}")
                continue
            xs.append(pred.to_tensor(decoded.pixels))
            metas.append(decoded.metadata)
            idx = label_index(r.label, pred.task)
            assert idx is not None
            labels.append(idx)
        if xs:
            with torch.inference_mode():
                _, logits = pred.model(torch.stack(xs).to(pred.device))
            logits_all.append(pred.head_logits(logits).float().cpu())
            scope.extend(pred._scopes(logits, metas, len(xs)))
    logits_t = torch.cat(logits_all)
    probs = torch.softmax(logits_t / pred.temperature, dim=1).numpy()
    return CheckpointOutputs(probs, logits_t.numpy(), np.asarray(labels), pred, skipped, scope)


def scope_summary(verdicts: Sequence[Any]) -> dict[str, Any] | None:
    """Out-of-scope rate and reasons over an evaluation (None for single-task models)."""
    if not verdicts:
        return None
    out = [v for v in verdicts if not v.in_scope]
    reasons: dict[str, int] = {}
    for v in out:
        reasons[v.reason] = reasons.get(v.reason, 0) + 1
    return {"n": len(verdicts), "out_of_scope": len(out),
            "out_of_scope_rate": len(out) / len(verdicts), "reasons": reasons}


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str | None = None,
    n_boot: int = 1000,
    plots_dir: str | Path | None = None,
    batch_size: int = 64,
    threshold: float | None = None,
    device: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Full metrics report of a checkpoint on labelled data at its stored threshold.

    The metrics are computed over *all* images, in scope or not (what the model would say
    if the gate did not hold it back); the gate's out-of-scope rate is reported beside them.
    """
    outputs = checkpoint_probs(checkpoint, data, split, batch_size, device, task)
    probs, labels, pred, skipped = (outputs.probs, outputs.labels, outputs.predictor,
                                    outputs.skipped)
    thr = pred.threshold if threshold is None else float(threshold)
    rep = compute_metrics(probs, labels, pred.classes, thr)
    if n_boot > 0:
        rep["ci95"] = bootstrap_ci(probs, labels, pred.classes, thr, n_boot=n_boot)
    rep.update(
        {
            "checkpoint": str(checkpoint),
            "model": pred.name,
            "version": pred.version,
            "task": pred.task,
            "data": str(data),
            "skipped": skipped,
            "scope": scope_summary(outputs.scope),
        }
    )
    if plots_dir:
        rep["plots"] = [str(p) for p in save_plots(probs, labels, pred.classes, thr, plots_dir)]
    return rep


def recalibrate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    sensitivity: float | None = None,
    fit_temperature_too: bool = True,
    task: str | None = None,
) -> dict[str, Any]:
    """Refit temperature (optional) and the operating threshold on a site's labelled images
    and write a new checkpoint; the weights are unchanged."""
    import datetime as dt

    from ml.calibration import apply_temperature, fit_temperature, threshold_for_sensitivity
    from ml.checkpoint import save_checkpoint

    outputs = checkpoint_probs(checkpoint, data, task=task)
    logits, labels, pred, skipped = (outputs.logits, outputs.labels, outputs.predictor,
                                     outputs.skipped)
    meta = dict(pred.meta)
    target = float(
        sensitivity
        if sensitivity is not None
        else (meta.get("operating_point") or {}).get("value", 0.95)
    )
    temperature = fit_temperature(logits, labels) if fit_temperature_too else pred.temperature
    probs = apply_temperature(logits, temperature)
    pos = labels != pred.classes.index("normal")
    if pos.sum() == 0 or (~pos).sum() == 0:
        raise ValueError("recalibration data must contain both normal and pneumonia images")
    threshold = threshold_for_sensitivity(positive_score(probs, pred.classes), pos, target)
    meta.update(
        {
            "threshold": threshold,
            "temperature": temperature,
            "operating_point": {
                **(meta.get("operating_point") or {}),
                "value": target,
                "chosen_on": f"site data {data}",
            },
            "calibration": {
                "data": str(data),
                "n": len(labels),
                "skipped": len(skipped),
                "previous_threshold": pred.threshold,
                "previous_temperature": pred.temperature,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "metrics": {
                    k: v
                    for k, v in compute_metrics(probs, labels, pred.classes, threshold).items()
                    if k != "report"
                },
            },
        }
    )
    if pred.multi:
        # The recalibrated head gets the new operating point; the top level mirrors binary's.
        heads = {k: dict(v) for k, v in meta["heads"].items()}
        heads[pred.head].update(threshold=threshold, temperature=temperature)
        meta["heads"] = heads
        if pred.head != "binary":
            meta["threshold"] = heads["binary"]["threshold"]
            meta["temperature"] = heads["binary"]["temperature"]
    meta.pop("created_at", None)
    save_checkpoint(out, pred.model.cpu(), meta)
    return meta
