"""Celery tasks: they take IDs, re-fetch from the database and call services.

Idempotent by construction: a chunk claims only unfinished images and a result is stored once
(`results_record_many`), so a redelivered or repeated task never duplicates results or counts.
This module imports neither torch nor the model (see worker/signals.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
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

# Ordinary storage and OS errors that pass: a full disk being cleaned, an I/O error of a
# network volume, an object store's 5xx. Retried with backoff like an outage, never counted
# as an attempt (attempts count only lost workers).
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EBUSY,
                              errno.ETIMEDOUT, errno.EDQUOT, errno.ESTALE, errno.ENOMEM,
                              errno.ECONNRESET, errno.ECONNREFUSED, errno.EHOSTUNREACH})
S3_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError",
                                "RequestTimeout", "RequestTimeTooSkewed", "Throttling"})

MAX_RETRIES = 8


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying: an outage or an ordinary storage / OS error."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    response = getattr(exc, "response", None)  # botocore ClientError: the S3 answer
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = response.get("Error", {}).get("Code", "")
        return int(status) >= 500 or code in S3_TRANSIENT_CODES
    return False


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
    """Classify a chunk of images; finished images are skipped, so a repeat is harmless.

    The claim token names this try (task id and retry number): after a transient error the
    retry re-claims the images its earlier tries held without counting an attempt; a loss of
    the worker (the message redelivered, same try) counts one.
    """
    from . import inference  # torch is imported in the pool process only
    from .runtime import process_runtime

    retries = self.request.retries or 0
    task_id = self.request.id or "local"
    try:
        report = inference.run_chunk(
            process_runtime(), image_ids, token=f"{task_id}:{retries}",
            earlier_tokens=[f"{task_id}:{r}" for r in range(retries)])
    except inference.ModelUnavailable as exc:
        # Not the images' fault: they go back to the queue for a worker that has a model,
        # and this one stops consuming instead of failing every hospital's images.
        stop_this_worker(f"the model could not be loaded: {exc}")
        raise Reject(str(exc), requeue=True) from exc
    except SoftTimeLimitExceeded:
        limit = self.request.timelimit[1] if self.request.timelimit else None
        limit = limit or settings.CELERY_TASK_SOFT_TIME_LIMIT
        logger.error("Chunk of %d images exceeded the %s s soft time limit", len(image_ids),
                     limit)
        _drop_connections()
        _record_failure(image_ids, f"Timed out: classifying this batch took longer than the "
                                   f"{limit} s time limit.")
        return {"done": 0, "failed": len(image_ids)}
    except Exception as exc:
        if not is_transient(exc):
            logger.exception("Chunk of %d images failed", len(image_ids))
            _record_failure(image_ids, f"Internal error while classifying: "
                                       f"{type(exc).__name__}: {exc}")
            return {"done": 0, "failed": len(image_ids)}
        _drop_connections()
        if retries >= self.max_retries:
            logger.error("Giving up on a chunk after %d retries: %r", retries, exc)
            _record_failure(image_ids, f"Failed after {retries} retries: the service was "
                                       f"unavailable ({type(exc).__name__}).")
            return {"done": 0, "failed": len(image_ids)}
        countdown = backoff_s(retries)
        logger.warning("Transient error (%r); retry %d in %.1f s", exc, retries + 1, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    finally:
        close_old_connections()
    return {"done": report.done, "failed": report.failed, "rejected": report.rejected,
            "skipped": report.skipped}


def stop_this_worker(reason: str) -> None:
    """Stop the whole worker (exit status 1), logged, from a pool process.

    A worker that cannot load its model would otherwise take every chunk from the queue and
    fail it: the message in hand is requeued (acks_late) and the worker leaves the queue to
    the healthy ones; its supervisor (make run, systemd, compose) sees it exit non-zero.
    """
    from .signals import STOP_SIGNAL, in_pool_process

    logger.critical("Stopping this worker: %s", reason)
    if in_pool_process():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(os.getppid(), getattr(signal, STOP_SIGNAL))


@shared_task(name=dispatch.SWEEP_TASK, acks_late=True)
def sweep_stuck_images() -> dict[str, int]:
    """Put back on its way whatever a failure left behind (services.images_requeue_stuck):
    images a lost worker held, images never sent (broker down), messages lost, studies whose
    status recomputation failed, studies left receiving parts. Runs every SWEEP_INTERVAL_S
    on the `default` queue (celery beat)."""
    from backend.studies import services

    outcome = services.images_requeue_stuck(
        processing_deadline_s=settings.STUCK_IMAGE_DEADLINE_S,
        queued_deadline_s=settings.QUEUED_IMAGE_DEADLINE_S,
        inference_queue_empty=dispatch.queue_depths()[dispatch.INFERENCE_QUEUE] == 0,
        unsent_grace_s=settings.UNSENT_GRACE_S,
        receiving_timeout_s=settings.UPLOAD_OPEN_TIMEOUT_S,
        reconcile_after_s=settings.RECONCILE_AFTER_S,
    )
    return {"stuck_processing": outcome.stuck_processing, "lost_queued": outcome.lost_queued,
            "unsent": outcome.unsent, "reconciled": outcome.reconciled,
            "closed": outcome.closed}


@shared_task(name="worker.tasks.purge_expired_studies", acks_late=True)
def purge_expired_studies() -> dict[str, int]:
    """Delete studies past STUDY_RETENTION_DAYS with their files (a no-op when 0); runs
    every RETENTION_INTERVAL_S on the `default` queue (celery beat). Idempotent."""
    from backend.studies import deletion

    return {"studies_deleted": deletion.studies_purge_expired(
        retention_days=settings.STUDY_RETENTION_DAYS)}


@shared_task(name="worker.tasks.sweep_orphan_files", acks_late=True)
def sweep_orphan_files() -> dict[str, int]:
    """Delete stored files that no row refers to, older than ORPHAN_FILE_GRACE_S; runs every
    ORPHAN_SWEEP_INTERVAL_S on the `default` queue (celery beat). Idempotent."""
    from backend.studies import deletion

    outcome = deletion.storage_sweep_orphans(grace_s=settings.ORPHAN_FILE_GRACE_S)
    return {"files_deleted": outcome.files_deleted, "files_kept_young": outcome.files_kept_young}


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

