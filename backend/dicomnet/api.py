"""DICOM endpoints: the hospital's DICOM configuration, result objects, the FHIR bundle."""

from __future__ import annotations

from uuid import UUID

from django.http import Http404, HttpResponse
from drf_spectacular.utils import OpenApiTypes, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from backend.accounts.permissions import HasHospital, IsHospitalAdmin
from backend.audit.models import AuditEvent
from backend.audit.services import audit_record
from backend.studies import selectors as study_selectors

from . import fhir, selectors, services
from .serializers import DicomConfigSerializer


class HospitalDicomApi(APIView):
    permission_classes = [IsHospitalAdmin]

    @extend_schema(responses={200: DicomConfigSerializer})
    def get(self, request: Request) -> Response:
        config = selectors.dicom_config_get(hospital=request.user.hospital)
        return Response(services.dicom_config_as_dict(config))

    @extend_schema(request=DicomConfigSerializer, responses={200: DicomConfigSerializer})
    def put(self, request: Request) -> Response:
        data = DicomConfigSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        destination = data.validated_data["destination"]
        try:
            config = services.dicom_config_update(
                user=request.user, request=request,
                calling_ae_titles=data.validated_data["calling_ae_titles"],
                destination=services.Destination(**destination) if destination else None,
                dicomweb_url=data.validated_data.get("dicomweb_url") or "",
            )
        except services.DicomConfigError as exc:
            return Response({"calling_ae_titles": [str(exc)]},
                            status=status.HTTP_400_BAD_REQUEST)
        return Response(services.dicom_config_as_dict(config))


def _dicom_response(dataset: object, name: str) -> HttpResponse:
    response = HttpResponse(services.dataset_bytes(dataset), content_type="application/dicom")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "private, no-store"
    return response


class _ImageObjectApi(APIView):
    permission_classes = [HasHospital]
    kind = ""

    @extend_schema(responses={(200, "application/dicom"): OpenApiTypes.BINARY})
    def get(self, request: Request, image_id: UUID) -> HttpResponse:
        image = study_selectors.image_get(user=request.user, image_id=image_id)
        if image.format != "dicom" or image.status not in image.FINAL_STATUSES:
            raise Http404("Results in DICOM are made for finished DICOM images only.")
        try:
            dataset = (services.image_sr(image) if self.kind == "sr"
                       else services.image_heatmap_sc(image))
        except ValueError as exc:
            raise Http404(str(exc)) from exc
        if dataset is None:
            raise Http404("This image was not classified: it has no heatmap.")
        audit_record(action=AuditEvent.Action.IMAGE_DOWNLOADED, user=request.user,
                     request=request, object_type="image", object_id=image.id,
                     detail={"what": f"{self.kind}.dcm"})
        return _dicom_response(dataset, f"{image.id}-{self.kind}.dcm")


class ImageSrApi(_ImageObjectApi):
    kind = "sr"


class ImageScApi(_ImageObjectApi):
    kind = "sc"


class StudyFhirApi(APIView):
    permission_classes = [HasHospital]

    @extend_schema(responses={(200, "application/fhir+json"): OpenApiTypes.OBJECT})
    def get(self, request: Request, study_id: UUID) -> Response:
        study = study_selectors.study_get(user=request.user, study_id=study_id)
        images = list(study_selectors.study_images(study=study))
        return Response(fhir.study_bundle(study, images))
