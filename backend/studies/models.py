"""Study batches, their images, and one result per image."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from backend.accounts.models import Hospital


def image_storage_name(study_id: uuid.UUID) -> str:
    # Random names: the uploaded name is user input and is kept only as metadata.
    return f"studies/{study_id}/images/{uuid.uuid4().hex}"


def working_copy_storage_name(study_id: uuid.UUID) -> str:
    return f"studies/{study_id}/working/{uuid.uuid4().hex}.jpg"


def _image_path(instance: Image, filename: str) -> str:
    return image_storage_name(instance.study_id)


def _working_copy_path(instance: Image, filename: str) -> str:
    return working_copy_storage_name(instance.study_id)


def heatmap_storage_name(*, study_id: uuid.UUID, image_id: uuid.UUID,
                         filename: str = "heatmap.png") -> str:
    return f"studies/{study_id}/heatmaps/{image_id}-{filename}"


def _heatmap_path(instance: Result, filename: str) -> str:
    return heatmap_storage_name(study_id=instance.image.study_id, image_id=instance.image_id,
                                filename=filename)


class Study(models.Model):
    class Priority(models.TextChoices):
        ROUTINE = "routine"
        URGENT = "urgent"

    class Status(models.TextChoices):
        QUEUED = "queued"
        PROCESSING = "processing"
        DONE = "done"
        DONE_WITH_ERRORS = "done_with_errors"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="studies")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="studies"
    )
    name = models.CharField(max_length=200, blank=True, default="")
    accession_number = models.CharField(max_length=64, blank=True, default="")
    priority = models.CharField(max_length=16, choices=Priority.choices, default=Priority.ROUTINE)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["hospital", "status", "-created_at"])]

    def __str__(self) -> str:
        return f"Study {self.id} ({self.status})"


class Image(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PROCESSING = "processing"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINAL_STATUSES = (Status.DONE, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(upload_to=_image_path, max_length=300)
    # A small model-ready copy made at upload from the pixels decoded there, so that workers
    # never decode a large original again (ml.decode.needs_working_copy); empty when
    # reading the original is cheap. The original stays the image of record.
    working_file = models.FileField(upload_to=_working_copy_path, max_length=300, blank=True)
    original_name = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    format = models.CharField(max_length=16)  # jpeg, png, dicom
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    # Warnings a clinician must see next to the result (non-chest, adult, ...).
    flags = models.JSONField(default=list, blank=True)
    # Remarks about the upload itself (e.g. a PNG named .dcm, accepted by its content).
    notes = models.JSONField(default=list, blank=True)
    # The DICOM attributes needed to match a result to an exam, and nothing more.
    study_instance_uid = models.CharField(max_length=64, blank=True, default="")
    sop_instance_uid = models.CharField(max_length=64, blank=True, default="")
    dicom_accession_number = models.CharField(max_length=64, blank=True, default="")
    view_position = models.CharField(max_length=16, blank=True, default="")
    modality = models.CharField(max_length=16, blank=True, default="")
    body_part = models.CharField(max_length=64, blank=True, default="")
    patient_age = models.CharField(max_length=8, blank=True, default="")
    patient_sex = models.CharField(max_length=8, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "original_name"]
        constraints = [
            models.UniqueConstraint(fields=["study", "sha256"], name="unique_image_per_study")
        ]
        indexes = [
            models.Index(fields=["status", "started_at"]),
            # Search by DICOM accession number reads only the (few) DICOM images' entries.
            models.Index(fields=["study"], condition=~models.Q(dicom_accession_number=""),
                         name="image_dicom_accession_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.status})"


class Result(models.Model):
    # One result per image, enforced by the primary key: a redelivered task cannot duplicate it.
    image = models.OneToOneField(Image, primary_key=True, on_delete=models.CASCADE,
                                 related_name="result")
    label = models.CharField(max_length=32)
    probabilities = models.JSONField()
    score = models.FloatField(help_text="Calibrated probability of pneumonia.")
    threshold = models.FloatField()
    etiology_label = models.CharField(max_length=32, blank=True, default="")
    etiology_probabilities = models.JSONField(default=dict, blank=True)
    model_name = models.CharField(max_length=100)
    model_version = models.CharField(max_length=50)
    heatmap = models.FileField(upload_to=_heatmap_path, max_length=300, blank=True)
    bbox = models.JSONField(null=True, blank=True, help_text="[x0, y0, x1, y1] in 0..1")
    inference_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.label} ({self.score:.2f})"
