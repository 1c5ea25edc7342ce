"""Writes for studies, images and results."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from backend.accounts.models import User

from .ingest import InspectedFile, Rejection, inspect_file
from .models import Image, Result, Study

logger = logging.getLogger(__name__)

INFER_TASK = "worker.tasks.infer_images"


@dataclass
class StudyCreateOutcome:
    study: Study | None
    accepted: list[Image] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _inspect_uploads(
    uploads: Iterable[UploadedFile],
) -> tuple[list[InspectedFile], list[Rejection]]:
    accepted: list[InspectedFile] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for upload in uploads:
        name = upload.name or "unnamed"
        if upload.size is not None and upload.size > settings.MAX_UPLOAD_FILE_BYTES:
            rejected.append(Rejection(name, "The file is larger than the upload limit of "
                                            f"{settings.MAX_UPLOAD_FILE_BYTES} bytes."))
            continue
        outcome = inspect_file(name, upload.read(), max_bytes=settings.MAX_UPLOAD_FILE_BYTES)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        elif outcome.sha256 in seen:
            rejected.append(Rejection(name, "Duplicate of another file in this study."))
        else:
            seen.add(outcome.sha256)
            accepted.append(outcome)
    return accepted, rejected


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
            rejected=[Rejection("*", f"A study holds at most {settings.MAX_FILES_PER_STUDY} files.")],
        )
    inspected, rejected = _inspect_uploads(uploads)
    if not inspected:
        return StudyCreateOutcome(study=None, rejected=rejected)
    with transaction.atomic():
        study = Study.objects.create(
            hospital=user.hospital, created_by=user, name=name,
            accession_number=accession_number, priority=priority,
        )
        images = []
        for item in inspected:
            image = Image(
                study=study, original_name=item.name[:500], sha256=item.sha256,
                size_bytes=len(item.data), format=item.format, width=item.width,
                height=item.height, flags=item.flags, **item.fields,
            )
            image.file.save(item.name, ContentFile(item.data), save=False)
            image.save()
            images.append(image)
        study_id = study.id
        transaction.on_commit(lambda: study_enqueue(study_id=study_id))
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)


def study_enqueue(*, study_id: UUID) -> int:
    """Send the study's queued images to the inference queue in chunks; returns tasks sent."""
    from worker.celery_app import app  # the web process sends by name; it never runs tasks

    study = Study.objects.get(id=study_id)
    ids = [
        str(pk) for pk in study.images.filter(status=Image.Status.QUEUED)
        .order_by("created_at").values_list("id", flat=True)
    ]
    size = settings.INFERENCE_CHUNK_SIZE
    # Redis priorities: lower number is served first.
    priority = 0 if study.priority == Study.Priority.URGENT else 5
    chunks = [ids[i:i + size] for i in range(0, len(ids), size)]
    for chunk in chunks:
        app.send_task(INFER_TASK, args=[chunk], queue="inference", priority=priority)
    return len(chunks)


def images_claim(*, image_ids: Sequence[str | UUID]) -> list[Image]:
    """Mark images as processing and return those still to do.

    Images already finished are skipped, so a redelivered task does no work twice; images left
    in processing by a dead worker are taken again.
    """
    now = timezone.now()
    with transaction.atomic():
        images = list(
            Image.objects.select_for_update()
            .filter(id__in=image_ids, status__in=[Image.Status.QUEUED, Image.Status.PROCESSING])
            .order_by("id")
        )
        for image in images:
            image.status = Image.Status.PROCESSING
            image.started_at = now
            image.attempts += 1
        Image.objects.bulk_update(images, ["status", "started_at", "attempts"])
    study_ids = {image.study_id for image in images}
    for study_id in study_ids:
        study_refresh_status(study_id=study_id)
    return images


@dataclass(frozen=True)
class ResultData:
    label: str
    probabilities: dict[str, float]
    score: float
    threshold: float
    model_name: str
    model_version: str
    etiology_label: str = ""
    etiology_probabilities: dict[str, float] = field(default_factory=dict)
    bbox: list[float] | None = None
    heatmap_png: bytes | None = None
    inference_ms: float | None = None


def result_record(*, image_id: UUID | str, data: ResultData) -> Result | None:
    """Store an image's result once; a repeat for a finished image changes nothing."""
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        if image.status in Image.FINAL_STATUSES:
            return None
        result = Result(
            image=image, label=data.label, probabilities=data.probabilities, score=data.score,
            threshold=data.threshold, model_name=data.model_name,
            model_version=data.model_version, etiology_label=data.etiology_label,
            etiology_probabilities=data.etiology_probabilities, bbox=data.bbox,
            inference_ms=data.inference_ms,
        )
        if data.heatmap_png:
            result.heatmap.save("heatmap.png", ContentFile(data.heatmap_png), save=False)
        result.save()
        image.status = Image.Status.DONE
        image.error = ""
        image.finished_at = timezone.now()
        image.save(update_fields=["status", "error", "finished_at"])
    study_refresh_status(study_id=image.study_id)
    return result


def image_fail(*, image_id: UUID | str, reason: str) -> None:
    with transaction.atomic():
        image = Image.objects.select_for_update().get(id=image_id)
        if image.status in Image.FINAL_STATUSES:
            return
        image.status = Image.Status.FAILED
        image.error = reason[:2000]
        image.finished_at = timezone.now()
        image.save(update_fields=["status", "error", "finished_at"])
    study_refresh_status(study_id=image.study_id)


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
            finished = status not in (Study.Status.QUEUED, Study.Status.PROCESSING)
            study.finished_at = timezone.now() if finished else None
            study.save(update_fields=["status", "finished_at", "updated_at"])
    return study
