"""Evaluation of a checkpoint on labelled images, through the serving path, and its
recalibration to a site (temperature and operating threshold refitted, weights unchanged).

The metrics themselves are ``ml.metrics``; the figures ``ml.plots``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.calibration import positive_score
from ml.metrics import bootstrap_ci, compute_metrics
from ml.plots import save_plots


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
    probs_all: list[np.ndarray] = []
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
            probs_all.append(pred.calibrated(logits))  # the serving calibration, unchanged
            scope.extend(pred._scopes(logits, metas, len(xs)))
    return CheckpointOutputs(np.concatenate(probs_all), torch.cat(logits_all).numpy(),
                             np.asarray(labels), pred, skipped, scope)


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
