"""Upload limits: a request rate per user and bytes per hospital per 24 hours, each answered
with 429 and Retry-After, before any file is stored."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from backend.studies.models import Image, Study
from backend.studies.quotas import quota_wait_s
from tests.backend.studies.conftest import png_bytes

pytestmark = pytest.mark.django_db


def upload(api: Any, seed: int = 0, size: tuple[int, int] = (64, 48)) -> Any:
    data = png_bytes(size, seed=seed)
    return api.post("/api/studies/", {"files": [SimpleUploadedFile(f"{seed}.png", data)]},
                    format="multipart")


def test_a_hospital_past_its_daily_quota_gets_429_with_retry_after(
    api: Any, other_api: Any, user: Any, no_broker: Any,
) -> None:
    first = upload(api, seed=1)
    assert first.status_code == 201
    stored = Image.objects.get().size_bytes
    user.hospital.upload_quota_bytes_per_day = stored + 1000  # room for little more
    user.hospital.save()
    refused = upload(api, seed=2, size=(256, 256))
    assert refused.status_code == 429
    assert "quota" in refused.json()["detail"]
    retry_after = int(refused["Retry-After"])
    assert 86400 - 120 < retry_after <= 86400  # when the first upload leaves the window
    assert Study.objects.count() == 1  # nothing of the refused request was stored
    assert api.get("/api/studies/").status_code == 200  # reading is not limited
    assert upload(other_api, seed=3, size=(256, 256)).status_code == 201  # other hospital
    assert upload(api, seed=4).status_code == 429  # even a small one: the window is full
    # A day later the first upload no longer counts.
    Image.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert upload(api, seed=4).status_code == 201


def test_a_part_appended_past_the_quota_gets_429_and_stores_nothing(
    api: Any, user: Any, no_broker: Any,
) -> None:
    created = api.post("/api/studies/", {"receiving": "true", "name": "ward"},
                       format="multipart")
    assert created.status_code == 201
    study_id = created.json()["study"]["id"]
    user.hospital.upload_quota_bytes_per_day = 1000
    user.hospital.save()
    big = SimpleUploadedFile("big.png", png_bytes((256, 256), seed=5))
    refused = api.post(f"/api/studies/{study_id}/files/", {"files": [big]}, format="multipart")
    assert refused.status_code == 429 and "quota" in refused.json()["detail"]
    assert int(refused["Retry-After"]) >= 1
    assert not Image.objects.filter(study_id=study_id).exists()


def test_the_installation_default_applies_and_zero_means_no_limit(
    api: Any, user: Any, settings: Any, no_broker: Any,
) -> None:
    settings.UPLOAD_QUOTA_BYTES_PER_DAY = 1000
    assert upload(api, seed=1, size=(256, 256)).status_code == 429
    user.hospital.upload_quota_bytes_per_day = 0
    user.hospital.save()
    assert upload(api, seed=1, size=(256, 256)).status_code == 201


def test_retry_after_is_when_enough_bytes_leave_the_window() -> None:
    now = timezone.now()
    uploads = [(now - timedelta(hours=20), 500), (now - timedelta(hours=2), 400)]
    assert quota_wait_s(uploads=uploads, incoming=100, quota=1000, now=now) is None
    # 200 too many: the older upload (500) must leave, in 4 hours.
    assert quota_wait_s(uploads=uploads, incoming=300, quota=1000,
                        now=now) == pytest.approx(4 * 3600)
    # 600 too many: both must leave, the newer in 22 hours.
    assert quota_wait_s(uploads=uploads, incoming=700, quota=1000,
                        now=now) == pytest.approx(22 * 3600)


def test_uploads_are_rate_limited_per_user(
    api: Any, other_api: Any, monkeypatch: pytest.MonkeyPatch, no_broker: Any,
) -> None:
    from backend.studies.quotas import UploadRateThrottle

    monkeypatch.setattr(UploadRateThrottle, "THROTTLE_RATES", {"upload": "2/m"})
    assert [upload(api, seed=i).status_code for i in range(2)] == [201, 201]
    refused = upload(api, seed=5)
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 60
    assert "Too many uploads" in refused.json()["detail"]
    assert Study.objects.count() == 2
    assert api.get("/api/studies/").status_code == 200
    assert upload(other_api, seed=6).status_code == 201
