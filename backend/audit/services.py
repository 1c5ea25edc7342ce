"""Writes to the audit log."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from backend.accounts.models import Hospital, User

from .models import AuditEvent


def client_ip(request: HttpRequest | None) -> str | None:
    """The peer address as Django sees it (set the proxy's real-IP header into REMOTE_ADDR)."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def audit_record(
    *,
    action: str,
    user: User | None = None,
    hospital: Hospital | None = None,
    request: HttpRequest | None = None,
    object_type: str = "",
    object_id: object = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; the hospital defaults to the user's."""
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    if hospital is None and user is not None:
        hospital = user.hospital
    return AuditEvent.objects.create(
        hospital=hospital,
        user=user,
        username=user.username if user is not None else "",
        action=action,
        object_type=object_type,
        object_id=str(object_id) if object_id else "",
        detail=detail or {},
        ip=client_ip(request),
    )
