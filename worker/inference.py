"""Batched inference for one chunk of images: decode, one forward pass, store results."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from django.conf import settings

from backend.studies import services
from backend.studies.models import Image
from ml.cam import overlay_png
from ml.predictor import Predictor
from ml.preprocess import ImageDecodeError, decode_image, preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    binary: Predictor
    etiology: Predictor | None


@cache
def load_models() -> Models:
    """Load the models once per worker process (never in the parent before a fork)."""
    binary = Predictor.from_checkpoint(settings.MODEL_CHECKPOINT_BINARY)
    try:
        etiology = Predictor.from_checkpoint(settings.MODEL_CHECKPOINT_ETIOLOGY)
    except FileNotFoundError:
        logger.warning("No etiology checkpoint at %s", settings.MODEL_CHECKPOINT_ETIOLOGY)
        etiology = None
    return Models(binary=binary, etiology=etiology)


def _decode(image: Image) -> np.ndarray:
    with image.file.open("rb") as handle:
        return decode_image(handle.read()).pixels


def run_chunk(image_ids: list[str]) -> int:
    """Process the images of a chunk that are not finished yet; returns how many got results."""
    models = load_models()
    images = services.images_claim(image_ids=image_ids)
    if not images:
        return 0
    ready: list[tuple[Image, np.ndarray]] = []
    for image in images:
        try:
            ready.append((image, _decode(image)))
        except (ImageDecodeError, OSError) as exc:
            services.image_fail(image_id=image.id, reason=f"Could not read the image: {exc}")
    if not ready:
        return 0
    started = time.perf_counter()
    batch = torch.stack([preprocess(pixels, models.binary.preprocessing) for _, pixels in ready])
    predictions = models.binary.predict_tensors(batch, with_cam=True)
    etiologies = [None] * len(ready)
    if models.etiology is not None:
        ebatch = torch.stack(
            [preprocess(pixels, models.etiology.preprocessing) for _, pixels in ready]
        )
        etiologies = models.etiology.predict_tensors(ebatch, with_cam=False)
    per_image_ms = (time.perf_counter() - started) * 1000 / len(ready)
    for (image, pixels), pred, etio in zip(ready, predictions, etiologies, strict=True):
        services.result_record(
            image_id=image.id,
            data=services.ResultData(
                label=pred.label,
                probabilities=pred.probabilities,
                score=pred.score,
                threshold=pred.threshold,
                model_name=models.binary.name,
                model_version=models.binary.version,
                etiology_label=etio.label if etio else "",
                etiology_probabilities=etio.probabilities if etio else {},
                bbox=list(pred.bbox) if pred.bbox else None,
                heatmap_png=overlay_png(pixels, pred.heatmap) if pred.heatmap is not None
                else None,
                inference_ms=per_image_ms,
            ),
        )
    return len(ready)
