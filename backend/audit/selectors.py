"""Reads of the audit log, scoped to the caller's hospital."""

from __future__ import annotations

from django.db.models import QuerySet

from backend.accounts.models import User

from .models import AuditEvent


def audit_list(*, user: User, action: str = "", object_id: str = "") -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(hospital_id=user.hospital_id)
    if action:
        events = events.filter(action=action)
    if object_id:
        events = events.filter(object_id=object_id)
    return events.order_by("-created_at", "-id")
