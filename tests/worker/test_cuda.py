"""The GPU path as the worker runs it (`Models.forward`: pinned memory, fp16 autocast) gives
the CPU's answers: a tiny model on noise, and the shipped model on real X-rays: the label,
the etiology, the scope verdict and the heatmap. Skipped where torch sees no CUDA device;
`bench/gpu_check.sh` runs them on a GPU host with `ml bench` and the pipeline bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support import REPO_ROOT

pytestmark = pytest.mark.skipif("not __import__('torch').cuda.is_available()",
                                reason="needs a CUDA GPU")

SHIPPED = REPO_ROOT / "ml" / "weights" / "multi.pt"


def _both(checkpoint: Path, batch: object) -> tuple[list, list]:
    import torch

    from ml.predictor import Predictor
    from worker.runtime import Models

    cpu = Predictor.from_checkpoint(checkpoint, device="cpu")
    gpu = Predictor.from_checkpoint(checkpoint, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    cpu_preds = Models(cpu, None, torch.device("cpu"), 0).forward(cpu, batch, True)
    gpu_preds = Models(gpu, None, torch.device("cuda"), 0).forward(gpu, batch, True)
    return cpu_preds, gpu_preds


def test_cuda_forward_uses_mixed_precision_and_matches_cpu(tiny_checkpoint: Path) -> None:
    import torch

    batch = torch.randn(4, 1, 64, 64)
    cpu_preds, gpu_preds = _both(tiny_checkpoint, batch)
    for a, b in zip(cpu_preds, gpu_preds, strict=True):
        assert abs(a.score - b.score) < 2e-2  # fp16 autocast
        assert b.heatmap is not None and b.heatmap.shape == (64, 64)


def test_cuda_forward_of_shipped_model_gives_the_cpu_answers_on_real_xrays(
        kermany_images: dict[str, list[Path]]) -> None:
    import torch

    from ml.checkpoint import load_checkpoint
    from ml.preprocess import preprocess

    paths = kermany_images["normal"][:24] + kermany_images["pneumonia"][:24]
    spec = load_checkpoint(SHIPPED)[1]["preprocessing"]
    batch = torch.stack([preprocess(p, spec) for p in paths])
    cpu_preds, gpu_preds = _both(SHIPPED, batch)
    for path, a, b in zip(paths, cpu_preds, gpu_preds, strict=True):
        assert abs(a.score - b.score) < 2e-2, path.name
        if abs(a.score - a.threshold) > 2e-2:  # fp16 may move a score that sits on the line
            assert a.label == b.label, path.name
        assert a.etiology is not None and b.etiology is not None
        for cls, p in a.etiology.probabilities.items():
            assert abs(p - b.etiology.probabilities[cls]) < 2e-2, (path.name, cls)
        assert a.scope is not None and b.scope is not None
        assert a.scope.p_in_scope is not None and b.scope.p_in_scope is not None
        assert abs(a.scope.p_in_scope - b.scope.p_in_scope) < 2e-2, path.name
        assert a.heatmap is not None and b.heatmap is not None
        assert b.heatmap.shape == a.heatmap.shape
        corr = np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1]
        assert corr > 0.98, (path.name, corr)
