"""Checks behind GET /api/health/."""

from __future__ import annotations

from django.conf import settings
from django.db import connection

from backend.config import celery


def check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure is the answer we report
        return f"database: {exc.__class__.__name__}: {exc}"
    return None


def check_redis() -> str | None:
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:
        return f"redis: {exc.__class__.__name__}: {exc}"
    return None


def check_workers(timeout: float = 1.5) -> tuple[list[str], str | None]:
    try:
        replies = celery.app.control.ping(timeout=timeout) or []
    except Exception as exc:
        return [], f"workers: {exc.__class__.__name__}: {exc}"
    names = sorted(name for reply in replies for name in reply)
    return names, None if names else "workers: no worker answered"
