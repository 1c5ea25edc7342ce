"""Device selection, in one place: CUDA when available, else the CPU."""

from __future__ import annotations

import torch


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given ("cpu", "cuda", "cuda:1"), else CUDA if available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
