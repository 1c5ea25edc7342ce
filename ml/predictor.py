"""Serving-side inference: calibrated probabilities, thresholded label, CAM heatmap, bbox."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.cam import bounding_box, cam_from_features, compute_cams, upsample
from ml.checkpoint import model_from_checkpoint
from ml.preprocess import decode_image, spec_values, to_model_tensor

Source = str | Path | bytes | np.ndarray
Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # temperature-calibrated, sum to 1
    score: float  # P(pneumonia) for binary, 1 - P(normal) (= any pneumonia) for etiology
    threshold: float
    heatmap: np.ndarray | None = None  # float32 input_size x input_size in [0,1]
    bbox: tuple[float, float, float, float] | None = None  # normalised x0, y0, x1, y1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (without the heatmap array)."""
        return {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "score": self.score,
            "threshold": self.threshold,
            "bbox": list(self.bbox) if self.bbox else None,
        }


def default_threads() -> int:
    """Torch intra-op threads on CPU: PNEUMO_TORCH_THREADS, else min(4, cores).

    More threads than physical cores (or than the worker's share of them when several Celery
    processes run side by side) makes convolution slower, not faster.
    """
    env = os.environ.get("PNEUMO_TORCH_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, os.cpu_count() or 1))


def optimize_cpu_default() -> bool:
    """PNEUMO_OPTIMIZE_CPU=0 turns the optimised CPU forward pass off (default on)."""
    return os.environ.get("PNEUMO_OPTIMIZE_CPU", "1").strip().lower() not in ("0", "false", "no")


def cpu_runner(model: torch.nn.Module, channels: int, input_size: int) -> Runner | None:
    """The model's forward pass traced, frozen and optimised for CPU inference, or None.

    Two reasons, both measured (docs/benchmarks.md): the frozen graph folds batch norm into
    the convolutions and uses prepacked oneDNN kernels (~30 % faster here), and it runs the
    whole pass in C++ without taking the GIL between operators. An eager pass needs the GIL
    back after every operator, so any other Python thread of the worker (decoding the next
    batch, writing heatmaps) slowed it several-fold.

    TorchScript is deprecated upstream in favour of torch.compile / torch.export, which need a
    C++ toolchain and ~25 s per model at start-up here and still hand the GIL back between
    kernels. If a later torch drops or breaks it, we fall back to the eager model (logged):
    same results, only slower. Outputs are checked against the eager model before use.
    """
    example = torch.rand(2, channels, input_size, input_size)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notices, once per model load
            traced = torch.jit.trace(model.eval(), example)
            runner = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            expected, got = model(example), runner(example)
        for want, have in zip(expected, got, strict=True):
            if not torch.allclose(want, have, rtol=1e-3, atol=1e-4):
                raise ValueError("optimised outputs differ from the eager model's")
    except Exception as exc:  # any failure: the eager model is always correct
        logger.warning("Optimised CPU forward pass unavailable, using the eager model: %s", exc)
        return None
    return runner  # type: ignore[no-any-return]


class Predictor:
    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device | None = None,
        optimize: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.device = (
            torch.device(device)
            if device
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if self.device.type == "cpu":
            # `threads`: the caller's share of the cores (a worker pool process's).
            torch.set_num_threads(threads or default_threads())
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.name: str = str(meta["name"])
        self.version: str = str(meta["version"])
        self.task: str = str(meta["task"])
        self.classes: list[str] = list(meta["classes"])
        self.threshold: float = float(meta["threshold"])
        self.temperature: float = float(meta.get("temperature") or 1.0)
        self.spec: dict[str, Any] = dict(meta["preprocessing"])
        self.input_size, self.mean, self.std, self.channels = spec_values(self.spec)
        self._normal = self.classes.index("normal")
        # (features, logits) for a batch; plain-CAM models only (Grad-CAM needs the graph).
        self.runner: Runner | None = None
        if optimize is None:
            optimize = optimize_cpu_default()
        if optimize and self.device.type == "cpu" and self.model.linear is not None:
            self.runner = cpu_runner(self.model, self.channels, self.input_size)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        optimize: bool | None = None,
        threads: int | None = None,
    ) -> Predictor:
        model, meta = model_from_checkpoint(path, map_location="cpu")
        return cls(model, meta, device, optimize, threads=threads)

    # ---------------------------------------------------------------------------------------
    def to_tensor(self, source: Source) -> torch.Tensor:
        """Decode (if needed) and convert one input to a (C,S,S) model tensor."""
        if isinstance(source, np.ndarray):
            pixels = source.astype(np.float32) / 255.0 if source.dtype == np.uint8 else source
        else:
            pixels = decode_image(source).pixels
        return to_model_tensor(pixels, self.input_size, self.mean, self.std, self.channels)

    def predict(
        self, sources: Sequence[Source], with_cam: bool = True, batch_size: int = 32
    ) -> list[Prediction]:
        """Predict a list of paths / bytes / decoded HxW arrays (float [0,1] or uint8).

        Raises ml.preprocess.ImageDecodeError for an undecodable input.
        """
        out: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            batch = torch.stack([self.to_tensor(s) for s in chunk])
            out.extend(self.predict_tensors(batch, with_cam=with_cam))
        return out

    def decide(self, probs: np.ndarray) -> tuple[int, float]:
        """The decision rule: (class index, pneumonia score) for one calibrated prob vector."""
        score = float(1.0 - probs[self._normal])
        if score < self.threshold:
            return self._normal, score
        masked = probs.copy()
        masked[self._normal] = -1.0
        return int(masked.argmax()), score

    def predict_tensors(self, batch: torch.Tensor, with_cam: bool = True) -> list[Prediction]:
        """Predict an already preprocessed (B,C,S,S) batch (from ``to_model_tensor``)."""
        if batch.ndim == 3:
            batch = batch[None]
        x = batch.to(self.device, dtype=torch.float32)
        feats: torch.Tensor | None = None
        cams_raw: torch.Tensor | None = None
        if with_cam and self.model.linear is None:
            # Grad-CAM models: the forward pass that yields the logits also builds the graph.
            logits, cams_raw = compute_cams(self.model, x)
        else:
            with torch.inference_mode():
                # One forward pass; its features are reused for plain CAM below.
                feats, logits = (self.runner or self.model)(x)
        probs = torch.softmax(logits.float() / self.temperature, dim=1).cpu().numpy()
        decisions = [self.decide(p) for p in probs]
        cams = None
        if with_cam:
            idx = torch.tensor([d[0] for d in decisions], device=x.device)
            if feats is not None:
                with torch.inference_mode():
                    cams_raw = cam_from_features(feats, self.model.linear, idx)
            elif bool((idx != logits.argmax(1)).any()):
                # The thresholded label differs from the argmax: Grad-CAM for that class.
                _, cams_raw = compute_cams(self.model, x, idx)
            assert cams_raw is not None
            cams = upsample(cams_raw, self.input_size).cpu().numpy().astype(np.float32)
        results = []
        for i, (cls_idx, score) in enumerate(decisions):
            heat = cams[i] if cams is not None else None
            results.append(
                Prediction(
                    label=self.classes[cls_idx],
                    probabilities={
                        c: float(p) for c, p in zip(self.classes, probs[i], strict=True)
                    },
                    score=score,
                    threshold=self.threshold,
                    heatmap=heat,
                    bbox=bounding_box(heat) if heat is not None else None,
                )
            )
        return results
