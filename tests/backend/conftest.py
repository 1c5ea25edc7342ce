"""Fixtures for the web API tests: crafted image files, studies built in the database."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from backend.studies.models import Image, Result, Study


@pytest.fixture(autouse=True)
def _clear_throttles() -> Iterator[None]:
    """Throttle and lockout counters live in the cache: each test starts from zero."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Web-only tests: record what would be sent to Celery instead of sending it."""
    sent: dict[str, list[Any]] = {"enqueue": [], "webhook": []}
    monkeypatch.setattr("backend.studies.services.lifecycle.study_enqueue",
                        lambda *, study_id: sent["enqueue"].append(study_id))
    monkeypatch.setattr("backend.studies.services.lifecycle.webhook_enqueue",
                        lambda *, study_id: sent["webhook"].append(study_id))
    return sent


def png_bytes(size: tuple[int, int] = (64, 48), *, seed: int = 0, mode: str = "L") -> bytes:
    """A small synthetic radiograph-like PNG; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    ramp = np.linspace(0, 1, width)[None, :] * np.linspace(0.3, 1, height)[:, None]
    noisy = ramp + rng.normal(0, 0.05, (height, width))
    if mode == "I;16":
        arr = (np.clip(noisy, 0, 1) * 4095).astype(np.uint16)
        img = PILImage.fromarray(arr)  # uint16 -> mode I;16
    else:
        img = PILImage.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 48), *, seed: int = 0) -> bytes:
    img = PILImage.open(io.BytesIO(png_bytes(size, seed=seed)))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def make_study(user: Any) -> Callable[..., Study]:
    """A study of the given image statuses, built without the upload path (fast)."""

    def build(
        statuses: list[str] = ("queued",),  # type: ignore[assignment]
        *, owner: Any = None, name: str = "", accession_number: str = "",
        priority: str = "routine", with_results: bool = True, flags: list[str] | None = None,
    ) -> Study:
        owner = owner or user
        study = Study.objects.create(hospital=owner.hospital, created_by=owner, name=name,
                                     accession_number=accession_number, priority=priority)
        for i, status in enumerate(statuses):
            data = png_bytes(seed=i)
            image = Image(study=study, original_name=f"img-{i}.png", sha256=f"{i:064d}",
                          size_bytes=len(data), format="png", width=64, height=48,
                          status=status, flags=flags or [],
                          sop_instance_uid=f"1.2.3.{i}",
                          error="decoder exploded" if status == "failed" else "")
            image.file.save("x", ContentFile(data), save=False)
            image.save()
            if status == "done" and with_results:
                result = Result(image=image, label="pneumonia" if i % 2 == 0 else "normal",
                                probabilities={"normal": 0.2, "pneumonia": 0.8},
                                score=0.8, threshold=0.5, etiology_label="bacterial",
                                etiology_probabilities={"bacterial": 0.7, "viral": 0.3},
                                model_name="resnet18-binary", model_version="1.0.0",
                                bbox=[0.1, 0.2, 0.5, 0.6])
                result.heatmap.save("heatmap.png", ContentFile(png_bytes(seed=99)),
                                    save=False)
                result.save()
        from backend.studies.services import study_refresh_status

        study_refresh_status(study_id=study.id)
        study.refresh_from_db()
        return study

    return build
