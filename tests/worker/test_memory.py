"""Memory stays flat over many batches with heatmaps (plain CAM and Grad-CAM), the way the
worker runs them. bench/memory.py measures a real worker over 2,000 X-rays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support import rss_mb


@pytest.mark.parametrize("arch", ["pneumonet_small", "mobilenet_v3_small"])  # CAM, Grad-CAM
def test_forward_with_cam_and_overlay_do_not_leak(arch: str, tmp_path: Path) -> None:
    import torch

    from ml.cam import overlay_png
    from ml.checkpoint import save_checkpoint
    from ml.models import arch_channels, build_model
    from ml.predictor import Predictor
    from worker.runtime import Models

    torch.manual_seed(0)
    channels = arch_channels(arch)
    path = save_checkpoint(tmp_path / "m.pt", build_model(arch, 2), {
        "arch": arch, "task": "binary", "classes": ["normal", "pneumonia"],
        "preprocessing": {"input_size": 64, "mean": [0.5] * channels, "std": [0.25] * channels,
                          "channels": channels},
        "threshold": 0.5, "temperature": 1.0, "name": "leak-test", "version": "0",
    })
    predictor = Predictor.from_checkpoint(path, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops on a shared CPU: one thread is fastest
    models = Models(binary=predictor, etiology=None, device=torch.device("cpu"), pid=0)
    pixels = np.random.default_rng(0).random((96, 96), dtype=np.float32)
    batch = torch.randn(8, channels, 64, 64)

    def run(n: int) -> None:
        for _ in range(n):
            for pred in models.forward(predictor, batch, with_cam=True):
                assert pred.heatmap is not None
                overlay_png(pixels, pred.heatmap, fmt="jpeg")

    try:
        run(30)  # warm-up: allocator pools, lazy initialisation
        warm = rss_mb()
        run(120)  # 960 images with heatmaps
        growth = rss_mb() - warm
    finally:
        torch.set_num_threads(threads)
    assert growth < 15, f"RSS grew {growth:.1f} MB over 960 images ({arch})"
