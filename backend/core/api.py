from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import health

READINESS = inline_serializer(
    "Health",
    {
        "status": serializers.CharField(),
        "problems": serializers.ListField(child=serializers.CharField()),
        "workers": serializers.ListField(child=serializers.CharField()),
        "checked_at": serializers.FloatField(help_text="Unix time of the check (cached)."),
    },
)


class LivenessApi(APIView):
    """The web process answers: no dependency is checked (for restart decisions)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(responses={200: inline_serializer("Liveness",
                                                     {"status": serializers.CharField()})})
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadinessApi(APIView):
    """Database, Redis and at least one worker answer (checked at most once per
    HEALTH_CACHE_S for all web processes; for load balancers and monitoring)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(responses={200: READINESS, 503: READINESS})
    def get(self, request: Request) -> Response:
        ready = health.readiness()
        return Response(
            {"status": "ok" if ready.ok else "degraded", "problems": ready.problems,
             "workers": ready.workers, "checked_at": ready.checked_at},
            status=status.HTTP_200_OK if ready.ok else status.HTTP_503_SERVICE_UNAVAILABLE,
        )
