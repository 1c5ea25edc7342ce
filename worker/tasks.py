"""Celery tasks: they take IDs, re-fetch from the database and call services.

Idempotent by construction: a chunk claims only unfinished images and a result is stored once
(`results_record_many`), so a redelivered or repeated task never duplicates results or counts.
This module imports neither torch nor the model (see worker/signals.py).
"""

from __future__ import annotations

import contextlib
import logging
import random

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connections
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.studies import dispatch

logger = logging.getLogger(__name__)

# Worth retrying: the database, Redis or the object store was briefly unreachable.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, RedisConnectionError, ConnectionError, TimeoutError,
)
try:  # S3 storage: endpoint unreachable
    from botocore.exceptions import ConnectionError as BotoConnectionError

    TRANSIENT_ERRORS += (BotoConnectionError,)
except ImportError:  # pragma: no cover - botocore is installed with django-storages[s3]
    pass

MAX_RETRIES = 8


def backoff_s(retries: int) -> float:
    """1, 2, 4, ... 60 s, with jitter so workers do not come back in lock-step."""
    return min(60.0, 2.0**retries) * random.uniform(0.5, 1.0)


def _drop_connections() -> None:
    for conn in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):  # the connection is broken; we only drop it
            conn.close()


def _record_failure(image_ids: list[str], reason: str) -> None:
    from backend.studies import services

    try:
        services.images_fail_many(image_ids=image_ids, reason=reason)
    except Exception:
        # The database is unreachable too: the sweep requeues the images later and the
        # attempts limit ends the loop.
        logger.exception("Could not record the failure of %d images", len(image_ids))


@shared_task(
    name=dispatch.INFER_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def infer_images(self, image_ids: list[str]) -> dict[str, int]:
    """Classify a chunk of images; finished images are skipped, so a repeat is harmless."""
    from . import inference  # torch is imported in the pool process only
    from .runtime import process_runtime

    try:
        report = inference.run_chunk(process_runtime(), image_ids)
    except SoftTimeLimitExceeded:
        limit = self.request.timelimit[1] if self.request.timelimit else None
        limit = limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
        logger.error("Chunk of %d images exceeded the %s s soft time limit", len(image_ids),
                     limit)
        _drop_connections()
        _record_failure(image_ids, f"Timed out: classifying this batch took longer than the "
                                   f"{limit} s time limit.")
        return {"done": 0, "failed": len(image_ids)}
    except TRANSIENT_ERRORS as exc:
        _drop_connections()
        if self.request.retries >= self.max_retries:
            logger.error("Giving up on a chunk after %d retries: %r", self.request.retries, exc)
            _record_failure(image_ids, f"Failed after {self.request.retries} retries: the "
                                       f"service was unavailable ({type(exc).__name__}).")
            return {"done": 0, "failed": len(image_ids)}
        countdown = backoff_s(self.request.retries)
        logger.warning("Transient error (%r); retry %d in %.1f s", exc,
                       self.request.retries + 1, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:
        logger.exception("Chunk of %d images failed", len(image_ids))
        _record_failure(image_ids, f"Internal error while classifying: "
                                   f"{type(exc).__name__}: {exc}")
        return {"done": 0, "failed": len(image_ids)}
    finally:
        close_old_connections()
    return {"done": report.done, "failed": report.failed, "skipped": report.skipped}


@shared_task(name=dispatch.SWEEP_TASK, acks_late=True)
def sweep_stuck_images() -> dict[str, int]:
    """Requeue images a dead worker left in `processing` (and queued ones whose message was
    lost); runs every SWEEP_INTERVAL_S on the `default` queue (celery beat)."""
    from backend.studies import services

    outcome = services.images_requeue_stuck(
        processing_deadline_s=settings.STUCK_IMAGE_DEADLINE_S,
        queued_deadline_s=settings.QUEUED_IMAGE_DEADLINE_S,
        inference_queue_empty=dispatch.queue_depths()[dispatch.INFERENCE_QUEUE] == 0,
    )
    return {"stuck_processing": outcome.stuck_processing, "lost_queued": outcome.lost_queued}


WEBHOOK_MAX_RETRIES = 10


@shared_task(name=dispatch.WEBHOOK_TASK, bind=True, queue=dispatch.DEFAULT_QUEUE, acks_late=True,
             max_retries=WEBHOOK_MAX_RETRIES)
def deliver_webhook(self, study_id: str) -> bool:
    """POST a finished study's signed summary to its hospital's webhook (hospital-facing API;
    the logic is in backend.studies.webhooks). Network errors, timeouts, 429 and 5xx answers
    are retried with exponential backoff (30 s doubling, capped at 1 h, with jitter); other
    refusals are final."""
    from backend.studies.webhooks import WebhookDeliveryError, deliver

    try:
        return deliver(study_id)
    except (WebhookDeliveryError, *TRANSIENT_ERRORS) as exc:
        if self.request.retries >= self.max_retries:
            logger.error("Giving up on the webhook of study %s: %s", study_id, exc)
            return False
        # A countdown is an ETA message the worker holds unacknowledged: it must stay below
        # the Redis visibility timeout, or Redis hands it to a second worker (sent twice).
        cap = min(3600.0, settings.CELERY_VISIBILITY_TIMEOUT * 0.75)
        countdown = min(cap, 30.0 * 2.0**self.request.retries) * random.uniform(0.5, 1.0)
        logger.warning("Webhook of study %s failed (%s); retry in %.0f s", study_id, exc,
                       countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc

