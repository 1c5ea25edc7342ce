"""Celery tasks: they take IDs, re-fetch from the database and call services."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from . import inference

TRANSIENT_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, ConnectionError)


@shared_task(
    name="worker.tasks.infer_images",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def infer_images(image_ids: list[str]) -> int:
    """Classify a chunk of images; finished images are skipped, so a repeat is harmless."""
    return inference.run_chunk(image_ids)
