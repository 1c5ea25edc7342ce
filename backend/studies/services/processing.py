"""Writes for the inference workers: claiming a chunk, storing its results, failing images, and
the sweep of stuck images.

The worker hands over plain records (`ResultRecord`) and gets plain records back
(`ClaimedImage`): the ORM rows stay on this side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..models import Image, Result, Study, heatmap_storage_name
from .lifecycle import images_send, study_refresh_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedImage:
    """What a worker needs to classify one claimed image: its id and its stored files."""

    id: UUID
    study_id: UUID
    file: str  # storage name of the original
    working_file: str = ""  # storage name of the working copy, if one was made at upload


@dataclass
class ClaimedChunk:
    images: list[ClaimedImage]  # to process now (status processing)
    given_up: list[UUID]  # failed here: claimed too often without ever getting a result


@dataclass
class ResultRecord:
    """One image's result as a worker hands it over (its heatmap file already written)."""

    image_id: UUID
    label: str
    probabilities: dict[str, float]
    score: float
    threshold: float
    model_name: str
    model_version: str
    bbox: list[float] | None = None
    heatmap: str = ""  # storage name (heatmap_save), "" without a heatmap
    etiology_label: str = ""
    etiology_probabilities: dict[str, float] = field(default_factory=dict)
    inference_ms: float | None = None

    def as_row(self) -> Result:
        return Result(
            image_id=self.image_id, label=self.label, probabilities=self.probabilities,
            score=self.score, threshold=self.threshold, model_name=self.model_name,
            model_version=self.model_version, bbox=self.bbox, heatmap=self.heatmap,
            etiology_label=self.etiology_label,
            etiology_probabilities=self.etiology_probabilities, inference_ms=self.inference_ms,
        )


def heatmap_save(*, image: ClaimedImage, png: bytes) -> str:
    """Write an image's heatmap PNG to storage; returns its storage name for the result."""
    return default_storage.save(heatmap_storage_name(study_id=image.study_id,
                                                     image_id=image.id), ContentFile(png))


def heatmaps_delete(*, names: Sequence[str]) -> None:
    """Delete heatmap files no result refers to (a batch that was not stored)."""
    for name in names:
        if name:
            default_storage.delete(name)


def chunk_claim(*, image_ids: Sequence[str | UUID], max_attempts: int) -> ClaimedChunk:
    """Claim a chunk's unfinished images for processing, in one transaction.

    Finished images are skipped (a redelivered or repeated task does no work twice); images
    left in processing by a dead worker are taken again, but an image already claimed
    `max_attempts` times is failed instead, so a chunk that kills its worker cannot loop.
    Set-based writes: one UPDATE for the whole chunk, not one per image.
    """
    now = timezone.now()
    with transaction.atomic():
        images = list(
            Image.objects.select_for_update(of=("self",))
            .select_related("study")
            .only("id", "file", "working_file", "attempts", "study_id", "study__status")
            .filter(id__in=image_ids, status__in=[Image.Status.QUEUED, Image.Status.PROCESSING])
            .order_by("id")
        )
        todo = [image for image in images if image.attempts < max_attempts]
        spent = [image for image in images if image.attempts >= max_attempts]
        if todo:
            Image.objects.filter(id__in=[image.id for image in todo]).update(
                status=Image.Status.PROCESSING, started_at=now, attempts=F("attempts") + 1)
        for image in todo:
            image.status, image.started_at, image.attempts = (
                Image.Status.PROCESSING, now, image.attempts + 1)
        for image in spent:  # rare: one UPDATE each, the message names the count
            Image.objects.filter(id=image.id).update(
                status=Image.Status.FAILED, finished_at=now,
                error=(f"Gave up after {image.attempts} attempts: the worker processing this "
                       "image stopped each time."))
    given_up = [image.id for image in spent]
    # A study already `processing` stays so while it has unfinished images: refresh only the
    # studies this claim can change (queued ones, or those with an image given up).
    stale = {image.study_id for image in images
             if image.study.status == Study.Status.QUEUED or image.id in given_up}
    for study_id in sorted(stale):
        study_refresh_status(study_id=study_id)
    return ClaimedChunk(images=[ClaimedImage(id=image.id, study_id=image.study_id,
                                             file=image.file.name,
                                             working_file=image.working_file.name or "")
                                for image in todo], given_up=given_up)


