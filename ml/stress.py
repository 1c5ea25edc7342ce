"""The stress test: a checkpoint on its own patient-level validation split, clean and under
the perturbations of ``ml.multitask.STRESS`` (exposure, contrast, framing, mirroring, blur),
at its stored operating point. Works for single-task and multi-head checkpoints alike, so
the shipped model and its predecessors are compared on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.cam import edge_band_shares
from ml.data import discover, label_index, split_by_patient
from ml.metrics import compute_metrics
from ml.multitask import STRESS
from ml.predictor import Predictor
from ml.preprocess import decode_image, normalize, resize_pixels


def validation_images(predictor: Predictor, data: str | Path, seed: int | None = None,
                      val_fraction: float | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The checkpoint's validation split (its stored seed and fraction unless given), decoded
    at its input size: (N,1,S,S) in [0,1] and binary labels."""
    split = predictor.meta.get("data", {})
    split = split.get("paediatric", split)
    seed = int(seed if seed is not None else split.get("split_seed", 42))
    fraction = float(val_fraction if val_fraction is not None else split.get("val_fraction", 0.15))
    records = [r for r in discover(data) if label_index(r.label, "binary") is not None]
    _, val = split_by_patient(records, fraction, seed)
    images = torch.stack([resize_pixels(decode_image(r.path).pixels, predictor.input_size)
                          for r in val])
    labels = np.array([label_index(r.label, "binary") for r in val])
    return images.unsqueeze(1), labels


@torch.inference_mode()
def stress_test(checkpoint: str | Path, data: str | Path, threads: int | None = None,
                seed: int | None = None) -> dict[str, dict[str, Any]]:
    """Pneumonia-vs-normal metrics per perturbation (and the out-of-scope rate for
    multi-head checkpoints)."""
    pred = Predictor.from_checkpoint(checkpoint, threads=threads, optimize=False)
    images, labels = validation_images(pred, data, seed)
    rows: dict[str, dict[str, Any]] = {}
    for name, perturb in {"none": None, **STRESS}.items():
        x = images if perturb is None else perturb(images)
        x = normalize(x, pred.mean, pred.std, pred.channels)
        outs = [pred.model(x[i : i + 128].to(pred.device))[1].float().cpu()
                for i in range(0, len(x), 128)]
        logits = torch.cat(outs)
        probs = pred.calibrated(logits)
        # The "any pneumonia" view of the head (etiology: 1 - P(normal)), as the product decides.
        binary = np.stack([probs[:, 0], 1.0 - probs[:, 0]], axis=1)
        m = compute_metrics(binary, labels, ["normal", "pneumonia"], pred.threshold)
        row = {k: m[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")}
        scopes = pred._scopes(logits, None, len(logits))
        if scopes:
            row["out_of_scope_rate"] = float(np.mean([not s.in_scope for s in scopes]))
        rows[name] = row
    return rows


@torch.inference_mode()
def heatmap_framing(checkpoint: str | Path, data: str | Path, threads: int | None = None,
                    seed: int | None = None, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Where the served heatmaps put their weight on the clean validation split, per predicted
    class of the primary head: the mean share in the top and bottom sixth of the image (neck,
    upper abdomen) and the share of heatmaps that peak there. The framing shortcut the first
    model showed (normal drawn from neck and abdomen) reads as a share above uniform's 1/3."""
    pred = Predictor.from_checkpoint(checkpoint, threads=threads)
    images, _ = validation_images(pred, data, seed)
    x = normalize(images, pred.mean, pred.std, pred.channels)
    preds = [p for i in range(0, len(x), batch_size)
             for p in pred.predict_tensors(x[i : i + batch_size], with_cam=True)]
    labels = np.array([p.label for p in preds])
    shares = edge_band_shares(np.stack([p.heatmap for p in preds]))  # type: ignore[misc]
    out: dict[str, dict[str, Any]] = {}
    for cls in pred.classes:
        sel = labels == cls
        if not sel.any():
            continue
        top, bottom = shares["top"][sel], shares["bottom"][sel]
        out[cls] = {"n": int(sel.sum()), "top_share": float(top.mean()),
                    "bottom_share": float(bottom.mean()),
                    "edge_share": float((top + bottom).mean()),
                    "peak_at_edge_rate": float(shares["peak_at_edge"][sel].mean())}
    return out


def format_framing(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| predicted | n | weight in top sixth | bottom sixth | both (uniform 0.333) "
             "| peak there |", "|---|---|---|---|---|---|"]
    for cls, r in rows.items():
        lines.append(f"| {cls} | {r['n']} | {r['top_share']:.3f} | {r['bottom_share']:.3f} | "
                     f"{r['edge_share']:.3f} | {r['peak_at_edge_rate']:.3f} |")
    return "\n".join(lines)


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    keys = ["roc_auc", "accuracy", "sensitivity", "specificity"]
    if any("out_of_scope_rate" in r for r in rows.values()):
        keys.append("out_of_scope_rate")
    lines = ["| perturbation | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, row in rows.items():
        cells = [f"{row[k]:.3f}" if row.get(k) is not None else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
