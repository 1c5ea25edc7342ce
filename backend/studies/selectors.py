"""Reads for studies, always scoped to the caller's hospital."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
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
        ).exclude(dicom_accession_number="")  # the partial index of DICOM images
        studies = studies.filter(
            Q(name__icontains=search) | Q(accession_number__icontains=search) | Exists(in_dicom)
        )
    if created_after is not None:
        studies = studies.filter(created_at__gte=created_after)
    if created_before is not None:
        studies = studies.filter(created_at__lt=created_before)
    return with_progress(studies).order_by("-created_at", "id")


def with_progress(studies: QuerySet[Study]) -> QuerySet[Study]:
    """Image counts per study, as one small subquery each.

    Counted per study through the image's study index, so a page of the list costs the same
    however many images the database holds; joining and grouping every image instead cost
    ~90 ms per request at 65,000 images (docs/benchmarks.md).
    """
    return studies.annotate(
        n_total=_image_count(),
        n_done=_image_count(status=Image.Status.DONE),
        n_failed=_image_count(status=Image.Status.FAILED),
        n_rejected=_image_count(status=Image.Status.REJECTED),
        n_pneumonia=_image_count(result__label="pneumonia"),
        n_out_of_scope=_image_count(result__scope="out_of_scope"),
        n_not_analysed=_image_count(result__scope="out_of_scope", result__label=""),
    )


def _image_count(**conditions: Any) -> Coalesce:
    images = (Image.objects.filter(study=OuterRef("pk"), **conditions).order_by()
              .values("study").annotate(n=Count("pk")).values("n"))
    return Coalesce(Subquery(images, output_field=IntegerField()), 0)


def study_get(*, user: User, study_id: UUID) -> Study:
    """The study if it belongs to the user's hospital; 404 otherwise, never 403."""
    return get_object_or_404(study_list(user=user), id=study_id)


def study_images(*, study: Study) -> QuerySet[Image]:
    return (study.images.select_related("result").prefetch_related("dicom_outputs")
            .order_by("created_at", "original_name"))


def image_get(*, user: User, image_id: UUID) -> Image:
    """The image if its study belongs to the user's hospital; 404 otherwise."""
    return get_object_or_404(
        Image.objects.select_related("result", "study"),
        id=image_id, study__hospital_id=user.hospital_id,
    )