def results_record_many(
    *, results: Sequence[ResultRecord], failures: dict[UUID, str] | None = None,
    on_committed: Callable[[], None] | None = None,
) -> int:
    """Store a chunk's results and per-image failures in one transaction; returns results stored.

    `results` are the worker's records (heatmap files already written). Images finished
    meanwhile (a duplicate delivery won the race) keep their first result: the later one is
    dropped and its heatmap file deleted, so repeats never duplicate results or counts.
    Set-based writes: one INSERT of the results, one UPDATE per outcome. `on_committed` runs
    once they are committed, before the studies' status is refreshed (which may still fail).
    """
    failures = failures or {}
    ids = [r.image_id for r in results] + list(failures)
    if not ids:
        return 0
    now = timezone.now()
    with transaction.atomic():
        open_images = dict(
            Image.objects.select_for_update().filter(id__in=ids)
            .exclude(status__in=Image.FINAL_STATUSES).order_by("id")
            .values_list("id", "study_id")
        )
        fresh = [r for r in results if r.image_id in open_images]
        Result.objects.bulk_create([r.as_row() for r in fresh], ignore_conflicts=True)
        if fresh:
            Image.objects.filter(id__in=[r.image_id for r in fresh]).update(
                status=Image.Status.DONE, error="", finished_at=now)
        by_reason: dict[str, list[UUID]] = {}
        for image_id, reason in failures.items():
            if image_id in open_images:
                by_reason.setdefault(reason[:2000], []).append(image_id)
        for reason, failed_ids in by_reason.items():
            Image.objects.filter(id__in=failed_ids).update(
                status=Image.Status.FAILED, error=reason, finished_at=now)
        if on_committed is not None:
            transaction.on_commit(on_committed)
    heatmaps_delete(names=[r.heatmap for r in results if r.image_id not in open_images])
    _refresh_if_finished(set(open_images.values()))
    return len(fresh)


def _refresh_if_finished(study_ids: set[UUID]) -> None:
    """Refresh the studies with no unfinished image left (the others stay `processing`)."""
    unfinished = set(
        Image.objects.filter(study_id__in=study_ids,
                             status__in=[Image.Status.QUEUED, Image.Status.PROCESSING])
        .values_list("study_id", flat=True).distinct()
    )
    for study_id in sorted(study_ids - unfinished):
        study_refresh_status(study_id=study_id)


def images_fail_many(*, image_ids: Sequence[str | UUID], reason: str) -> int:
    """Fail the unfinished images among `image_ids` with one reason (e.g. a time limit)."""
    with transaction.atomic():
        images = dict(
            Image.objects.select_for_update().filter(id__in=image_ids)
            .exclude(status__in=Image.FINAL_STATUSES).order_by("id")
            .values_list("id", "study_id")
        )
        Image.objects.filter(id__in=list(images)).update(
            status=Image.Status.FAILED, error=reason[:2000], finished_at=timezone.now())
    for study_id in sorted(set(images.values())):
        study_refresh_status(study_id=study_id)
    return len(images)


@dataclass(frozen=True)
class SweepOutcome:
    stuck_processing: int
    lost_queued: int


def images_requeue_stuck(
    *, processing_deadline_s: float, queued_deadline_s: float, inference_queue_empty: bool
) -> SweepOutcome:
    """Requeue images a dead worker left in `processing` past the deadline.

    Queued images older than `queued_deadline_s` are requeued too, but only when the inference
    queue is empty (their message was lost, e.g. Redis restarted without persistence). Sending
    an image twice is harmless: the worker skips finished images.
    """
    now = timezone.now()
    stuck = list(
        Image.objects.filter(
            status=Image.Status.PROCESSING,
            started_at__lt=now - timezone.timedelta(seconds=processing_deadline_s),
        ).values_list("id", flat=True)[:5000]
    )
    lost: list[UUID] = []
    if inference_queue_empty:
        lost = list(
            Image.objects.filter(
                status=Image.Status.QUEUED,
                created_at__lt=now - timezone.timedelta(seconds=queued_deadline_s),
            ).values_list("id", flat=True)[:5000]
        )
    if stuck:
        # Back to queued so the study shows it is waiting again; started_at marks the requeue.
        Image.objects.filter(id__in=stuck, status=Image.Status.PROCESSING).update(
            status=Image.Status.QUEUED, started_at=now)
        for study_id in set(Image.objects.filter(id__in=stuck)
                            .values_list("study_id", flat=True)):
            study_refresh_status(study_id=study_id)
        logger.warning("Requeued %d images stuck in processing", len(stuck))
    if lost:
        logger.warning("Requeued %d queued images whose message was lost", len(lost))
    if stuck or lost:
        images_send(image_ids=[*stuck, *lost])
    return SweepOutcome(stuck_processing=len(stuck), lost_queued=len(lost))
