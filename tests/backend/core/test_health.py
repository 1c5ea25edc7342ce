"""GET /api/health/: database, Redis and a worker must all answer."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.conftest import TEST_REDIS_URL


def health() -> Any:
    return APIClient().get("/api/health/")


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
