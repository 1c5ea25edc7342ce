"""Checkpoint format: one file per model, loadable with ``torch.load(weights_only=True)``.

The file is a dict of tensors and plain Python types only (no pickled classes), so loading a
checkpoint cannot execute code. Layout::

    {"format_version": 1, "state_dict": {...tensors...}, "meta": {...plain types...}}

``meta`` keys: arch, task, classes, preprocessing {input_size, mean, std, channels},
threshold, temperature, operating_point, data {train/val summaries, split seed, ...},
validation (metrics + CIs), name, version, created_at, command, training_seconds, ...
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ml.models import CamModel, build_model

FORMAT_VERSION = 1
REQUIRED_META = (
    "arch",
    "task",
    "classes",
    "preprocessing",
    "threshold",
    "temperature",
    "name",
    "version",
)


class CheckpointError(ValueError):
    pass


def _plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, Paths to plain Python (weights_only-safe)."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    # Exact builtin types only: subclasses (e.g. torch.__version__ is a TorchVersion(str))
    # would be pickled as their class and rejected by weights_only loading.
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata missing {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full_meta = dict(meta)
    full_meta.setdefault("created_at", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    full_meta["format_version"] = FORMAT_VERSION
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format_version": FORMAT_VERSION, "state_dict": state, "meta": _plain(full_meta)}
    # Write to a temp file then rename, so a worker never loads a half-written checkpoint.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    try:
        # Fail at save time, not in production, if anything unsafe slipped into the payload.
        torch.load(tmp, map_location="cpu", weights_only=True)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (state_dict, meta) with weights_only=True; validates the format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, not a torch file, or an unsafe pickle
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise CheckpointError(f"{path} is not a pneumonia-model checkpoint")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format_version {version!r}")
    meta = payload["meta"]
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: metadata missing {missing}")
    return payload["state_dict"], meta


def output_size(meta: Mapping[str, Any]) -> int:
    """Width of the model's output: all heads of a multi-head model, else its classes."""
    heads = meta.get("heads")
    if meta.get("task") == "multi" and heads:
        return sum(len(h["classes"]) for h in heads.values())
    return len(meta["classes"])


def model_from_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
) -> tuple[CamModel, dict[str, Any]]:
    state, meta = load_checkpoint(path, map_location)
    model = build_model(meta["arch"], output_size(meta), pretrained=False)
    model.load_state_dict(state)
    model.eval()
    return model, meta
