"""Study endpoints: one thin view per operation, always scoped to the caller's hospital."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import prefetch_related_objects
from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.utils import OpenApiResponse, OpenApiTypes, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backend.accounts.permissions import HasHospital
from backend.audit.models import AuditEvent
from backend.audit.services import audit_record
from ml.decode import ImageDecodeError

from . import exports, previews, selectors, services
from .serializers import (
    ImageSerializer,
    StudyActionOutputSerializer,
    StudyCreateInputSerializer,
    StudyCreateOutputSerializer,
    StudyDetailSerializer,
    StudyFilterSerializer,
    StudySerializer,
)

__all__ = ["HasHospital"]

DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})


class StudyPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200


class StudyListCreateApi(APIView):
    permission_classes = [HasHospital]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(parameters=[StudyFilterSerializer],
                   responses={200: StudySerializer(many=True)})
    def get(self, request: Request) -> Response:
        filters = StudyFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        params = {k: v for k, v in filters.validated_data.items() if k != "page"}
        paginator = StudyPagination()
        page = paginator.paginate_queryset(
            selectors.study_list(user=request.user, **params), request, view=self
        )
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
            audit_record(
                action=AuditEvent.Action.STUDY_UPLOADED, user=request.user, request=request,
                object_type="study", object_id=study.id,
                detail={"accepted": len(outcome.accepted), "rejected": len(outcome.rejected),
                        "files": [i.original_name for i in outcome.accepted][:100]},
            )
        # One query for the (absent) results of every accepted image, not one per image: a
        # 500-file upload otherwise made 500 queries after its commit, beside the workers.
        prefetch_related_objects(outcome.accepted, "result")
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
        audit_record(action=AuditEvent.Action.STUDY_VIEWED, user=request.user,
                     request=request, object_type="study", object_id=study.id)
        return Response(StudyDetailSerializer(study, context={"images": images}).data)


class StudyImagesApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={200: ImageSerializer(many=True)})
    def get(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        return Response(ImageSerializer(selectors.study_images(study=study), many=True).data)


def _study_action(request: Request, study_id: UUID, *, operation: Any, action: str,
                  detail_key: str) -> Response:
    """Run a state change on one of the caller's studies, audit it, answer with the study."""
    study = selectors.study_get(user=request.user, study_id=study_id)
    try:
        changed = operation(study_id=study.id)
    except services.StudyStateError as exc:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    audit_record(action=action, user=request.user, request=request, object_type="study",
                 object_id=study.id, detail={detail_key: changed})
    study = selectors.study_get(user=request.user, study_id=study.id)
    return Response(StudyActionOutputSerializer(
        {"study": study, "images_changed": changed}).data)


class StudyCancelApi(APIView):
    """Cancel a queued or processing study: its queued images are not processed."""

    permission_classes = [HasHospital]

    @extend_schema(request=None, responses={
        200: StudyActionOutputSerializer,
        409: OpenApiResponse(DETAIL, description="The study is already finished."),
    })
    def post(self, request: Request, study_id: UUID) -> Response:
        return _study_action(request, study_id, operation=services.study_cancel,
                             action=AuditEvent.Action.STUDY_CANCELLED,
                             detail_key="images_cancelled")


class StudyRetryApi(APIView):
    """Requeue the study's failed images."""

    permission_classes = [HasHospital]

    @extend_schema(request=None, responses={
        200: StudyActionOutputSerializer,
        409: OpenApiResponse(DETAIL, description="No failed images to retry."),
    })
    def post(self, request: Request, study_id: UUID) -> Response:
        return _study_action(request, study_id, operation=services.study_retry,
                             action=AuditEvent.Action.STUDY_RETRIED,
                             detail_key="images_requeued")


def _export(request: Request, study_id: UUID, fmt: str) -> HttpResponse:
    study = selectors.study_get(user=request.user, study_id=study_id)
    images = selectors.study_images(study=study)
    audit_record(action=AuditEvent.Action.STUDY_EXPORTED, user=request.user, request=request,
                 object_type="study", object_id=study.id, detail={"format": fmt})
    if fmt == "csv":
        content, content_type = exports.to_csv(study, images), "text/csv; charset=utf-8"
    else:
        content, content_type = exports.to_json(study, images), "application/json"
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="study-{study.id}.{fmt}"'
    return response


class StudyExportCsvApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, study_id: UUID) -> HttpResponse:
        return _export(request, study_id, "csv")


class StudyExportJsonApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT})
    def get(self, request: Request, study_id: UUID) -> HttpResponse:
        return _export(request, study_id, "json")


def _private(response: FileResponse) -> FileResponse:
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


class ImageFileApi(APIView):
    """The uploaded file, streamed only to members of the owning hospital."""

    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, image_id: UUID) -> FileResponse:
        image = selectors.image_get(user=request.user, image_id=image_id)
        audit_record(action=AuditEvent.Action.IMAGE_DOWNLOADED, user=request.user,
                     request=request, object_type="image", object_id=image.id,
                     detail={"study_id": str(image.study_id)})
        return _private(FileResponse(image.file.open("rb"), as_attachment=True,
                                     filename=image.original_name.rsplit("/", 1)[-1],
                                     content_type="application/octet-stream"))


class ImagePreviewApi(APIView):
    """A PNG rendering of the image (browsers cannot show DICOM), cached in storage."""

    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY})
    def get(self, request: Request, image_id: UUID) -> FileResponse:
        from django.core.files.storage import default_storage

        image = selectors.image_get(user=request.user, image_id=image_id)
        try:
            path = previews.preview_get_or_create(image)
        except (ImageDecodeError, OSError) as exc:
            raise Http404(f"No preview for this image: {exc}") from exc
        return _private(FileResponse(default_storage.open(path, "rb"),
                                     content_type="image/png"))


class ImageHeatmapApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "image/jpeg"): OpenApiTypes.BINARY,
                              (200, "image/png"): OpenApiTypes.BINARY})
    def get(self, request: Request, image_id: UUID) -> FileResponse:
        image = selectors.image_get(user=request.user, image_id=image_id)
        result = getattr(image, "result", None)
        if result is None or not result.heatmap:
            raise Http404("No heatmap for this image.")
        # The worker writes JPEG by default and PNG when configured; the name carries which.
        kind = "image/png" if result.heatmap.name.endswith(".png") else "image/jpeg"
        return _private(FileResponse(result.heatmap.open("rb"), content_type=kind))
