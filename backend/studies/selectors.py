"""Reads for studies, always scoped to the caller's hospital."""

from __future__ import annotations

from uuid import UUID

from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from backend.accounts.models import User

from .models import Image, Study


def study_list(*, user: User) -> QuerySet[Study]:
    return with_progress(Study.objects.filter(hospital_id=user.hospital_id))


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
    return get_object_or_404(
        Image.objects.select_related("result", "study"),
        id=image_id, study__hospital_id=user.hospital_id,
    )
