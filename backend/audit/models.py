"""Who did what, when, to which object: an append-only log per hospital."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from backend.accounts.models import Hospital


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        LOGIN = "auth.login"
        LOGIN_FAILED = "auth.login_failed"
        LOGOUT = "auth.logout"
        TOKEN_ISSUED = "auth.token_issued"  # noqa: S105
        PASSWORD_CHANGED = "auth.password_changed"  # noqa: S105
        SIGNUP = "auth.signup"
        TOKEN_REVOKED = "auth.token_revoked"  # noqa: S105
        MEMBER_CREATED = "hospital.member_created"
        MEMBER_UPDATED = "hospital.member_updated"
        SETTINGS_CHANGED = "hospital.settings_changed"
        STUDY_UPLOADED = "study.uploaded"
        STUDY_VIEWED = "study.viewed"
        STUDY_EXPORTED = "study.exported"
        STUDY_CANCELLED = "study.cancelled"
        STUDY_RETRIED = "study.retried"
        STUDY_DELETED = "study.deleted"
        IMAGE_DOWNLOADED = "image.downloaded"
        STORAGE_ORPHANS_DELETED = "storage.orphans_deleted"

    hospital = models.ForeignKey(
        Hospital, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    # Kept even if the user row is later deleted.
    username = models.CharField(max_length=150, blank=True, default="")
    action = models.CharField(max_length=40, choices=Action.choices)
    object_type = models.CharField(max_length=40, blank=True, default="")
    object_id = models.CharField(max_length=64, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["hospital", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.username} {self.action}"
