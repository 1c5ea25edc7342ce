"""Synthetic acquisition-shift stress test of a checkpoint on its own validation split.

Usage: python ml/reports/stress_test.py [CHECKPOINT] [DATA_DIR]
Re-creates the checkpoint's patient-level validation split (stored seed/fraction), applies
simple perturbations to the decoded images and reports metrics at the stored threshold.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ml import default_checkpoint
from ml.checkpoint import model_from_checkpoint
from ml.data import CachedImageDataset, discover, split_by_patient
from ml.evaluate import compute_metrics
from ml.preprocess import normalize


def _contrast(x: torch.Tensor, c: float) -> torch.Tensor:
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * c + m


PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "gamma 0.7 (brighter)": lambda x: x.pow(0.7),
    "gamma 1.4 (darker)": lambda x: x.pow(1.4),
    "contrast x0.7": lambda x: _contrast(x, 0.7),
    "contrast x1.3": lambda x: _contrast(x, 1.3),
    "blur (96px round trip)": lambda x: F.interpolate(
        F.interpolate(x, size=96, mode="bilinear", antialias=True),
        size=x.shape[-1],
        mode="bilinear",
    ),
    "zoom in (crop 83%)": lambda x: F.interpolate(
        x[:, :, 16:-16, 16:-16], size=x.shape[-1], mode="bilinear"
    ),
    "zoom out (black border)": lambda x: F.pad(
        F.interpolate(x, size=x.shape[-1] - 32, mode="bilinear", antialias=True), (16, 16, 16, 16)
    ),
    "horizontal flip": lambda x: x.flip(-1),
    "inverted grey scale": lambda x: 1 - x,
}


def main() -> None:
    ckpt = Path(sys.argv[1]) if len(sys.argv) > 1 else default_checkpoint("binary")
    data = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/kermany-cxr/train"
    torch.set_num_threads(1)
    model, meta = model_from_checkpoint(ckpt)
    spec, classes = meta["preprocessing"], meta["classes"]
    d = meta["data"]
    _, val = split_by_patient(discover(data), d["val_fraction"], d["split_seed"])
    ds = CachedImageDataset(val, meta["task"], spec["input_size"])
    labels = ds.labels.numpy()
    for name, fn in PERTURBATIONS.items():
        probs = []
        with torch.inference_mode():
            for s in range(0, len(ds), 128):
                x, _ = ds.batch(torch.arange(s, min(s + 128, len(ds))))
                x = normalize(fn(x).clamp(0, 1), spec["mean"], spec["std"], spec["channels"])
                probs.append(torch.softmax(model(x)[1] / meta["temperature"], 1))
        m = compute_metrics(torch.cat(probs).numpy(), labels, classes, meta["threshold"])
        print(
            f"{name:28s} auc {m['roc_auc']:.4f} acc {m['accuracy']:.3f} "
            f"sens {m['sensitivity']:.3f} spec {m['specificity']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
