from django.urls import path

from . import api

urlpatterns = [
    path("hospital/dicom/", api.HospitalDicomApi.as_view(), name="hospital-dicom"),
    path("images/<uuid:image_id>/sr.dcm", api.ImageSrApi.as_view(), name="image-sr"),
    path("images/<uuid:image_id>/sc.dcm", api.ImageScApi.as_view(), name="image-sc"),
    path("studies/<uuid:study_id>/fhir/", api.StudyFhirApi.as_view(), name="study-fhir"),
]
