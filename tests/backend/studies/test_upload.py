"""POST /api/studies/: valid files are stored and queued, invalid ones rejected per file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from backend.studies.models import Image, Study

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    # These tests check the web side only; the queue path has its own end-to-end test.
    sent: list[Any] = []
    monkeypatch.setattr("backend.studies.services.lifecycle.study_enqueue",
                        lambda *, study_id: sent.append(study_id))
    return sent


def real(path: Path) -> SimpleUploadedFile:
    return SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/jpeg")


def text_as_jpeg() -> SimpleUploadedFile:
    return SimpleUploadedFile("notes.jpeg", b"this is a text file, not an X-ray\n")


def empty() -> SimpleUploadedFile:
    return SimpleUploadedFile("empty.png", b"")


def test_only_malformed_files_answer_400_with_a_reason_per_file(api: Any) -> None:
    response = api.post("/api/studies/", {"files": [text_as_jpeg(), empty()]}, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["study"] is None
    reasons = {r["name"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {"notes.jpeg", "empty.png"}
    assert "empty" in reasons["empty.png"].lower()
    assert reasons["notes.jpeg"]
    assert Study.objects.count() == 0


def test_mixed_upload_keeps_valid_xrays_and_lists_rejected(
    api: Any, xray_paths: list[Path], _no_broker: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    files = [real(xray_paths[0]), text_as_jpeg(), real(xray_paths[3]), empty()]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post("/api/studies/", {"files": files, "name": "mixed"},
                            format="multipart")
    assert len(callbacks) == 1  # enqueued only after the transaction committed
    assert response.status_code == 201, response.content
    body = response.json()
    assert sorted(a["original_name"] for a in body["accepted"]) == sorted(
        [xray_paths[0].name, xray_paths[3].name]
    )
    assert sorted(r["name"] for r in body["rejected"]) == ["empty.png", "notes.jpeg"]
    study = Study.objects.get(id=body["study"]["id"])
    assert study.images.count() == 2
    assert set(study.images.values_list("status", flat=True)) == {Image.Status.QUEUED}
    assert _no_broker == [study.id]


def test_upload_requires_authentication(xray_paths: list[Path]) -> None:
    from rest_framework.test import APIClient

    response = APIClient().post("/api/studies/", {"files": [real(xray_paths[0])]},
                                format="multipart")
    assert response.status_code in (401, 403)
    assert Study.objects.count() == 0


def test_other_hospital_gets_404_for_study_and_files(
    api: Any, other_api: Any, xray_paths: list[Path]
) -> None:
    body = api.post("/api/studies/", {"files": [real(xray_paths[0])]}, format="multipart").json()
    study_id, image_id = body["study"]["id"], body["accepted"][0]["id"]
    assert api.get(f"/api/studies/{study_id}/").status_code == 200
    assert other_api.get(f"/api/studies/{study_id}/").status_code == 404
    assert other_api.get(f"/api/images/{image_id}/file/").status_code == 404
    assert other_api.get("/api/studies/").json()["count"] == 0


def test_upload_response_queries_do_not_grow_with_the_number_of_files(
    api: Any, kermany_images: dict[str, list[Path]]
) -> None:
    """The response lists every accepted image; it must not query once per image (a 500-file
    upload made 500 queries after its commit, while the workers had already started)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for(paths: list[Path]) -> int:
        with CaptureQueriesContext(connection) as captured:
            response = api.post("/api/studies/", {"files": [real(p) for p in paths]},
                                format="multipart")
        assert response.status_code == 201, response.content
        assert len(response.json()["accepted"]) == len(paths)
        assert all(a["result"] is None and a["heatmap_url"] is None
                   for a in response.json()["accepted"])
        return len(captured.captured_queries)

    normal = kermany_images["normal"]
    assert queries_for(normal[:8]) == queries_for(normal[8:10])
