"""/api/hospital/: what a hospital admin manages."""

from django.urls import path

from backend.audit.api import AuditListApi

from . import api

urlpatterns = [
    path("members/", api.MemberListCreateApi.as_view(), name="hospital-members"),
    path("members/<int:member_id>/", api.MemberDetailApi.as_view(), name="hospital-member"),
    path("members/<int:member_id>/token/", api.MemberTokenApi.as_view(),
         name="hospital-member-token"),
    path("audit/", AuditListApi.as_view(), name="hospital-audit"),
    path("settings/", api.HospitalSettingsApi.as_view(), name="hospital-settings"),
]
