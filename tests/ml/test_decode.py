"""ml.decode: torch-free decoding and working copies (the web tier's part of preprocessing)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.conftest import REPO_ROOT


def test_decoding_and_working_copies_do_not_load_torch() -> None:
    code = ("import sys, numpy as np; from ml.decode import decode_image, working_copy_jpeg; "
            "decode_image(working_copy_jpeg(np.random.default_rng(0).random((1200, 1100), "
            "dtype=np.float32))); print(sorted(m for m in sys.modules if m.startswith('torch')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == "[]"


def test_working_copy_filter_is_the_models_antialiased_bilinear_resize() -> None:
    """Pillow's filter (web tier) against torch's `antialias=True` (the model's resize): the
    8-bit working copies agree to within one grey level, on very few pixels."""
    import torch
    import torch.nn.functional as F

    from ml.decode import WORKING_COPY_SIDE, working_copy_pixels

    pixels = np.random.default_rng(1).random((1800, 1500), dtype=np.float32)
    copy = working_copy_pixels(pixels)
    size = (round(1800 * WORKING_COPY_SIDE / 1500), WORKING_COPY_SIDE)
    reference = F.interpolate(torch.from_numpy(pixels)[None, None], size=size, mode="bilinear",
                              align_corners=False, antialias=True)[0, 0]
    expected = (reference.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    assert copy.shape == expected.shape
    diff = np.abs(copy.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
