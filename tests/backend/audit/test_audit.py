"""Who uploaded, viewed, exported, cancelled or retried what; admins read their own log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from backend.audit.models import AuditEvent
from backend.studies.models import Study
from tests.backend.conftest import png_bytes
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backend.studies.services.lifecycle.study_enqueue",
                        lambda *, study_id: None)


@pytest.fixture
def study(make_study: Callable[..., Study]) -> Study:
    return make_study(["queued", "failed"])


def actions(user: Any) -> list[str]:
    return list(AuditEvent.objects.filter(user=user).order_by("id")
                .values_list("action", flat=True))


def test_study_operations_are_recorded_with_user_object_and_ip(
    api: Any, user: Any, study: Study
) -> None:
    upload = api.post("/api/studies/", {"files": [SimpleUploadedFile("a.png", png_bytes())]},
                      format="multipart")
    new_id = upload.json()["study"]["id"]
    image_id = upload.json()["accepted"][0]["id"]
    api.get(f"/api/studies/{new_id}/")
    api.get(f"/api/studies/{new_id}/export.csv")
    api.get(f"/api/images/{image_id}/file/")
    api.post(f"/api/studies/{study.id}/retry/")
    api.post(f"/api/studies/{study.id}/cancel/")
    assert actions(user) == ["study.uploaded", "study.viewed", "study.exported",
                             "image.downloaded", "study.retried", "study.cancelled"]
    uploaded = AuditEvent.objects.get(action="study.uploaded")
    assert uploaded.hospital == user.hospital and uploaded.username == "alice"
    assert uploaded.object_type == "study" and uploaded.object_id == new_id
    assert uploaded.detail["accepted"] == 1 and uploaded.ip == "127.0.0.1"
    assert AuditEvent.objects.get(action="study.exported").detail == {"format": "csv"}


def test_admin_reads_their_hospitals_log_newest_first(
    api: Any, other_api: Any, study: Study
) -> None:
    api.get(f"/api/studies/{study.id}/")
    other_api.get("/api/studies/")
    other_api.get(f"/api/studies/{study.id}/")  # 404, not logged
    response = api.get("/api/hospital/audit/")
    assert response.status_code == 200
    events = response.json()["results"]
    assert [e["action"] for e in events] == ["study.viewed"]
    assert events[0]["object_id"] == str(study.id) and events[0]["username"] == "alice"
    assert other_api.get("/api/hospital/audit/").json()["count"] == 0


def test_audit_log_filters_by_action_and_rejects_unknown_actions(
    api: Any, study: Study
) -> None:
    api.get(f"/api/studies/{study.id}/")
    api.get(f"/api/studies/{study.id}/export.json")
    filtered = api.get("/api/hospital/audit/?action=study.exported").json()["results"]
    assert [e["action"] for e in filtered] == ["study.exported"]
    assert api.get("/api/hospital/audit/?action=nonsense").status_code == 400


def test_audit_log_is_for_admins_only(user: Any) -> None:
    clinician = make_user("carl", user.hospital.name, role="clinician")
    assert client_for(clinician).get("/api/hospital/audit/").status_code == 403
    assert APIClient().get("/api/hospital/audit/").status_code in (401, 403)


def test_audit_events_are_read_only_in_django_admin(user: Any) -> None:
    from django.contrib.admin.sites import site

    model_admin = site._registry[AuditEvent]
    request = type("Request", (), {"user": user})()
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
