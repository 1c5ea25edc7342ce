"""Study endpoints: one thin view per operation."""

from __future__ import annotations

from uuid import UUID

from django.http import FileResponse, Http404
from drf_spectacular.utils import OpenApiTypes, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import selectors, services
from .serializers import (
    ImageSerializer,
    StudyCreateInputSerializer,
    StudyCreateOutputSerializer,
    StudyDetailSerializer,
    StudySerializer,
)


class HasHospital(BasePermission):
    message = "Your account does not belong to a hospital."

    def has_permission(self, request: Request, view: object) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.hospital_id)


class StudyListCreateApi(APIView):
    permission_classes = [HasHospital]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses={200: StudySerializer(many=True)})
    def get(self, request: Request) -> Response:
        from rest_framework.pagination import PageNumberPagination

        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.study_list(user=request.user), request)
        return paginator.get_paginated_response(StudySerializer(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": StudyCreateInputSerializer},
        responses={201: StudyCreateOutputSerializer, 400: StudyCreateOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        data = StudyCreateInputSerializer(
            data={
                "files": request.FILES.getlist("files"),
                "name": request.data.get("name", ""),
                "accession_number": request.data.get("accession_number", ""),
                "priority": request.data.get("priority", "routine"),
            }
        )
        data.is_valid(raise_exception=True)
        outcome = services.study_create(
            user=request.user,
            uploads=data.validated_data["files"],
            name=data.validated_data["name"],
            accession_number=data.validated_data["accession_number"],
            priority=data.validated_data["priority"],
        )
        study = None
        if outcome.study is not None:
            study = selectors.study_get(user=request.user, study_id=outcome.study.id)
        body = StudyCreateOutputSerializer(
            {"study": study, "accepted": outcome.accepted, "rejected": outcome.rejected}
        ).data
        code = status.HTTP_201_CREATED if study is not None else status.HTTP_400_BAD_REQUEST
        return Response(body, status=code)


class StudyDetailApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={200: StudyDetailSerializer})
    def get(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        images = selectors.study_images(study=study)
        return Response(StudyDetailSerializer(study, context={"images": images}).data)


class StudyImagesApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={200: ImageSerializer(many=True)})
    def get(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        return Response(ImageSerializer(selectors.study_images(study=study), many=True).data)


class ImageFileApi(APIView):
    """The uploaded file, streamed only to members of the owning hospital."""

    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, image_id: UUID) -> FileResponse:
        image = selectors.image_get(user=request.user, image_id=image_id)
        return FileResponse(image.file.open("rb"), filename=image.original_name)


class ImageHeatmapApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY})
    def get(self, request: Request, image_id: UUID) -> FileResponse:
        image = selectors.image_get(user=request.user, image_id=image_id)
        result = getattr(image, "result", None)
        if result is None or not result.heatmap:
            raise Http404("No heatmap for this image.")
        return FileResponse(result.heatmap.open("rb"), content_type="image/png")
