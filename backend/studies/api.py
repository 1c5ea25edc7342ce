"""Study endpoints: one thin view per operation, always scoped to the caller's hospital."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.db.models import prefetch_related_objects
from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.utils import (
    OpenApiResponse,
    OpenApiTypes,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backend.accounts.permissions import HasHospital, IsHospitalAdmin
from backend.audit.models import AuditEvent
from backend.audit.services import audit_record
from ml.sandbox import DecodeRefused

from . import deletion, exports, previews, selectors, services
from .quotas import HospitalUploadQuota, UploadRateThrottle
from .serializers import (
    ImageSerializer,
    StudyActionOutputSerializer,
    StudyCreateInputSerializer,
    StudyCreateOutputSerializer,
    StudyDetailSerializer,
    StudyFilesInputSerializer,
    StudyFilterSerializer,
    StudySerializer,
)

__all__ = ["HasHospital"]

DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})


class StudyPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200


class UploadLimited(APIView):
    """Every request that stores files (a new study, or one more part of one): a rate per
    user, then the hospital's bytes per 24 hours. Parts count like whole uploads, or a study
    opened empty could take any number of bytes."""

    throttle_classes = [UploadRateThrottle, HospitalUploadQuota]

    def check_throttles(self, request: Request) -> None:
        # The first limit reached answers 429 with its own reason and Retry-After.
        for throttle in self.get_throttles():
            if not throttle.allow_request(request, self):
                raise exceptions.Throttled(wait=throttle.wait(),
                                           detail=getattr(throttle, "detail", None))


class StudyListCreateApi(UploadLimited):
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
                "receiving": request.data.get("receiving", False),
            }
        )
        data.is_valid(raise_exception=True)
        outcome = services.study_create(
            user=request.user,
            uploads=data.validated_data["files"],
            name=data.validated_data["name"],
            accession_number=data.validated_data["accession_number"],
            priority=data.validated_data["priority"],
            receiving=data.validated_data["receiving"],
        )
        return _upload_answer(request, outcome, status.HTTP_201_CREATED)


def _upload_answer(request: Request, outcome: services.StudyCreateOutcome,
                   success: int) -> Response:
    """The study with the files accepted and those refused (400 when none was stored)."""
    study = None
    if outcome.study is not None:
        study = selectors.study_get(user=request.user, study_id=outcome.study.id)
        audit_record(
            action=AuditEvent.Action.STUDY_UPLOADED, user=request.user, request=request,
            object_type="study", object_id=study.id,
            # Counts only: file names can carry patient names (the audit log keeps none).
            detail={"accepted": len(outcome.accepted), "rejected": len(outcome.rejected)},
        )
    # One query for the (absent) results of every accepted image, not one per image: a
    # 500-file upload otherwise made 500 queries after its commit, beside the workers.
    prefetch_related_objects(outcome.accepted, "result")
    body = StudyCreateOutputSerializer(
        {"study": study, "accepted": outcome.accepted, "rejected": outcome.rejected}
    ).data
    return Response(body, status=success if study is not None else status.HTTP_400_BAD_REQUEST)


class StudyFilesAppendApi(UploadLimited):
    """Append one more part of files to a study created with `receiving=true`."""

    permission_classes = [HasHospital]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": StudyFilesInputSerializer},
        responses={200: StudyCreateOutputSerializer,
                   409: OpenApiResponse(DETAIL, description="The study is closed.")},
    )
    def post(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        data = StudyFilesInputSerializer(data={"files": request.FILES.getlist("files")})
        data.is_valid(raise_exception=True)
        try:
            outcome = services.study_append(study_id=study.id,
                                            uploads=data.validated_data["files"])
        except services.StudyStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return _upload_answer(request, outcome, status.HTTP_200_OK)


class StudyCloseApi(APIView):
    """No more parts: the study finishes once its images do (idempotent)."""

    permission_classes = [HasHospital]

    @extend_schema(request=None, responses={200: StudyActionOutputSerializer})
    def post(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        images = services.study_close(study_id=study.id)
        study = selectors.study_get(user=request.user, study_id=study.id)
        return Response(StudyActionOutputSerializer(
            {"study": study, "images_changed": images}).data)


class StudyDetailApi(APIView):
    permission_classes = [HasHospital]

    def get_permissions(self) -> list[Any]:
        # Deleting patient data is for the hospital's admins.
        if self.request.method == "DELETE":
            return [IsHospitalAdmin()]
        return super().get_permissions()

    @extend_schema(responses={200: StudyDetailSerializer})
    def get(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        images = selectors.study_images(study=study)
        audit_record(action=AuditEvent.Action.STUDY_VIEWED, user=request.user,
                     request=request, object_type="study", object_id=study.id)
        return Response(StudyDetailSerializer(study, context={"images": images}).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, study_id: UUID) -> Response:
        """Delete the study with its images, results and every stored file (audited)."""
        study = selectors.study_get(user=request.user, study_id=study_id)
        deletion.study_delete(study_id=study.id, user=request.user, reason="api",
                              request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class StudyImagesApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={200: ImageSerializer(many=True)})
    def get(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        return Response(ImageSerializer(selectors.study_images(study=study), many=True).data)


def _study_action_schema(conflict: str) -> Any:
    """The schema of a study action's POST; `conflict` says when its 409 answers."""
    return extend_schema(request=None, responses={
        200: StudyActionOutputSerializer,
        409: OpenApiResponse(DETAIL, description=conflict),
    })


class _StudyActionApi(APIView):
    """POST runs a state change on one of the caller's studies, audits it and answers with the
    study (409 when the study's state refuses it). A subclass is one operation: the service it
    runs, its audit action and the audit detail's key for the number of images changed."""

    permission_classes = [HasHospital]
    operation: Callable[..., int]
    audit_action: str
    detail_key: str

    def post(self, request: Request, study_id: UUID) -> Response:
        study = selectors.study_get(user=request.user, study_id=study_id)
        try:
            changed = self.operation(study_id=study.id)
        except services.StudyStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        audit_record(action=self.audit_action, user=request.user, request=request,
                     object_type="study", object_id=study.id,
                     detail={self.detail_key: changed})
        study = selectors.study_get(user=request.user, study_id=study.id)
        return Response(StudyActionOutputSerializer(
            {"study": study, "images_changed": changed}).data)


@extend_schema_view(post=_study_action_schema("The study is already finished."))
class StudyCancelApi(_StudyActionApi):
    """Cancel a queued or processing study: its queued images are not processed."""

    # staticmethod: a plain function as a class attribute would be bound to the view.
    operation = staticmethod(services.study_cancel)
    audit_action = AuditEvent.Action.STUDY_CANCELLED
    detail_key = "images_cancelled"


@extend_schema_view(post=_study_action_schema("No failed images to retry."))
class StudyRetryApi(_StudyActionApi):
    """Requeue the study's failed images."""

    operation = staticmethod(services.study_retry)
    audit_action = AuditEvent.Action.STUDY_RETRIED
    detail_key = "images_requeued"


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
        except (DecodeRefused, OSError) as exc:
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
