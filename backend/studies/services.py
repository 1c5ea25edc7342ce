"""Writes for studies, images and results."""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from uuid import UUID

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from backend.accounts.models import Hospital, User
from backend.config.sizing import upload_decode_threads

from . import dispatch
from .ingest import InspectedFile, Rejection, ZipLimits, expand_zip, inspect_file, is_zip
from .models import Image, Result, Study, image_storage_name, working_copy_storage_name

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


@dataclass
class StoredFiles:
    """Storage names of one accepted upload: the original and its working copy, if any."""

    original: str
    working: str = ""

    def delete(self) -> None:
        for name in (self.original, self.working):
            if name:
                default_storage.delete(name)


def _inspected(
    candidates: Iterable[tuple[str, bytes] | Rejection],
) -> Iterator[InspectedFile | Rejection]:
    """Each candidate inspected (decoded and checked), in order, several files at a time.

    Decoding is the cost of an upload (a compressed DICOM: 100-700 ms) and the decoders
    release the GIL, so UPLOAD_DECODE_THREADS files are decoded at once; at most twice that
    many are held in memory.
    """
    threads = upload_decode_threads(settings.UPLOAD_DECODE_THREADS)

    def inspect(name: str, data: bytes) -> InspectedFile | Rejection:
        return inspect_file(name, data, max_bytes=settings.MAX_UPLOAD_FILE_BYTES,
                            working_copies=settings.WORKING_COPIES)

    window: deque[Future[InspectedFile | Rejection] | Rejection] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload-decode") as pool:
        try:
            for candidate in candidates:
                window.append(candidate if isinstance(candidate, Rejection)
                              else pool.submit(inspect, *candidate))
                while len(window) > 2 * threads:
                    yield _outcome(window.popleft())
            while window:
                yield _outcome(window.popleft())
        finally:
            for pending in window:  # the request failed: do not decode the rest
                if isinstance(pending, Future):
                    pending.cancel()


def _outcome(item: Future[InspectedFile | Rejection] | Rejection) -> InspectedFile | Rejection:
    return item if isinstance(item, Rejection) else item.result()


def _inspect_and_store(
    uploads: Iterable[UploadedFile], *, study_id: UUID, stored: list[StoredFiles]
) -> tuple[list[tuple[InspectedFile, StoredFiles]], list[Rejection]]:
    """Decode every candidate and store each valid one at once, so memory holds one file.

    Every file written is appended to `stored` at once, so the caller can remove them all if
    a later one fails.
    """
    accepted: list[tuple[InspectedFile, StoredFiles]] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for outcome in _inspected(_candidates(uploads)):
        if not isinstance(outcome, Rejection) and len(accepted) >= settings.MAX_FILES_PER_STUDY:
            outcome = Rejection(outcome.name, "A study holds at most "
                                              f"{settings.MAX_FILES_PER_STUDY} files.")
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        elif outcome.sha256 in seen:
            rejected.append(Rejection(outcome.name, "Duplicate of another file in this study "
                                                    "(same SHA-256)."))
        else:
            seen.add(outcome.sha256)
            files = StoredFiles(original=default_storage.save(
                image_storage_name(study_id), ContentFile(outcome.data)))
            stored.append(files)
            if outcome.working_copy:
                files.working = default_storage.save(
                    working_copy_storage_name(study_id), ContentFile(outcome.working_copy))
            accepted.append((_without_data(outcome), files))
    return accepted, rejected


def _without_data(item: InspectedFile) -> InspectedFile:
    """The inspection minus the file bytes (already stored), so they can be freed."""
    return replace(item, data=b"", working_copy=b"", size=len(item.data))


def study_create(
    *,
    user: User,
    uploads: Sequence[UploadedFile],
    name: str = "",
    accession_number: str = "",
    priority: str = Study.Priority.ROUTINE,
) -> StudyCreateOutcome:
    """Store the valid files of an upload as a new study and queue them for inference.

    Invalid files are reported and never prevent their valid neighbours from being stored.
    """
    if len(uploads) > settings.MAX_FILES_PER_STUDY:
        return StudyCreateOutcome(
            study=None,
            rejected=[Rejection("*", f"A study holds at most {settings.MAX_FILES_PER_STUDY} "
                                     f"files; {len(uploads)} were sent.")],
        )
    study_id = uuid.uuid4()
    stored: list[StoredFiles] = []
    try:
        inspected, rejected = _inspect_and_store(uploads, study_id=study_id, stored=stored)
        if not inspected:
            return StudyCreateOutcome(study=None, rejected=rejected)
        with transaction.atomic():
            study = Study.objects.create(
                id=study_id, hospital=user.hospital, created_by=user, name=name,
                accession_number=accession_number, priority=priority,
            )
            images = Image.objects.bulk_create([
                Image(
                    study=study, file=files.original, working_file=files.working,
                    original_name=item.name[:500], sha256=item.sha256,
                    size_bytes=item.size, format=item.format,
                    width=item.width, height=item.height, flags=item.flags, notes=item.notes,
                    **item.fields,
                )
                for item, files in inspected
            ])
            transaction.on_commit(lambda: study_enqueue(study_id=study_id))
    except BaseException:
        for files in stored:
            files.delete()
        raise
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)


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


# --- Inference worker (owned by the worker fleet: batched writes, sweep) -----------------------


@dataclass
class ClaimedChunk:
    images: list[Image]  # to process now (status processing)
    given_up: list[UUID]  # failed here: claimed too often without ever getting a result


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
    return ClaimedChunk(images=todo, given_up=given_up)


def results_record_many(
    *, results: Sequence[Result], failures: dict[UUID, str] | None = None,
    on_committed: Callable[[], None] | None = None,
) -> int:
    """Store a chunk's results and per-image failures in one transaction; returns results stored.

    `results` are unsaved Result objects (heatmap files already written). Images finished
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
        Result.objects.bulk_create(fresh, ignore_conflicts=True)
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
    for stale in (r for r in results if r.image_id not in open_images):
        if stale.heatmap:
            stale.heatmap.delete(save=False)
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


def images_send(*, image_ids: Sequence[str | UUID]) -> int:
    """Send images (of any studies) to the inference queue in chunks, at their study's priority."""
    by_priority: dict[int, list[str]] = {}
    rows = (Image.objects.filter(id__in=image_ids).order_by("study_id", "created_at")
            .values_list("id", "study__priority"))
    for pk, study_priority in rows:
        by_priority.setdefault(dispatch.queue_priority(study_priority), []).append(str(pk))
    return sum(dispatch.inference_send(image_ids=ids, priority=priority)
               for priority, ids in sorted(by_priority.items()))


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
