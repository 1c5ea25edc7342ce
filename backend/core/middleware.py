"""Request-level guards that must act before Django reads a request body."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class RequestSizeLimitMiddleware:
    """Refuse (413) a request whose declared body exceeds MAX_UPLOAD_REQUEST_BYTES.

    Checked from Content-Length before anything parses the body (the CSRF check of a session
    upload would otherwise spool the whole multipart body to disk first). A reverse proxy
    should enforce the same limit; this is the application's own backstop.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.MAX_UPLOAD_REQUEST_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit and length > limit:
            return JsonResponse(
                {"detail": f"The request is larger than the limit of {limit} bytes; "
                           "split the upload into several studies."},
                status=413,
            )
        return self.get_response(request)
