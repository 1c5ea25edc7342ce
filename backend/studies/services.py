"""Writes for studies, images and results."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from backend.accounts.models import Hospital, User

from . import dispatch
from .ingest import Rejection, ScreenedFile, ZipLimits, expand_zip, is_zip, screen_file
from .models import Image, Result, Study, image_storage_name

logger = logging.getLogger(__name__)

FINISHED_STATUSES = (
    Study.Status.DONE, Study.Status.DONE_WITH_ERRORS, Study.Status.FAILED,
    Study.Status.CANCELLED,
)


class StudyStateError(Exception):
    """The study is not in a state that allows the operation; the message is user-facing."""


@dataclass
class StudyCreateOutcome:
    study: Study | None
    accepted: list[Image] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _zip_limits() -> ZipLimits:
    return ZipLimits(
        max_entries=settings.MAX_ZIP_ENTRIES,
        max_total_bytes=settings.MAX_ZIP_UNCOMPRESSED_BYTES,
        max_ratio=settings.MAX_ZIP_RATIO,
        max_entry_bytes=settings.MAX_UPLOAD_FILE_BYTES,
    )


def _candidates(uploads: Iterable[UploadedFile]) -> Iterator[tuple[str, bytes] | Rejection]:
    """Each uploaded file, or each member of an uploaded ZIP archive, one at a time."""
    limit = settings.MAX_UPLOAD_FILE_BYTES
    for upload in uploads:
        name = (upload.name or "unnamed")[:300]
        upload.seek(0)
        head = upload.read(4)
        upload.seek(0)
        if is_zip(name, head):
            if upload.size is not None and upload.size > settings.MAX_ZIP_UNCOMPRESSED_BYTES:
                yield Rejection(name, "The archive is larger than the limit of "
                                      f"{settings.MAX_ZIP_UNCOMPRESSED_BYTES} bytes.")
                continue
            # The archive is read in place (a temporary file for large uploads), never whole.
            yield from expand_zip(name, upload.file, limits=_zip_limits())
            continue
        if upload.size is not None and upload.size > limit:
            yield Rejection(name, f"The file is larger than the upload limit of {limit} bytes.")
            continue
        yield name, upload.read(limit + 1)


def _store_screened(
    uploads: Iterable[UploadedFile], *, study_id: UUID, seen: set[str], room: int,
    stored: list[str],
) -> tuple[list[tuple[ScreenedFile, str]], list[Rejection]]:
    """Screen every candidate (no decoding) and store each one that passes, one at a time.

    `seen` holds the SHA-256 of the files already in the study; `room` is how many more it
    may hold. Every stored name is appended to `stored` at once, so the caller can remove
    them if the rows are never committed.
    """
    accepted: list[tuple[ScreenedFile, str]] = []
    rejected: list[Rejection] = []
    for candidate in _candidates(uploads):
        outcome = (candidate if isinstance(candidate, Rejection)
                   else screen_file(*candidate, max_bytes=settings.MAX_UPLOAD_FILE_BYTES))
        if not isinstance(outcome, Rejection) and len(accepted) >= room:
            outcome = Rejection(outcome.name, "A study holds at most "
                                              f"{settings.MAX_FILES_PER_STUDY} files.")
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        elif outcome.sha256 in seen:
            rejected.append(Rejection(outcome.name, "Duplicate of another file in this study "
                                                    "(same SHA-256)."))
        else:
            seen.add(outcome.sha256)
            name = default_storage.save(image_storage_name(study_id), ContentFile(outcome.data))
            stored.append(name)
            accepted.append((replace(outcome, data=b""), name))  # the bytes can be freed
    return accepted, rejected


def _image_rows(study: Study, accepted: list[tuple[ScreenedFile, str]]) -> list[Image]:
    return Image.objects.bulk_create([
        Image(study=study, file=name, original_name=item.name[:500], sha256=item.sha256,
              size_bytes=item.size, format=item.format)
        for item, name in accepted
    ])


def _delete_uncommitted(stored: list[str]) -> None:
    """Remove the files of rows that were never committed (the request failed before)."""
    for name in stored:
        with contextlib.suppress(Exception):  # best effort; the orphan sweep catches the rest
            default_storage.delete(name)


def study_create(
    *,
    user: User,
    uploads: Sequence[UploadedFile],
    name: str = "",
    accession_number: str = "",
    priority: str = Study.Priority.ROUTINE,
    receiving: bool = False,
) -> StudyCreateOutcome:
    """Store the files of an upload as a new study and queue them for the workers.

    Nothing is decoded here: files are checked by size, leading bytes and duplicates, stored,
    and decoded by the worker that classifies them (a file refused by its content then gets
    the status `rejected`). Invalid files never prevent their neighbours from being stored.
    With `receiving`, the study stays open for more parts (`study_append`) until
    `study_close`; it may then start empty.
    """
    if len(uploads) > settings.MAX_FILES_PER_STUDY:
        return StudyCreateOutcome(
            study=None,
            rejected=[Rejection("*", f"A study holds at most {settings.MAX_FILES_PER_STUDY} "
                                     f"files; {len(uploads)} were sent.")],
        )
    study_id = uuid.uuid4()
    stored: list[str] = []
    committed = False
    try:
        accepted, rejected = _store_screened(uploads, study_id=study_id, seen=set(),
                                             room=settings.MAX_FILES_PER_STUDY, stored=stored)
        if not accepted and not receiving:
            _delete_uncommitted(stored)
            return StudyCreateOutcome(study=None, rejected=rejected)
        with transaction.atomic():
            study = Study.objects.create(
                id=study_id, hospital=user.hospital, created_by=user, name=name,
                accession_number=accession_number, priority=priority, receiving=receiving,
            )
            images = _image_rows(study, accepted)
            transaction.on_commit(lambda: study_enqueue_safely(study_id=study_id), robust=True)
        committed = True
    finally:
        # Files are deleted only when their rows were never committed: once committed, an
        # error in what follows (e.g. the broker is down) must never lose an accepted file.
        if not committed:
            _delete_uncommitted(stored)
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)


def study_append(*, study_id: UUID, uploads: Sequence[UploadedFile]) -> StudyCreateOutcome:
    """Add one more part of files to a study that is still receiving (an upload in parts)."""
    study = Study.objects.get(id=study_id)
    if not study.receiving:
        raise StudyStateError("This study is closed: create a study with receiving=true to "
                              "upload it in several parts.")
    existing = list(study.images.values_list("sha256", flat=True))
    room = max(0, settings.MAX_FILES_PER_STUDY - len(existing))
    stored: list[str] = []
    committed = False
    try:
        accepted, rejected = _store_screened(uploads, study_id=study_id, seen=set(existing),
                                             room=room, stored=stored)
        with transaction.atomic():
            study = Study.objects.select_for_update().get(id=study_id)
            if not study.receiving:  # closed while this part was being stored
                raise StudyStateError("This study was closed while the part was uploading.")
            images = _image_rows(study, accepted)
            Study.objects.filter(id=study_id).update(updated_at=timezone.now())
            transaction.on_commit(lambda: study_enqueue_safely(study_id=study_id), robust=True)
        committed = True
    finally:
        if not committed:
            _delete_uncommitted(stored)
    study_refresh_status(study_id=study_id)
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)


def study_close(*, study_id: UUID) -> int:
    """No more parts: the study finishes once its images do. Returns its number of images."""
    Study.objects.filter(id=study_id, receiving=True).update(receiving=False,
                                                              updated_at=timezone.now())
    study = study_refresh_status(study_id=study_id)
    return study.images.count()


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


# --- Inference worker (owned by the worker fleet: batched writes, sweep) -----------------------


@dataclass
class ClaimedChunk:
    images: list[Image]  # to process now (status processing)
    given_up: list[UUID]  # failed here: a worker was lost on them too often
    set_aside: list[UUID] = field(default_factory=list)  # sent again, each in a chunk alone


def chunk_claim(*, image_ids: Sequence[str | UUID], max_attempts: int, token: str = "",
                previous_token: str = "") -> ClaimedChunk:
    """Claim a chunk's unfinished images for processing, in one transaction.

    Finished images are skipped (a redelivered or repeated task does no work twice). An image
    still `processing` was lost by a worker (killed, crashed) unless this task's previous try
    (`previous_token`) held it and stopped on a transient error: only the loss counts as an
    attempt. An image lost `max_attempts` times is failed, so an image that kills its worker
    cannot loop. An image lost before is not processed with others again: when the chunk
    holds several images, each such image is set aside and sent again in a chunk of its own,
    so an image that crashes its worker fails alone. Set-based writes.
    """
    now = timezone.now()
    with transaction.atomic():
        images = list(
            Image.objects.select_for_update(of=("self",))
            .select_related("study")
            .only("id", "file", "working_file", "attempts", "study_id", "study__status",
                  "study__priority", "width", "original_name", "status", "claimed_by")
            .filter(id__in=image_ids, status__in=[Image.Status.QUEUED, Image.Status.PROCESSING])
            .order_by("id")
        )
        lost = [image for image in images if image.status == Image.Status.PROCESSING
                and not (previous_token and image.claimed_by == previous_token)]
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
        for image in todo:
            image.status, image.started_at = Image.Status.PROCESSING, now
        if aside:
            Image.objects.filter(id__in=[image.id for image in aside]).update(
                status=Image.Status.QUEUED, sent_at=None, claimed_by="")
            singles = [(str(image.id), dispatch.queue_priority(image.study.priority))
                       for image in aside]
            transaction.on_commit(lambda: _send_alone(singles), robust=True)
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
    return ClaimedChunk(images=todo, given_up=given_up, set_aside=[i.id for i in aside])


def _send_alone(singles: list[tuple[str, int]]) -> None:
    """One chunk per image (after the claim commits); unsent ones are left to the sweep."""
    for image_id, priority in singles:
        dispatch.inference_send(image_ids=[image_id], priority=priority)
        Image.objects.filter(id=image_id).update(sent_at=timezone.now())


def results_record_many(
    *, results: Sequence[Result], failures: dict[UUID, str] | None = None,
    rejections: dict[UUID, str] | None = None,
    details: dict[UUID, dict[str, Any]] | None = None,
    on_committed: Callable[[], None] | None = None,
) -> int:
    """Store a batch's results, per-image failures and rejections in one transaction; returns
    results stored.

    `results` are unsaved Result objects (heatmap files already written); `rejections` are
    images refused by their content when decoded (status `rejected`); `details` are the
    Image fields their first decode filled in (format, size, DICOM fields, flags, working
    copy). Images finished meanwhile (a duplicate delivery won the race) keep their first
    outcome: the later result is dropped and its heatmap deleted, so repeats never duplicate
    results or counts. Set-based writes: one INSERT of the results, one UPDATE per outcome,
    one bulk UPDATE of the details. `on_committed` runs once they are committed, before the
    studies' status is refreshed (which may still fail: the sweep reconciles it).
    """
    failures, rejections, details = failures or {}, rejections or {}, details or {}
    ids = [r.image_id for r in results] + list(failures) + list(rejections)
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
        Result.objects.bulk_create(fresh, ignore_conflicts=True)
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
        _details_update({k: v for k, v in details.items() if k in open_images})
        if on_committed is not None:
            transaction.on_commit(on_committed)
    for stale in (r for r in results if r.image_id not in open_images):
        if stale.heatmap:
            stale.heatmap.delete(save=False)
    _refresh_if_finished(set(open_images.values()))
    return len(fresh)


def _details_update(details: dict[UUID, dict[str, Any]]) -> None:
    """Fill in the fields a decode found, in one bulk UPDATE per set of fields."""
    by_fields: dict[tuple[str, ...], list[Image]] = {}
    for image_id, values in details.items():
        image = Image(id=image_id, **values)
        by_fields.setdefault(tuple(sorted(values)), []).append(image)
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
    ago = lambda seconds: now - timezone.timedelta(seconds=seconds)  # noqa: E731
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
