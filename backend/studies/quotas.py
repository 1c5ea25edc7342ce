"""Upload limits answered with 429 and Retry-After: a request rate per user, and a number of
bytes per hospital in any 24 hours.

The byte quota is computed from the database (the images stored in the last 24 hours), so
every web process sees the same figure and nothing can drift. A request is refused when what
the hospital stored in the window plus the request's size (Content-Length, known before any
file is read) would pass the quota; Retry-After says when enough of the window's uploads will
have aged out for it to fit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Min, Sum
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from backend.accounts.models import Hospital
from backend.accounts.throttles import parse_rate

from .models import Image

QUOTA_WINDOW = timedelta(hours=24)


class UploadRateThrottle(SimpleRateThrottle):
    """UPLOAD_RATE upload requests per user (POST only; reading is not limited here)."""

    scope = "upload"

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        return parse_rate(rate)

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}

    detail = "Too many uploads in a short time."


def hospital_quota(hospital: Hospital) -> int:
    """Bytes per 24 hours (0 = no limit): the hospital's own, else the installation's."""
    own = hospital.upload_quota_bytes_per_day
    return settings.UPLOAD_QUOTA_BYTES_PER_DAY if own is None else own


def hospital_uploads_in_window(*, hospital_id: int, now: datetime) -> list[tuple[datetime, int]]:
    """(when, bytes) of the hospital's stored images in the last 24 hours, oldest first,
    one entry per study."""
    rows = (Image.objects.filter(study__hospital_id=hospital_id,
                                 created_at__gt=now - QUOTA_WINDOW)
            .values("study_id").annotate(at=Min("created_at"), size=Sum("size_bytes"))
            .order_by("at").values_list("at", "size"))
    return [(at, int(size or 0)) for at, size in rows]


def quota_wait_s(*, uploads: list[tuple[datetime, int]], incoming: int, quota: int,
                 now: datetime) -> float | None:
    """Seconds until `incoming` more bytes fit in the quota; None when they fit now."""
    used = sum(size for _, size in uploads)
    excess = used + incoming - quota
    if excess <= 0:
        return None
    freed = 0
    for at, size in uploads:
        freed += size
        if freed >= excess:
            return max(1.0, (at + QUOTA_WINDOW - now).total_seconds())
    # Larger than the whole quota: it never fits; say when the window is empty.
    last = uploads[-1][0] if uploads else now
    return max(1.0, (last + QUOTA_WINDOW - now).total_seconds())


class HospitalUploadQuota(BaseThrottle):
    """The hospital's bytes per 24 hours (UPLOAD_QUOTA_BYTES_PER_DAY or its own)."""

    detail = "Your hospital's upload quota for the last 24 hours is used up."

    def allow_request(self, request: Request, view: Any) -> bool:
        self._wait: float | None = None
        if request.method != "POST" or request.user.hospital_id is None:
            return True
        quota = hospital_quota(request.user.hospital)
        if not quota:
            return True
        try:
            incoming = max(0, int(request.META.get("CONTENT_LENGTH") or 0))
        except ValueError:
            incoming = 0
        now = timezone.now()
        uploads = hospital_uploads_in_window(hospital_id=request.user.hospital_id, now=now)
        self._wait = quota_wait_s(uploads=uploads, incoming=incoming, quota=quota, now=now)
        if self._wait is None:
            return True
        used = sum(size for _, size in uploads)
        self.detail = (f"Your hospital's upload quota of {quota} bytes per 24 hours would be "
                       f"passed: {used} bytes stored in the last 24 hours, {incoming} in this "
                       "request.")
        return False

    def wait(self) -> float | None:
        return self._wait
