"""A study's lifecycle: its status derived from its images, cancel and retry, and sending its
images (and its finished webhook) to the workers through backend.studies.dispatch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

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
                                finished_at=None, attempts=0)
        if not retried:
            raise StudyStateError("This study has no failed images to retry.")
        transaction.on_commit(lambda: study_enqueue(study_id=study_id))
    study_refresh_status(study_id=study_id)
    return retried


def webhook_enqueue(*, study_id: UUID) -> None:
    """Send the finished study's webhook task; a broker outage must not break the caller."""
    try:
        dispatch.webhook_send(study_id=study_id)
    except Exception:
        logger.exception("Could not queue the webhook for study %s", study_id)


def study_enqueue(*, study_id: UUID) -> int:
    """Send the study's queued images to the inference queue in chunks; returns tasks sent."""
    study = Study.objects.get(id=study_id)
    ids = [
        str(pk) for pk in study.images.filter(status=Image.Status.QUEUED)
        .order_by("created_at").values_list("id", flat=True)
    ]
    return dispatch.inference_send(image_ids=ids,
                                   priority=dispatch.queue_priority(study.priority))


def derive_study_status(counts: dict[str, int], total: int) -> str:
    """A study's status follows from the statuses of its images."""
    unfinished = counts.get("queued", 0) + counts.get("processing", 0)
    if unfinished:
        return Study.Status.QUEUED if counts.get("queued", 0) == total else Study.Status.PROCESSING
    if counts.get("cancelled", 0):
        return Study.Status.CANCELLED
    if not counts.get("failed", 0):
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
        status = derive_study_status(agg, total)
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
    """Send images (of any studies) to the inference queue in chunks, at their study's priority."""
    by_priority: dict[int, list[str]] = {}
    rows = (Image.objects.filter(id__in=image_ids).order_by("study_id", "created_at")
            .values_list("id", "study__priority"))
    for pk, study_priority in rows:
        by_priority.setdefault(dispatch.queue_priority(study_priority), []).append(str(pk))
    return sum(dispatch.inference_send(image_ids=ids, priority=priority)
               for priority, ids in sorted(by_priority.items()))
