"""A study's lifecycle: its status derived from its images, cancel and retry, and sending its
images (and its finished webhook) to the workers through backend.studies.dispatch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from backend.accounts.models import Hospital

from .. import dispatch
from ..models import Image, Study

logger = logging.getLogger(__name__)

FINISHED_STATUSES = (
    Study.Status.DONE, Study.Status.DONE_WITH_ERRORS, Study.Status.FAILED,
    Study.Status.CANCELLED,
)


class StudyStateError(Exception):
    """The study is not in a state that allows the operation; the message is user-facing."""


def study_cancel(*, study_id: UUID) -> int:
    """Cancel the study's queued images; images already being processed finish normally."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(id=study_id)
        if study.status not in (Study.Status.QUEUED, Study.Status.PROCESSING):
            raise StudyStateError(f"A {study.status} study cannot be cancelled; only queued "
                                  "or processing studies can.")
        cancelled = study.images.filter(status=Image.Status.QUEUED).update(
            status=Image.Status.CANCELLED, error="Cancelled by a user.",
            finished_at=timezone.now(),
        )
    study_refresh_status(study_id=study_id)
    return cancelled


def study_retry(*, study_id: UUID) -> int:
    """Put the study's failed images back in the queue; they are sent after commit."""
    with transaction.atomic():
        study = Study.objects.select_for_update().get(id=study_id)
        failed = study.images.filter(status=Image.Status.FAILED)
        # A user's retry gets a fresh attempts budget (the worker gives up after N claims).
        retried = failed.update(status=Image.Status.QUEUED, error="", started_at=None,
                                finished_at=None, attempts=0, sent_at=None, claimed_by="")
        if not retried:
            raise StudyStateError("This study has no failed images to retry.")
        transaction.on_commit(lambda: study_enqueue_safely(study_id=study_id), robust=True)
    study_refresh_status(study_id=study_id)
    return retried


def study_close(*, study_id: UUID) -> int:
    """No more parts: the study finishes once its images do. Returns its number of images."""
    Study.objects.filter(id=study_id, receiving=True).update(receiving=False,
                                                              updated_at=timezone.now())
    study = study_refresh_status(study_id=study_id)
    return study.images.count()


def webhook_enqueue(*, study_id: UUID) -> None:
    """Send the finished study's webhook task; a broker outage must not break the caller."""
    try:
        dispatch.webhook_send(study_id=study_id)
    except Exception:
        logger.exception("Could not queue the webhook for study %s", study_id)


def study_enqueue(*, study_id: UUID) -> int:
    """Send the study's queued images that have no message yet; returns tasks sent."""
    ids = list(Image.objects.filter(study_id=study_id, status=Image.Status.QUEUED,
                                    sent_at__isnull=True)
               .order_by("created_at").values_list("id", flat=True))
    return images_send(image_ids=ids)


def study_enqueue_safely(*, study_id: UUID) -> int:
    """`study_enqueue` after a commit: a broker outage must not fail the request.

    The images stay `queued` without a message (`sent_at` NULL): the sweep sends them once
    the broker is back (the outbox), and nothing stored is lost.
    """
    try:
        return study_enqueue(study_id=study_id)
    except Exception as exc:
        logger.warning("Could not queue the images of study %s (%r); the sweep will send "
                       "them once the broker is back", study_id, exc)
        return 0


def derive_study_status(counts: dict[str, int], total: int, *, receiving: bool = False) -> str:
    """A study's status follows from the statuses of its images.

    Images rejected by their content count as errors next to the others (`done_with_errors`),
    or make the study `failed` when none was classified. A study still receiving parts never
    finishes: it is `processing` once anything started (`queued` before).
    """
    unfinished = counts.get("queued", 0) + counts.get("processing", 0)
    if unfinished or receiving:
        if counts.get("queued", 0) == total:
            return Study.Status.QUEUED
        return Study.Status.PROCESSING
    if counts.get("cancelled", 0):
        return Study.Status.CANCELLED
    errors = counts.get("failed", 0) + counts.get("rejected", 0)
    if not errors:
        return Study.Status.DONE
    if not counts.get("done", 0):
        return Study.Status.FAILED
    return Study.Status.DONE_WITH_ERRORS


def study_refresh_status(*, study_id: UUID) -> Study:
    with transaction.atomic():
        study = Study.objects.select_for_update().get(id=study_id)
        agg = study.images.aggregate(
            total=Count("id"),
            **{s: Count("id", filter=Q(status=s)) for s in Image.Status.values},
        )
        total = agg.pop("total")
        status = derive_study_status(agg, total, receiving=study.receiving)
        if status != study.status:
            study.status = status
            finished = status in FINISHED_STATUSES
            study.finished_at = timezone.now() if finished else None
            study.save(update_fields=["status", "finished_at", "updated_at"])
            if finished and Hospital.objects.filter(
                id=study.hospital_id
            ).exclude(webhook_url="").exists():
                transaction.on_commit(lambda: webhook_enqueue(study_id=study_id))
    return study


def images_send(*, image_ids: Sequence[str | UUID]) -> int:
    """Send images (of any studies) to the inference queue in chunks, at their study's
    priority, and mark each chunk sent (`sent_at`) once the broker has it.

    The first chunk the broker refuses stops the sending and raises: the images not sent keep
    `sent_at` NULL, so the sweep sends them later.
    """
    by_priority: dict[int, list[str]] = {}
    rows = (Image.objects.filter(id__in=image_ids).order_by("study_id", "created_at")
            .values_list("id", "study__priority"))
    for pk, study_priority in rows:
        by_priority.setdefault(dispatch.queue_priority(study_priority), []).append(str(pk))
    sent = 0
    for priority, ids in sorted(by_priority.items()):
        for chunk in dispatch.chunk_split(ids, max_size=settings.INFERENCE_CHUNK_SIZE):
            sent += dispatch.inference_send(image_ids=chunk, priority=priority)
            Image.objects.filter(id__in=chunk).update(sent_at=timezone.now())
    return sent


def images_send_alone(*, image_ids: Sequence[str | UUID]) -> int:
    """Send each image in a chunk of its own (images a worker was lost on before)."""
    sent = 0
    rows = Image.objects.filter(id__in=image_ids).values_list("id", "study__priority")
    for pk, study_priority in rows:
        sent += dispatch.inference_send(image_ids=[str(pk)],
                                        priority=dispatch.queue_priority(study_priority))
        Image.objects.filter(id=pk).update(sent_at=timezone.now())
    return sent
