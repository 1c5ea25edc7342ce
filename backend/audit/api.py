"""GET /api/hospital/audit/: the hospital's audit log, for its admins."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backend.accounts.permissions import IsHospitalAdmin

from .selectors import audit_list
from .serializers import AuditEventSerializer, AuditFilterSerializer


class AuditListApi(APIView):
    permission_classes = [IsHospitalAdmin]

    @extend_schema(parameters=[AuditFilterSerializer],
                   responses={200: AuditEventSerializer(many=True)})
    def get(self, request: Request) -> Response:
        filters = AuditFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(
            audit_list(user=request.user, **filters.validated_data), request, view=self
        )
        return paginator.get_paginated_response(AuditEventSerializer(page, many=True).data)
