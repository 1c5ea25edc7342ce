"""Writes to the audit log."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from backend.accounts.models import Hospital, User

from .models import AuditEvent


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address: the peer's, or with NUM_PROXIES trusted reverse proxies in
    front, the address the outermost of them saw (X-Forwarded-For, as DRF's throttles read
    it). Without NUM_PROXIES a client's own X-Forwarded-For is ignored: it could be forged."""
    if request is None:
        return None
    remote = request.META.get("REMOTE_ADDR") or None
    proxies = settings.NUM_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            candidate = hops[-min(proxies, len(hops))]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                return remote
    return remote


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
