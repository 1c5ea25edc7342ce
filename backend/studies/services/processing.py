"""Writes for the inference workers: claiming a chunk, storing its results, failing images, and
the sweep of stuck images.

The worker hands over plain records (`ResultRecord`) and gets plain records back
(`ClaimedImage`): the ORM rows stay on this side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from backend.accounts.models import Hospital

from ..ingest import image_details
from ..models import Image, Result, Study, heatmap_storage_name, working_copy_storage_name
from .lifecycle import images_send, images_send_alone, study_close, study_refresh_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedImage:
    """What a worker needs to classify one claimed image: its id and its stored files."""

    id: UUID
    study_id: UUID
    file: str  # storage name of the original
    working_file: str = ""  # storage name of the working copy, if a decode made one
    decoded: bool = False  # decoded before (a retry): its details are known


@dataclass
class ClaimedChunk:
    images: list[ClaimedImage]  # to process now (status processing)
    given_up: list[UUID]  # failed here: a worker was lost on them too often
    set_aside: list[UUID] = field(default_factory=list)  # sent again, each in a chunk alone


@dataclass(frozen=True)
class DecodeRecord:
    """What an image's first decode found (the worker's sandbox), as the worker hands it over."""

    format: str
    height: int
    width: int
    metadata: dict[str, str] = field(default_factory=dict)  # ml.decode's DICOM allow-list
    working_file: str = ""  # storage name (working_copy_save), "" without a working copy


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
    # The scope gate (ml.scope): "" reason when in scope.
    in_scope: bool = True
    scope_reason: str = ""
    scope_source: str = ""
    in_scope_probability: float | None = None

    def as_row(self, *, withhold: bool = False) -> Result:
        """The row to store; `withhold` (out of scope, the hospital enforces the scope) keeps
        the verdict and drops every answer the model gave: no label, no probabilities."""
        answer = not (withhold and not self.in_scope)
        return Result(
            image_id=self.image_id, label=self.label if answer else "",
            probabilities=self.probabilities if answer else {},
            score=self.score if answer else None, threshold=self.threshold,
            model_name=self.model_name, model_version=self.model_version,
            bbox=self.bbox if answer else None, heatmap=self.heatmap if answer else "",
            etiology_label=self.etiology_label if answer else "",
            etiology_probabilities=self.etiology_probabilities if answer else {},
            inference_ms=self.inference_ms,
            scope=Result.Scope.IN_SCOPE if self.in_scope else Result.Scope.OUT_OF_SCOPE,
            scope_reason=self.scope_reason, scope_source=self.scope_source,
            in_scope_probability=self.in_scope_probability,
        )


def heatmap_save(*, image: ClaimedImage, png: bytes) -> str:
    """Write an image's heatmap PNG to storage; returns its storage name for the result."""
    return default_storage.save(heatmap_storage_name(study_id=image.study_id,
                                                     image_id=image.id), ContentFile(png))


def working_copy_save(*, image: ClaimedImage, jpeg: bytes) -> str:
    """Write an image's working copy (made by its first decode); returns its storage name."""
    return default_storage.save(working_copy_storage_name(image.study_id), ContentFile(jpeg))


def heatmaps_delete(*, names: Sequence[str]) -> None:
    """Delete heatmap files no result refers to (a batch that was not stored)."""
    for name in names:
        if name:
            default_storage.delete(name)


