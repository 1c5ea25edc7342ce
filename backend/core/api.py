from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import health


class HealthApi(APIView):
    """Database, Redis and at least one worker must answer for the system to be healthy."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(),
                    "problems": serializers.ListField(child=serializers.CharField()),
                    "workers": serializers.ListField(child=serializers.CharField()),
                },
            )
        }
    )
    def get(self, request: Request) -> Response:
        problems = [p for p in (health.check_database(), health.check_redis()) if p]
        workers: list[str] = []
        if not problems:
            workers, problem = health.check_workers()
            if problem:
                problems.append(problem)
        ok = not problems
        return Response(
            {"status": "ok" if ok else "degraded", "problems": problems, "workers": workers},
            status=status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE,
        )
