"""Hospitals (the tenant boundary) and their users."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class Hospital(models.Model):
    class ScopeMode(models.TextChoices):
        # Out-of-scope images (adult, lateral, not a chest radiograph, inverted) get no label.
        ENFORCE = "enforce", "Withhold the label"
        # They get the label with a visible warning (the admin's choice, audited).
        WARN = "warn", "Label with a warning"

    name = models.CharField(max_length=200, unique=True)
    scope_mode = models.CharField(max_length=8, choices=ScopeMode.choices,
                                  default=ScopeMode.ENFORCE)
    webhook_url = models.URLField(blank=True, default="")
    webhook_secret = models.CharField(max_length=128, blank=True, default="")
    # Bytes of images the hospital may upload in any 24 hours (0 = no limit); empty = the
    # installation's UPLOAD_QUOTA_BYTES_PER_DAY.
    upload_quota_bytes_per_day = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Bytes of images per 24 hours (0 = no limit); empty = the default.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    class Role(models.TextChoices):
        ADMIN = "admin", "Hospital admin"
        CLINICIAN = "clinician", "Clinician"

    # Operators (superusers) may have no hospital; every hospital user has exactly one.
    hospital = models.ForeignKey(
        Hospital, null=True, blank=True, on_delete=models.PROTECT, related_name="members"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CLINICIAN)

    @property
    def is_hospital_admin(self) -> bool:
        return self.role == self.Role.ADMIN and self.hospital_id is not None