def chunk_claim(*, image_ids: Sequence[str | UUID], max_attempts: int, token: str = "",
                earlier_tokens: Sequence[str] = ()) -> ClaimedChunk:
    """Claim a chunk's unfinished images for processing, in one transaction.

    Finished images are skipped (a redelivered or repeated task does no work twice). An image
    still `processing` was lost by a worker (killed, crashed) unless one of this task's earlier
    tries (`earlier_tokens`) held it and stopped on a transient error: only the loss counts as
    an attempt. Every earlier try, not only the last: during an outage a retry can fail before
    it claims anything, and the images are still held by the try before it. An image lost
    `max_attempts` times is failed, so an image that kills its worker cannot loop. An image
    lost before is not processed with others again: when the chunk holds several images, each
    such image is set aside and sent again in a chunk of its own, so an image that crashes its
    worker fails alone. Set-based writes.
    """
    now = timezone.now()
    with transaction.atomic():
        images = list(
            Image.objects.select_for_update(of=("self",))
            .select_related("study")
            .only("id", "file", "working_file", "attempts", "study_id", "study__status",
                  "width", "status", "claimed_by")
            .filter(id__in=image_ids, status__in=[Image.Status.QUEUED, Image.Status.PROCESSING])
            .order_by("id")
        )
        held_before = {t[:80] for t in earlier_tokens if t}
        lost = [image for image in images if image.status == Image.Status.PROCESSING
                and image.claimed_by not in held_before]
        if lost:
            Image.objects.filter(id__in=[image.id for image in lost]).update(
                attempts=F("attempts") + 1)
            for image in lost:
                image.attempts += 1
        spent = [image for image in images if image.attempts >= max_attempts]
        live = [image for image in images if image.attempts < max_attempts]
        aside = [image for image in live if image.attempts > 0] if len(live) > 1 else []
        todo = [image for image in live if image not in aside]
        if todo:
            Image.objects.filter(id__in=[image.id for image in todo]).update(
                status=Image.Status.PROCESSING, started_at=now, claimed_by=token[:80])
        if aside:
            aside_ids = [image.id for image in aside]
            Image.objects.filter(id__in=aside_ids).update(
                status=Image.Status.QUEUED, sent_at=None, claimed_by="")
            transaction.on_commit(lambda: images_send_alone(image_ids=aside_ids), robust=True)
        for image in spent:  # rare: one UPDATE each, the message names the count
            Image.objects.filter(id=image.id).update(
                status=Image.Status.FAILED, finished_at=now, claimed_by="",
                error=(f"Gave up after {image.attempts} attempts: the worker processing this "
                       "image was lost each time."))
    given_up = [image.id for image in spent]
    if aside:
        logger.warning("%d images of a chunk were lost by a worker before: each is sent "
                       "again alone", len(aside))
    # A study already `processing` stays so while it has unfinished images: refresh only the
    # studies this claim can change (queued ones, or those with an image given up).
    stale = {image.study_id for image in images
             if image.study.status == Study.Status.QUEUED or image.id in given_up}
    for study_id in sorted(stale):
        study_refresh_status(study_id=study_id)
    return ClaimedChunk(images=[ClaimedImage(id=image.id, study_id=image.study_id,
                                             file=image.file.name,
                                             working_file=image.working_file.name or "",
                                             decoded=image.width is not None)
                                for image in todo], given_up=given_up,
                        set_aside=[image.id for image in aside])


def results_record_many(
    *, results: Sequence[ResultRecord], failures: dict[UUID, str] | None = None,
    rejections: dict[UUID, str] | None = None, decoded: dict[UUID, DecodeRecord] | None = None,
    on_committed: Callable[[], None] | None = None,
) -> int:
    """Store a batch's results, failures and rejections in one transaction; returns results
    stored.

    `results` are the worker's records (heatmap files already written); `rejections` are
    images refused by their content when decoded (status `rejected`); `decoded` is what the
    first decode of an image found (format, size, DICOM fields: the Image's fields, flags and
    notes follow from it). Images finished meanwhile (a duplicate delivery won the race) keep
    their first outcome: the later result is dropped and its heatmap deleted, so repeats never
    duplicate results or counts. Set-based writes: one INSERT of the results, one UPDATE per
    outcome, one bulk UPDATE of the decoded fields. `on_committed` runs once they are
    committed, before the studies' status is refreshed (which may still fail: the sweep then
    reconciles it).
    """
    failures, rejections, decoded = failures or {}, rejections or {}, decoded or {}
    ids = [r.image_id for r in results] + list(failures) + list(rejections)
    if not ids:
        return 0
    now = timezone.now()
    with transaction.atomic():
        open_images = {
            pk: (study_id, name) for pk, study_id, name in
            Image.objects.select_for_update().filter(id__in=ids)
            .exclude(status__in=Image.FINAL_STATUSES).order_by("id")
            .values_list("id", "study_id", "original_name")
        }
        fresh = [r for r in results if r.image_id in open_images]
        enforcing = set(
            Image.objects.filter(id__in=[r.image_id for r in fresh if not r.in_scope],
                                 study__hospital__scope_mode=Hospital.ScopeMode.ENFORCE)
            .values_list("id", flat=True))
        rows = [r.as_row(withhold=r.image_id in enforcing) for r in fresh]
        Result.objects.bulk_create(rows, ignore_conflicts=True)
        if fresh:
            Image.objects.filter(id__in=[r.image_id for r in fresh]).update(
                status=Image.Status.DONE, error="", finished_at=now, claimed_by="")
        for status, reasons in ((Image.Status.FAILED, failures),
                                (Image.Status.REJECTED, rejections)):
            by_reason: dict[str, list[UUID]] = {}
            for image_id, reason in reasons.items():
                if image_id in open_images:
                    by_reason.setdefault(reason[:2000], []).append(image_id)
            for reason, image_ids in by_reason.items():
                Image.objects.filter(id__in=image_ids).update(
                    status=status, error=reason, finished_at=now, claimed_by="")
        _decoded_update({pk: (open_images[pk][1], record) for pk, record in decoded.items()
                         if pk in open_images})
        if on_committed is not None:
            transaction.on_commit(on_committed)
    heatmaps_delete(names=[r.heatmap for r in results if r.image_id not in open_images]
                    # A withheld answer keeps no heatmap either.
                    + [r.heatmap for r in results if r.image_id in enforcing and r.heatmap])
    _refresh_if_finished({study_id for study_id, _ in open_images.values()})
    return len(fresh)


