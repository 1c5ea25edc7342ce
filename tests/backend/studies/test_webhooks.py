"""Webhook on study completion: triggered on commit, signed, delivered to a real HTTP server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from backend.studies import webhooks
from backend.studies.models import Study
from backend.studies.services import images_fail_many, study_refresh_status
from tests.backend.studies.conftest import SECRET, Receiver, verify_like_a_receiver

pytestmark = pytest.mark.django_db


def test_delivery_posts_a_signed_summary_the_receiver_can_verify(
    hooked: Any, receiver: Receiver, make_study: Callable[..., Study]
) -> None:
    study = make_study(["done", "failed"], owner=hooked, name="Ward 7")
    assert webhooks.deliver(study.id) is True
    (request,) = receiver.requests
    assert verify_like_a_receiver(request["headers"], request["body"])
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-PneumoScan-Event"] == "study.finished"
    payload = json.loads(request["body"])
    assert payload["study"]["id"] == str(study.id)
    assert payload["study"]["status"] == "done_with_errors"
    assert payload["study"]["progress"] == {"total": 2, "done": 1, "failed": 1, "pneumonia": 1}
    assert {i["status"] for i in payload["images"]} == {"done", "failed"}


def test_tampered_body_fails_verification(
    hooked: Any, receiver: Receiver, make_study: Callable[..., Study]
) -> None:
    webhooks.deliver(make_study(["done"], owner=hooked).id)
    (request,) = receiver.requests
    assert not verify_like_a_receiver(request["headers"], request["body"] + b" ")
    assert webhooks.verify(request["body"], SECRET, request["headers"]["X-PneumoScan-Signature"])


def test_server_error_raises_for_a_retry_and_client_error_is_final(
    hooked: Any, receiver: Receiver, make_study: Callable[..., Study]
) -> None:
    study = make_study(["done"], owner=hooked)
    receiver.status = 503
    with pytest.raises(webhooks.WebhookDeliveryError, match="503"):
        webhooks.deliver(study.id)
    receiver.status = 410
    assert webhooks.deliver(study.id) is False
    assert len(receiver.requests) == 2


def test_unreachable_receiver_raises_for_a_retry(
    hooked: Any, receiver: Receiver, make_study: Callable[..., Study]
) -> None:
    study = make_study(["done"], owner=hooked)
    receiver.close()
    with pytest.raises(webhooks.WebhookDeliveryError):
        webhooks.deliver(study.id, timeout=2)
    receiver.server = type("Closed", (), {"shutdown": lambda s: None,
                                          "server_close": lambda s: None})()


def test_no_webhook_configured_sends_nothing(
    user: Any, make_study: Callable[..., Study]
) -> None:
    assert webhooks.deliver(make_study(["done"]).id) is False


def test_celery_task_retries_delivery_errors_with_backoff(
    hooked: Any, receiver: Receiver, make_study: Callable[..., Study],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery.exceptions import Retry

    from worker.tasks import deliver_webhook

    study = make_study(["done"], owner=hooked)
    receiver.status = 502
    countdowns: list[float] = []

    def fake_retry(*, exc: Exception, countdown: float) -> Retry:
        countdowns.append(countdown)
        return Retry(exc=exc)

    monkeypatch.setattr(deliver_webhook, "retry", fake_retry)
    with pytest.raises(Retry):
        deliver_webhook.apply(args=[str(study.id)], throw=True)
    assert countdowns and 15 <= countdowns[0] <= 30
    assert deliver_webhook.queue == "default"
    receiver.status = 200
    assert deliver_webhook.apply(args=[str(study.id)]).get() is True
    assert len(receiver.requests) == 2


def test_finishing_a_study_queues_the_webhook_once_after_commit(
    hooked: Any, make_study: Callable[..., Study], no_broker: dict[str, list[Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    study = make_study(["done", "processing"], owner=hooked)
    assert no_broker["webhook"] == []
    running = study.images.get(status="processing")
    with django_capture_on_commit_callbacks(execute=True):
        images_fail_many(image_ids=[running.id], reason="unreadable")
        study_refresh_status(study_id=study.id)  # no transition: nothing more sent
    assert no_broker["webhook"] == [study.id]


def test_unfinished_transition_or_no_webhook_url_queues_nothing(
    user: Any, make_study: Callable[..., Study], no_broker: dict[str, list[Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        make_study(["done"])  # finished, but the hospital has no webhook
    assert no_broker["webhook"] == []
