"""The model-input half of the preprocessing path shared by training, evaluation and serving.

Everything that turns bytes into a model input is ``ml.decode.decode_image`` (torch-free:
float32 grayscale in [0, 1]) followed by ``to_model_tensor`` here (resized, normalised
tensor), so training and serving cannot drift apart. The training Dataset (``ml.data``) calls
exactly these functions. The decoding names are re-exported from here for existing callers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.decode import (
    DICOM_METADATA_KEYS,
    MAX_PIXELS,
    WORKING_COPY_QUALITY,
    WORKING_COPY_SIDE,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    needs_working_copy,
    sniff_format,
    working_copy_jpeg,
    working_copy_pixels,
)

__all__ = [
    "DICOM_METADATA_KEYS", "MAX_PIXELS", "WORKING_COPY_QUALITY", "WORKING_COPY_SIDE",
    "DecodedImage", "ImageDecodeError", "decode_image", "needs_working_copy", "normalize",
    "preprocess", "resize_pixels", "sniff_format", "spec_values", "to_model_tensor",
    "working_copy_jpeg", "working_copy_pixels",
]


# --------------------------------------------------------------------------------------------
# Tensor conversion
# --------------------------------------------------------------------------------------------


def resize_pixels(pixels: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize a HxW [0,1] image to size x size (float32 tensor), antialiased.

    The aspect ratio is *not* preserved: the training JPEGs were squashed to 224x224 from their
    original aspect, so squashing here reproduces the training distribution.
    """
    t = (
        torch.as_tensor(np.asarray(pixels, dtype=np.float32))
        if not isinstance(pixels, torch.Tensor)
        else pixels.float()
    )
    if t.ndim != 2:
        raise ValueError(f"expected HxW grayscale pixels, got shape {tuple(t.shape)}")
    if tuple(t.shape) == (size, size):
        return t.clone()
    out = F.interpolate(
        t[None, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0, 0].clamp_(0.0, 1.0)


def normalize(
    t: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels: int
) -> torch.Tensor:
    """(…, 1, H, W) or (1, H, W) in [0,1] -> (…, channels, H, W) normalised."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if t.shape[-3] == 1 and channels == 3:
        # ImageNet-style models expect RGB: a radiograph is gray, so repeat it.
        t = t.expand(*t.shape[:-3], 3, *t.shape[-2:])
    m = torch.as_tensor(list(mean), dtype=t.dtype, device=t.device)
    s = torch.as_tensor(list(std), dtype=t.dtype, device=t.device)
    if m.numel() == 1 and channels == 3:
        m, s = m.repeat(3), s.repeat(3)
    if m.numel() != channels or s.numel() != channels:
        raise ValueError("mean/std must have one value per channel (or a single value)")
    return (t - m.view(-1, 1, 1)) / s.view(-1, 1, 1)


def to_model_tensor(
    pixels: np.ndarray | torch.Tensor,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 1,
) -> torch.Tensor:
    """float32 HxW [0,1] -> (channels, input_size, input_size) normalised float32 tensor."""
    resized = resize_pixels(pixels, int(input_size))
    return normalize(resized[None], mean, std, int(channels)).contiguous()


def spec_values(spec: Mapping[str, Any]) -> tuple[int, list[float], list[float], int]:
    """Unpack a checkpoint 'preprocessing' section with validation."""
    try:
        size = int(spec["input_size"])
        mean = [float(v) for v in spec["mean"]]
        std = [float(v) for v in spec["std"]]
        channels = int(spec.get("channels", len(mean)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"invalid preprocessing spec {dict(spec)!r}: {exc}") from exc
    return size, mean, std, channels


def preprocess(source: str | Path | bytes | np.ndarray, spec: Mapping[str, Any]) -> torch.Tensor:
    """decode_image + to_model_tensor using a checkpoint's preprocessing section.

    ``source`` may also be an already-decoded HxW float array in [0, 1].
    """
    size, mean, std, channels = spec_values(spec)
    pixels = source if isinstance(source, np.ndarray) else decode_image(source).pixels
    return to_model_tensor(pixels, size, mean, std, channels)