def _decoded_update(decoded: dict[UUID, tuple[str, DecodeRecord]]) -> None:
    """Fill in the Image fields a first decode found, one bulk UPDATE per set of fields."""
    by_fields: dict[tuple[str, ...], list[Image]] = {}
    for image_id, (name, record) in decoded.items():
        values = image_details(name, fmt=record.format, height=record.height,
                               width=record.width, metadata=record.metadata)
        if record.working_file:
            values["working_file"] = record.working_file
        by_fields.setdefault(tuple(sorted(values)), []).append(Image(id=image_id, **values))
    for fields, images in by_fields.items():
        Image.objects.bulk_update(images, list(fields))


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
    unsent: int = 0
    reconciled: int = 0
    closed: int = 0


def images_requeue_stuck(
    *, processing_deadline_s: float, queued_deadline_s: float, inference_queue_empty: bool,
    unsent_grace_s: float = 30.0, receiving_timeout_s: float = 3600.0,
    reconcile_after_s: float = 60.0,
) -> SweepOutcome:
    """The periodic sweep: whatever a failure left behind is put back on its way.

    * images a lost worker left in `processing` past the deadline are requeued (the loss
      counts as an attempt);
    * queued images that never got a message (the broker was down: `sent_at` NULL) are sent;
    * queued images whose message was lost (e.g. Redis restarted without persistence) are
      sent again, but only when the inference queue is empty;
    * studies whose status recomputation failed (all images finished, study still queued or
      processing) are recomputed, which also sends their webhook;
    * studies left receiving parts for `receiving_timeout_s` are closed.

    Sending an image twice is harmless: the worker skips finished images.
    """
    now = timezone.now()

    def ago(seconds: float) -> Any:
        return now - timezone.timedelta(seconds=seconds)

    stuck = list(
        Image.objects.filter(status=Image.Status.PROCESSING,
                             started_at__lt=ago(processing_deadline_s))
        .values_list("id", flat=True)[:5000]
    )
    unsent = list(
        Image.objects.filter(status=Image.Status.QUEUED, sent_at__isnull=True,
                             created_at__lt=ago(unsent_grace_s))
        .values_list("id", flat=True)[:5000]
    )
    lost: list[UUID] = []
    if inference_queue_empty:
        lost = list(
            Image.objects.filter(status=Image.Status.QUEUED,
                                 sent_at__lt=ago(queued_deadline_s))
            .values_list("id", flat=True)[:5000]
        )
    if stuck:
        # Back to queued so the study shows it is waiting again; started_at marks the requeue.
        Image.objects.filter(id__in=stuck, status=Image.Status.PROCESSING).update(
            status=Image.Status.QUEUED, started_at=now, attempts=F("attempts") + 1,
            claimed_by="")
        for study_id in set(Image.objects.filter(id__in=stuck)
                            .values_list("study_id", flat=True)):
            study_refresh_status(study_id=study_id)
        logger.warning("Requeued %d images stuck in processing", len(stuck))
    if unsent:
        logger.warning("Sending %d queued images that never got a message", len(unsent))
    if lost:
        logger.warning("Requeued %d queued images whose message was lost", len(lost))
    if stuck or lost or unsent:
        images_send(image_ids=[*stuck, *lost, *unsent])
    closed = list(Study.objects.filter(receiving=True, updated_at__lt=ago(receiving_timeout_s))
                  .values_list("id", flat=True)[:1000])
    for study_id in closed:
        study_close(study_id=study_id)
    return SweepOutcome(stuck_processing=len(stuck), lost_queued=len(lost), unsent=len(unsent),
                        reconciled=studies_reconcile(older_than_s=reconcile_after_s),
                        closed=len(closed))


def studies_reconcile(*, older_than_s: float) -> int:
    """Recompute the status of unfinished studies whose images have all finished.

    A recomputation that failed after the last results were stored (the database went away
    between the two transactions) left such a study `processing` for ever, its webhook never
    sent. Returns the number of studies fixed.
    """
    unfinished = Image.objects.filter(
        study_id=OuterRef("pk"), status__in=[Image.Status.QUEUED, Image.Status.PROCESSING])
    stale = list(
        Study.objects.filter(status__in=[Study.Status.QUEUED, Study.Status.PROCESSING],
                             receiving=False,
                             updated_at__lt=timezone.now() - timezone.timedelta(
                                 seconds=older_than_s))
        .filter(~Exists(unfinished)).values_list("id", flat=True)[:1000]
    )
    for study_id in stale:
        study_refresh_status(study_id=study_id)
    if stale:
        logger.warning("Recomputed the status of %d studies left unfinished", len(stale))
    return len(stale)
