"""Serving-side inference: calibrated probabilities, thresholded label, CAM heatmap, bbox."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.cam import bounding_box, cam_from_features, compute_cams, upsample
from ml.checkpoint import model_from_checkpoint
from ml.decision import decide
from ml.device import select_device
from ml.preprocess import decode_image, spec_values, to_model_tensor
from ml.scope import ScopeVerdict, scope_verdict

Source = str | Path | bytes | np.ndarray
Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

logger = logging.getLogger(__name__)

# The heatmap's box is found on about this many cells a side: the CAM comes from a 6x6 grid, so
# a finer grid only costs time (labelling 192x192 was a third of the per-image work beside
# the forward pass).
BOX_GRID = 48


@dataclass
class HeadPrediction:
    """A second head's answer from the same pass (the etiology of a multi-head model)."""

    label: str
    probabilities: dict[str, float]
    score: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probabilities": dict(self.probabilities),
                "score": self.score, "threshold": self.threshold}


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # temperature-calibrated, sum to 1
    score: float  # P(pneumonia) for binary, 1 - P(normal) (= any pneumonia) for etiology
    threshold: float
    heatmap: np.ndarray | None = None  # float32 input_size x input_size in [0,1]
    bbox: tuple[float, float, float, float] | None = None  # normalised x0, y0, x1, y1
    etiology: HeadPrediction | None = None  # multi-head models: from the same pass
    scope: ScopeVerdict | None = None  # multi-head models: the scope gate's verdict

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (without the heatmap array)."""
        out: dict[str, Any] = {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "score": self.score,
            "threshold": self.threshold,
            "bbox": list(self.bbox) if self.bbox else None,
        }
        if self.etiology is not None:
            out["etiology"] = self.etiology.to_dict()
        if self.scope is not None:
            out["scope"] = self.scope.to_dict()
        return out


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
    """Serving for one checkpoint. A multi-head checkpoint (``meta["task"] == "multi"``) gives
    every answer from one forward pass: ``head`` ("binary" by default, or "etiology") is the
    primary answer with the heatmap; the etiology and the scope verdict come along."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device | None = None,
        optimize: bool | None = None,
        threads: int | None = None,
        head: str | None = None,
    ) -> None:
        self.device = select_device(device)
        if self.device.type == "cpu":
            # `threads`: the caller's share of the cores (a worker pool process's).
            torch.set_num_threads(threads or default_threads())
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.name: str = str(meta["name"])
        self.version: str = str(meta["version"])
        self.multi = meta.get("task") == "multi"
        heads: dict[str, Any] = dict(meta.get("heads") or {})
        self.head: str = (head or "binary") if self.multi else str(meta["task"])
        if self.multi and self.head not in heads:
            raise ValueError(f"checkpoint has no {self.head!r} head; heads: {sorted(heads)}")
        # A single-task checkpoint answers its own task whatever `head` asks for.
        spec = heads.get(self.head) or meta
        self.task: str = self.head
        self.classes: list[str] = list(spec["classes"])
        self.threshold: float = float(spec["threshold"])
        self.temperature: float = float(spec.get("temperature") or 1.0)
        total = sum(len(h["classes"]) for h in heads.values()) if self.multi else len(self.classes)
        self.rows: slice = slice(*spec["slice"]) if self.multi else slice(0, total)
        self.etiology_head: dict[str, Any] | None = (
            heads.get("etiology") if self.multi and self.head != "etiology" else None)
        self.scope_head: dict[str, Any] | None = heads.get("scope") if self.multi else None
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
        head: str | None = None,
    ) -> Predictor:
        model, meta = model_from_checkpoint(path, map_location="cpu")
        return cls(model, meta, device, optimize, threads, head)

    # ---------------------------------------------------------------------------------------
    def to_tensor(self, source: Source) -> torch.Tensor:
        """Decode (if needed) and convert one input to a (C,S,S) model tensor."""
        if isinstance(source, np.ndarray):
            pixels = source.astype(np.float32) / 255.0 if source.dtype == np.uint8 else source
        else:
            pixels = decode_image(source).pixels
        return to_model_tensor(pixels, self.input_size, self.mean, self.std, self.channels)

    def predict(
        self,
        sources: Sequence[Source],
        with_cam: bool = True,
        batch_size: int = 32,
        metadata: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[Prediction]:
        """Predict a list of paths / bytes / decoded HxW arrays (float [0,1] or uint8).

        DICOM attributes of decoded files feed the scope gate; for arrays pass ``metadata``.
        Raises ml.preprocess.ImageDecodeError for an undecodable input.
        """
        out: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            tensors, metas = [], []
            for j, source in enumerate(chunk):
                given = metadata[start + j] if metadata is not None else None
                if isinstance(source, np.ndarray):
                    tensors.append(self.to_tensor(source))
                    metas.append(given)
                else:
                    decoded = decode_image(source)
                    tensors.append(self.to_tensor(decoded.pixels))
                    metas.append(given if given is not None else decoded.metadata)
            out.extend(self.predict_tensors(torch.stack(tensors), with_cam=with_cam,
                                            metadata=metas))
        return out

    def decide(self, probs: np.ndarray) -> tuple[int, float]:
        """The decision rule (ml.decision) for one calibrated probability vector."""
        labels, scores = decide(probs, self._normal, self.threshold)
        return int(labels[0]), float(scores[0])

    def head_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The primary head's logits out of the model's whole output vector."""
        return logits[:, self.rows]

    def calibrated(self, logits: torch.Tensor, head: dict[str, Any] | None = None) -> np.ndarray:
        """Calibrated probabilities of the primary head, or of ``head`` (a meta["heads"] entry)."""
        if head is None:
            z, t = self.head_logits(logits), self.temperature
        else:
            z, t = logits[:, slice(*head["slice"])], float(head["temperature"])
        return torch.softmax(z.float() / t, dim=1).cpu().numpy()

    def predict_tensors(
        self,
        batch: torch.Tensor,
        with_cam: bool = True,
        metadata: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[Prediction]:
        """Predict an already preprocessed (B,C,S,S) batch (from ``to_model_tensor``).

        ``metadata`` (DICOM attributes per image, or None) feeds the scope gate's metadata rule.
        """
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
        probs = self.calibrated(logits)
        labels, scores = decide(probs, self._normal, self.threshold)
        cams = None
        if with_cam:
            idx = torch.as_tensor(labels, device=x.device)
            if feats is not None:
                with torch.inference_mode():
                    cams_raw = cam_from_features(feats, self.model.linear, idx, self.rows)
            elif self.multi or bool((idx != self.head_logits(logits).argmax(1)).any()):
                # Grad-CAM for the decided class of the primary head.
                _, cams_raw = compute_cams(self.model, x, idx + (self.rows.start or 0))
            assert cams_raw is not None
            cams = upsample(cams_raw, self.input_size).cpu().numpy().astype(np.float32)
        etiology = self._etiology(logits)
        scopes = self._scopes(logits, metadata, len(probs))
        # The box is found on a grid of about BOX_GRID cells a side (ml.cam.bounding_box).
        box_step = max(1, self.input_size // BOX_GRID)
        results = []
        for i, (cls_idx, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=True)):
            heat = cams[i] if cams is not None else None
            results.append(
                Prediction(
                    label=self.classes[cls_idx],
                    probabilities={
                        c: float(p) for c, p in zip(self.classes, probs[i], strict=True)
                    },
                    score=float(score),
                    threshold=self.threshold,
                    heatmap=heat,
                    bbox=bounding_box(heat, step=box_step) if heat is not None else None,
                    etiology=etiology[i] if etiology else None,
                    scope=scopes[i] if scopes else None,
                )
            )
        return results

    def _etiology(self, logits: torch.Tensor) -> list[HeadPrediction]:
        head = self.etiology_head
        if head is None:
            return []
        classes = list(head["classes"])
        probs = self.calibrated(logits, head)
        labels, scores = decide(probs, classes.index("normal"), float(head["threshold"]))
        return [
            HeadPrediction(classes[int(lab)], {c: float(p) for c, p in zip(classes, row,
                                                                          strict=True)},
                           float(score), float(head["threshold"]))
            for lab, score, row in zip(labels, scores, probs, strict=True)
        ]

    def _scopes(self, logits: torch.Tensor, metadata: Sequence[Mapping[str, str] | None] | None,
                n: int) -> list[ScopeVerdict]:
        head = self.scope_head
        if head is None:
            return []
        probs = self.calibrated(logits, head)
        meta = list(metadata) if metadata is not None else [None] * n
        return [scope_verdict(row, float(head["threshold"]), m)
                for row, m in zip(probs, meta, strict=True)]
