"""Reads for studies, always scoped to the caller's hospital."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.shortcuts import get_object_or_404

from backend.accounts.models import User

from .models import Image, Study


def study_list(
    *,
    user: User,
    status: str = "",
    priority: str = "",
    search: str = "",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[Study]:
    """The hospital's studies, newest first, filtered; `search` matches the study's name or
    accession number, or the accession number in one of its DICOM files."""
    studies = Study.objects.filter(hospital_id=user.hospital_id)
    if status:
        studies = studies.filter(status=status)
    if priority:
        studies = studies.filter(priority=priority)
    if search:
        in_dicom = Image.objects.filter(
            study=OuterRef("pk"), dicom_accession_number__icontains=search
        )
        studies = studies.filter(
            Q(name__icontains=search) | Q(accession_number__icontains=search) | Exists(in_dicom)
        )
    if created_after is not None:
        studies = studies.filter(created_at__gte=created_after)
    if created_before is not None:
        studies = studies.filter(created_at__lt=created_before)
    return with_progress(studies).order_by("-created_at", "id")


def with_progress(studies: QuerySet[Study]) -> QuerySet[Study]:
    return studies.annotate(
        n_total=Count("images"),
        n_done=Count("images", filter=Q(images__status=Image.Status.DONE)),
        n_failed=Count("images", filter=Q(images__status=Image.Status.FAILED)),
        n_pneumonia=Count("images", filter=Q(images__result__label="pneumonia")),
    )


def study_get(*, user: User, study_id: UUID) -> Study:
    """The study if it belongs to the user's hospital; 404 otherwise, never 403."""
    return get_object_or_404(study_list(user=user), id=study_id)


def study_images(*, study: Study) -> QuerySet[Image]:
    return study.images.select_related("result").order_by("created_at", "original_name")


def image_get(*, user: User, image_id: UUID) -> Image:
    """The image if its study belongs to the user's hospital; 404 otherwise."""
    return get_object_or_404(
        Image.objects.select_related("result", "study"),
        id=image_id, study__hospital_id=user.hospital_id,
    )
