"""Uploads in parts (receiving, files/, close/) and an upload while the broker is down."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from backend.studies.models import Image, Study
from tests.backend.conftest import png_bytes

pytestmark = pytest.mark.django_db


def pngs(*seeds: int) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(f"cxr-{seed}.png", png_bytes(seed=seed)) for seed in seeds]


def test_a_study_uploaded_in_parts_stays_open_until_closed(
    api: Any, no_broker: dict[str, list[Any]]
) -> None:
    created = api.post("/api/studies/", {"receiving": "true", "name": "ward"},
                       format="multipart")
    assert created.status_code == 201, created.content
    study_id = created.json()["study"]["id"]
    assert created.json()["study"]["receiving"] is True
    first = api.post(f"/api/studies/{study_id}/files/", {"files": pngs(1, 2)},
                     format="multipart")
    assert first.status_code == 200
    assert [i["original_name"] for i in first.json()["accepted"]] == ["cxr-1.png", "cxr-2.png"]
    # A part sent again (its answer was lost): nothing is stored twice.
    again = api.post(f"/api/studies/{study_id}/files/", {"files": pngs(2, 3)},
                     format="multipart")
    assert [i["original_name"] for i in again.json()["accepted"]] == ["cxr-3.png"]
    assert "Duplicate" in again.json()["rejected"][0]["reason"]
    # Every image finished, yet the study cannot finish (nor send its webhook) while open.
    Image.objects.filter(study_id=study_id).update(status="done")
    from backend.studies.services import study_refresh_status

    assert study_refresh_status(study_id=study_id).status == "processing"
    closed = api.post(f"/api/studies/{study_id}/close/")
    assert closed.status_code == 200
    assert closed.json()["study"]["status"] == "done"
    assert closed.json()["images_changed"] == 3
    assert api.post(f"/api/studies/{study_id}/close/").status_code == 200  # idempotent
    late = api.post(f"/api/studies/{study_id}/files/", {"files": pngs(4)}, format="multipart")
    assert late.status_code == 409
    assert Image.objects.filter(study_id=study_id).count() == 3


def test_parts_count_against_the_study_limit_and_other_hospitals_get_404(
    api: Any, other_api: Any, settings: Any, no_broker: dict[str, list[Any]]
) -> None:
    settings.MAX_FILES_PER_STUDY = 3
    created = api.post("/api/studies/", {"receiving": "true", "files": pngs(1, 2)},
                       format="multipart")
    study_id = created.json()["study"]["id"]
    part = api.post(f"/api/studies/{study_id}/files/", {"files": pngs(3, 4)},
                    format="multipart")
    assert [i["original_name"] for i in part.json()["accepted"]] == ["cxr-3.png"]
    assert "at most 3 files" in part.json()["rejected"][0]["reason"]
    assert other_api.post(f"/api/studies/{study_id}/files/", {"files": pngs(5)},
                          format="multipart").status_code == 404
    assert other_api.post(f"/api/studies/{study_id}/close/").status_code == 404
    assert api.post("/api/studies/", {"name": "no files"},
                    format="multipart").status_code == 400  # files required unless receiving


@pytest.mark.django_db(transaction=True)
def test_broker_down_at_upload_answers_201_and_keeps_every_file(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.files.storage import default_storage
    from kombu.exceptions import OperationalError

    from backend.studies import dispatch

    def broker_down(**kwargs: Any) -> int:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(dispatch, "inference_send", broker_down)
    response = api.post("/api/studies/", {"files": pngs(1, 2, 3)}, format="multipart")
    assert response.status_code == 201, response.content
    images = Image.objects.filter(study_id=response.json()["study"]["id"])
    assert images.count() == 3 and set(images.values_list("status", flat=True)) == {"queued"}
    assert all(default_storage.exists(i.file.name) for i in images)  # committed: kept
    assert not images.exclude(sent_at=None).exists()  # the sweep will send them

    sent: list[list[str]] = []
    monkeypatch.setattr(dispatch, "inference_send",
                        lambda *, image_ids, priority: sent.append(image_ids) or 1)
    from backend.studies.services import images_requeue_stuck

    outcome = images_requeue_stuck(processing_deadline_s=600, queued_deadline_s=900,
                                   inference_queue_empty=False, unsent_grace_s=0)
    assert outcome.unsent == 3
    assert sorted(i for chunk in sent for i in chunk) == sorted(
        str(pk) for pk in images.values_list("id", flat=True))
    assert not images.filter(sent_at=None).exists()
    assert Study.objects.count() == 1
