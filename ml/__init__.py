"""Pneumonia detection models for paediatric chest X-rays (framework-agnostic: no Django).

Light on import on purpose (no torch here) so that web processes can read the constants
without loading PyTorch. Heavy names (Predictor, decode_image, ...) are imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TASKS = ("binary", "etiology")
# One multi-head network serves both tasks (and the scope gate); `--task` picks its head.
DEFAULT_CHECKPOINTS: dict[str, Path] = {
    "binary": WEIGHTS_DIR / "multi.pt",
    "etiology": WEIGHTS_DIR / "multi.pt",
}


def default_checkpoint(task: str = "binary") -> Path:
    """Path of the shipped checkpoint for ``task`` ("binary" or "etiology")."""
    try:
        return DEFAULT_CHECKPOINTS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}") from None


_LAZY = {
    "Predictor": "ml.predictor",
    "Prediction": "ml.predictor",
    "decode_image": "ml.decode",
    "DecodedImage": "ml.decode",
    "ImageDecodeError": "ml.decode",
    "to_model_tensor": "ml.preprocess",
    "preprocess": "ml.preprocess",
    "overlay_png": "ml.cam",
    "heatmap_png": "ml.cam",
    "bounding_box": "ml.cam",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ml' has no attribute {name!r}")


__all__ = ["DEFAULT_CHECKPOINTS", "TASKS", "WEIGHTS_DIR", "default_checkpoint", *_LAZY]
