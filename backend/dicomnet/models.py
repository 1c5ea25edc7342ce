"""DICOM networking: per-hospital AE configuration, received instances grouped into studies,
and the result objects (SR, heatmap SC) sent back to the hospital's PACS."""

from __future__ import annotations

from django.db import models

from backend.accounts.models import Hospital
from backend.studies.models import Image, Study


class DicomConfig(models.Model):
    """Where a hospital's results go; its calling AE titles are `CallingAeTitle` rows."""

    hospital = models.OneToOneField(Hospital, primary_key=True, on_delete=models.CASCADE,
                                    related_name="dicom_config")
    destination_ae_title = models.CharField(max_length=16, blank=True, default="")
    destination_host = models.CharField(max_length=253, blank=True, default="")
    destination_port = models.PositiveIntegerField(null=True, blank=True)
    dicomweb_url = models.URLField(max_length=500, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    @property
    def has_destination(self) -> bool:
        return bool(self.destination_ae_title and self.destination_host
                    and self.destination_port)


class CallingAeTitle(models.Model):
    """A modality or PACS allowed to send to us; the AE title names exactly one hospital."""

    ae_title = models.CharField(max_length=16, unique=True)
    hospital = models.ForeignKey(Hospital, on_delete=models.CASCADE,
                                 related_name="calling_ae_titles")

    class Meta:
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return self.ae_title


class ReceivedStudy(models.Model):
    """The study a hospital's StudyInstanceUID maps to; instances are added while it is open."""

    hospital = models.ForeignKey(Hospital, on_delete=models.CASCADE,
                                 related_name="received_studies")
    study_instance_uid = models.CharField(max_length=64)
    study = models.OneToOneField(Study, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="received")
    calling_ae_title = models.CharField(max_length=16, blank=True, default="")
    last_received_at = models.DateTimeField()
    # When a close task was last sent (the listener's sweeper sends it once per quiet period).
    close_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hospital", "study_instance_uid"],
                                               name="unique_received_study")]


class ReceivedInstance(models.Model):
    """One stored C-STORE; `image` is set when the study closes and it is ingested."""

    received_study = models.ForeignKey(ReceivedStudy, on_delete=models.CASCADE,
                                       related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    file = models.FileField(max_length=300)
    size_bytes = models.PositiveBigIntegerField()
    image = models.OneToOneField(Image, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="received_instance")
    ingested = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The hospital is the study's; a SOP Instance UID is received once per study.
        constraints = [models.UniqueConstraint(fields=["received_study", "sop_instance_uid"],
                                               name="unique_received_instance")]
        indexes = [models.Index(fields=["received_study", "ingested"])]


class DicomOutput(models.Model):
    """A result object made for an image (its UID is deterministic) and its delivery state."""

    class Kind(models.TextChoices):
        SR = "sr"
        SC = "sc"

    class State(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="dicom_outputs")
    kind = models.CharField(max_length=2, choices=Kind.choices)
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    destination = models.CharField(max_length=600, blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "kind"]
        constraints = [models.UniqueConstraint(fields=["image", "kind"],
                                               name="unique_output_per_image_kind")]
