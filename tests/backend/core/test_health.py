"""Health: liveness checks nothing; readiness (/api/health/, /api/health/ready/) needs the
database, Redis and a worker, and is checked at most once per HEALTH_CACHE_S."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.conftest import TEST_REDIS_URL


def health(path: str = "/api/health/") -> Any:
    return APIClient().get(path)


@pytest.fixture(autouse=True)
def _fresh_readiness() -> Any:
    """Each test checks anew (the answer is cached across requests by design)."""
    from backend.core import health as checks

    checks.readiness_forget()
    yield
    checks.readiness_forget()


@pytest.fixture
def lonely_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Redis database on which no worker listens (the shared test worker may be up)."""
    from celery import Celery

    base, _, _ = TEST_REDIS_URL.rpartition("/")
    app = Celery("lonely", broker=f"{base}/15", set_as_current=False)
    monkeypatch.setattr("backend.config.celery.app", app)


@pytest.mark.django_db
def test_health_is_503_when_no_worker_answers(lonely_broker: None, settings: Any) -> None:
    settings.REDIS_URL = TEST_REDIS_URL
    response = health()
    assert response.status_code == 503
    assert response.json()["problems"] == ["workers: no worker answered"]
    assert response.json()["status"] == "degraded"


@pytest.mark.django_db
def test_health_is_503_when_redis_is_down(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = health()
    assert response.status_code == 503
    (problem,) = response.json()["problems"]
    assert problem.startswith("redis: ")


@pytest.mark.django_db
def test_health_is_503_when_the_database_is_down(monkeypatch: pytest.MonkeyPatch,
                                                settings: Any) -> None:
    from django.db import OperationalError, connection

    def refuse() -> None:
        raise OperationalError("connection refused")

    settings.REDIS_URL = TEST_REDIS_URL
    monkeypatch.setattr(connection, "cursor", refuse)
    response = health()
    assert response.status_code == 503
    assert response.json()["problems"][0].startswith("database: OperationalError")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_health_is_ok_with_a_real_worker(celery_worker_process: Any, settings: Any) -> None:
    from tests.conftest import wait_for

    settings.REDIS_URL = TEST_REDIS_URL
    response = wait_for(lambda: (r := health()).status_code == 200 and r, timeout=120,
                        interval=1)
    body = response.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["workers"] and body["workers"][0].startswith("test-")


@pytest.mark.django_db
def test_liveness_answers_without_database_or_redis(monkeypatch: pytest.MonkeyPatch,
                                                    settings: Any) -> None:
    from django.db import connection

    def refuse() -> None:
        raise AssertionError("liveness must not touch the database")

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    monkeypatch.setattr(connection, "cursor", refuse)
    monkeypatch.setattr("backend.core.health.check_all", refuse)
    response = health("/api/health/live/")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.fixture
def counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each real readiness check (the checks themselves still run)."""
    from backend.core import health as checks

    calls: list[float] = []
    real = checks.check_all

    def counting() -> Any:
        calls.append(1)
        return real()

    monkeypatch.setattr(checks, "check_all", counting)
    return calls


@pytest.mark.django_db
def test_a_flood_of_readiness_checks_costs_one_check_per_cache_period(
    counted_checks: list[float], settings: Any, lonely_broker: None
) -> None:
    import time

    from tests.conftest import wait_for

    settings.REDIS_URL = TEST_REDIS_URL
    settings.HEALTH_CACHE_S = 60  # the flood below takes far less, even on a busy machine
    answers = [health(path).status_code for path in ["/api/health/", "/api/health/ready/"] * 20]
    assert answers == [503] * 40
    assert len(counted_checks) == 1
    settings.HEALTH_CACHE_S = 3
    time.sleep(3.1)
    # Past the period, one request starts a check in the background and gets the last answer.
    stale = health()
    assert stale.status_code == 503
    wait_for(lambda: len(counted_checks) == 2, timeout=10, interval=0.05)
    wait_for(lambda: health().json()["checked_at"] > stale.json()["checked_at"], timeout=5,
             interval=0.05)
    assert len(counted_checks) == 2


@pytest.mark.django_db
def test_web_processes_share_one_check_through_redis(
    counted_checks: list[float], settings: Any, lonely_broker: None
) -> None:
    """A second process (no local copy) takes the answer from the shared Redis cache."""
    from django.test import override_settings

    from backend.core import health as checks

    settings.REDIS_URL = TEST_REDIS_URL
    redis_cache = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                               "LOCATION": TEST_REDIS_URL, "KEY_PREFIX": "health-test"}}
    with override_settings(CACHES=redis_cache):
        checks.readiness_forget()
        first = health().json()
        checks._local = None  # as in another gunicorn process
        second = health().json()
        checks.readiness_forget()
    assert second == first and second["problems"] == ["workers: no worker answered"]
    assert len(counted_checks) == 1


@pytest.mark.django_db
def test_readiness_still_answers_when_the_cache_is_down(
    counted_checks: list[float], settings: Any
) -> None:
    from django.test import override_settings

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    dead_cache = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                              "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=dead_cache):
        first = health("/api/health/ready/")
        second = health("/api/health/ready/")
    assert first.status_code == second.status_code == 503
    assert first.json()["problems"][0].startswith("redis: ")
    assert len(counted_checks) == 1  # the process keeps its own copy meanwhile
