"""Deleting a study (API for hospital admins, Django admin for operators) removes its rows
and every file made for it, and is audited; audit entries and webhooks carry no file names."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from backend.audit.models import AuditEvent
from backend.studies.models import Image, Result, Study
from tests.backend.studies.conftest import png_bytes
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db


def stored_files(study: Study) -> list[str]:
    """Every file of the study: originals, a working copy, heatmaps and a rendered preview."""
    image = study.images.order_by("created_at").first()
    image.working_file.save("w.jpg", ContentFile(b"working copy"), save=True)
    preview = f"studies/{study.id}/previews/{image.id}.png"
    default_storage.save(preview, ContentFile(b"png"))
    names = [preview]
    for image in study.images.all():
        names += [n for n in (image.file.name, image.working_file.name) if n]
    names += [r.heatmap.name for r in Result.objects.filter(image__study=study)]
    assert all(default_storage.exists(n) for n in names)
    return names


def test_a_hospital_admin_deletes_a_study_with_all_its_files(
    api: Any, make_study: Callable[..., Study], django_capture_on_commit_callbacks: Any,
) -> None:
    study = make_study(["done", "done", "failed"])
    kept = make_study(["done"])
    names = stored_files(study)
    assert len(names) == 2 + 3 + 2  # preview, working copy, 3 originals, 2 heatmaps
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/api/studies/{study.id}/")
    assert response.status_code == 204
    assert not Study.objects.filter(id=study.id).exists()
    assert not Image.objects.filter(study_id=study.id).exists()
    assert not any(default_storage.exists(n) for n in names)
    assert not default_storage.exists(f"studies/{study.id}")  # no empty folders either
    assert Study.objects.filter(id=kept.id).exists()
    assert default_storage.exists(kept.images.get().file.name)
    event = AuditEvent.objects.get(action="study.deleted")
    assert event.object_id == str(study.id) and event.username == "alice"
    assert event.detail == {"reason": "api", "images": 3}
    assert api.get(f"/api/studies/{study.id}/").status_code == 404


def test_clinicians_cannot_delete_and_other_hospitals_get_404(
    user: Any, other_api: Any, make_study: Callable[..., Study],
) -> None:
    study = make_study(["done"])
    clinician = client_for(make_user("carl", user.hospital.name, role="clinician"))
    assert clinician.delete(f"/api/studies/{study.id}/").status_code == 403
    assert other_api.delete(f"/api/studies/{study.id}/").status_code == 404
    assert Study.objects.filter(id=study.id).exists()
    assert default_storage.exists(study.images.get().file.name)
    assert not AuditEvent.objects.filter(action="study.deleted").exists()


def test_an_operator_deletes_studies_in_the_django_admin_with_their_files(
    admin_client: Any, make_study: Callable[..., Study],
    django_capture_on_commit_callbacks: Any,
) -> None:
    one, two = make_study(["done"]), make_study(["queued", "failed"])
    names = stored_files(one) + stored_files(two)
    with django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post(f"/admin/studies/study/{one.id}/delete/", {"post": "yes"})
    assert page.status_code == 302
    with django_capture_on_commit_callbacks(execute=True):
        bulk = admin_client.post("/admin/studies/study/", {
            "action": "delete_selected", "_selected_action": [str(two.id)], "post": "yes"})
    assert bulk.status_code == 302
    assert not Study.objects.exists()
    assert not any(default_storage.exists(n) for n in names)
    events = AuditEvent.objects.filter(action="study.deleted")
    assert sorted(e.object_id for e in events) == sorted([str(one.id), str(two.id)])
    assert {e.detail["reason"] for e in events} == {"admin"}
    assert {e.hospital.name for e in events} == {"St. Mary"}
    # Images and results cannot be deleted alone (their files would stay behind).
    assert admin_client.get("/admin/studies/image/").status_code == 200
    image = make_study(["done"]).images.get()
    assert admin_client.get(f"/admin/studies/image/{image.id}/delete/").status_code == 403


def test_audit_entries_and_webhook_payloads_carry_no_file_names(
    api: Any, user: Any, no_broker: Any,
) -> None:
    from backend.studies.webhooks import build_payload

    name = "Doe_Jane_1987-03-02_chest.png"
    response = api.post("/api/studies/", {"files": [SimpleUploadedFile(name, png_bytes())]},
                        format="multipart")
    assert response.status_code == 201
    study_id = response.json()["study"]["id"]
    api.get(f"/api/studies/{study_id}/")
    image_id = Image.objects.get(study_id=study_id).id
    api.get(f"/api/images/{image_id}/file/")
    assert Image.objects.get(id=image_id).original_name == name  # kept for the hospital
    events = list(AuditEvent.objects.values("detail", "object_id"))
    assert len(events) >= 3
    assert "Doe_Jane" not in json.dumps(events)
    payload = json.dumps(build_payload(Study.objects.get(id=study_id)))
    assert "Doe_Jane" not in payload and image_id.hex[:8] in payload.replace("-", "")
