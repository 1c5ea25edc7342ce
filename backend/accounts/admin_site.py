"""The operators' admin site: its login form gets the same brute-force defences as the API.

Failures on /admin/login/ count towards the same per-username lockout and per-address rate
as /api/auth/login/ and /api/auth/token/ (one set of counters in the cache), and are audited.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request

from backend.audit.models import AuditEvent
from backend.audit.services import audit_record

from .models import User
from .throttles import AuthRateThrottle, LoginFailureLockout


def _refused(wait: float | None) -> HttpResponse:
    seconds = max(1, round(wait or 1))
    response = HttpResponse(
        f"Too many login attempts. Try again in {seconds} seconds.\n",
        status=429, content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(seconds)
    return response


class PneumoAdminSite(admin.AdminSite):
    site_header = "PneumoScan operations"
    site_title = "PneumoScan"

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None
              ) -> HttpResponse:
        if request.method != "POST":
            return super().login(request, extra_context)
        # The DRF throttles read the form through a DRF request (request.data).
        drf_request = Request(request, parsers=[FormParser(), MultiPartParser()])
        lockout = LoginFailureLockout()
        for throttle in (AuthRateThrottle(), lockout):
            if not throttle.allow_request(drf_request, None):
                return _refused(throttle.wait())
        response = super().login(request, extra_context)
        username = str(request.POST.get("username", ""))[:150]
        if request.user.is_authenticated and request.user.get_username() == username:
            lockout.reset(drf_request)
            audit_record(action=AuditEvent.Action.LOGIN, user=request.user, request=request,
                         object_type="user", object_id=request.user.pk,
                         detail={"site": "admin"})
        else:
            lockout.record_failure(drf_request)
            known = User.objects.filter(username=username).first()
            audit_record(
                action=AuditEvent.Action.LOGIN_FAILED,
                hospital=known.hospital if known else None, request=request,
                object_type="user", object_id=known.id if known else "",
                detail={"username": username, "site": "admin"},
            )
        return response
