"""Listing, detail, cancel, retry, exports and file endpoints of studies and images."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from backend.studies.models import Image, Study

pytestmark = pytest.mark.django_db
MakeStudy = Callable[..., Study]


@pytest.fixture(autouse=True)
def _no_broker(no_broker: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return no_broker


def ids(response: Any) -> list[str]:
    return [s["id"] for s in response.json()["results"]]


# --- list -----------------------------------------------------------------------------------


def test_list_shows_progress_newest_first(api: Any, make_study: MakeStudy) -> None:
    older = make_study(["done", "done", "failed", "queued"])
    newer = make_study(["queued"])
    response = api.get("/api/studies/")
    assert response.status_code == 200
    assert ids(response) == [str(newer.id), str(older.id)]
    assert response.json()["results"][1]["progress"] == {
        "total": 4, "done": 2, "failed": 1, "rejected": 0, "pneumonia": 1, "out_of_scope": 0,
        "not_analysed": 0}


def test_list_filters_by_status_priority_and_search(api: Any, make_study: MakeStudy) -> None:
    done = make_study(["done"], name="Ward A", accession_number="ACC-100")
    urgent = make_study(["queued"], name="Night shift", priority="urgent")
    by_dicom = make_study(["queued"], name="unnamed")
    Image.objects.filter(study=by_dicom).update(dicom_accession_number="RAD-777")
    assert ids(api.get("/api/studies/?status=done")) == [str(done.id)]
    assert ids(api.get("/api/studies/?priority=urgent")) == [str(urgent.id)]
    assert ids(api.get("/api/studies/?search=ward")) == [str(done.id)]
    assert ids(api.get("/api/studies/?search=acc-1")) == [str(done.id)]
    assert ids(api.get("/api/studies/?search=RAD-777")) == [str(by_dicom.id)]


def test_list_filters_by_creation_date(api: Any, make_study: MakeStudy) -> None:
    old, new = make_study(["queued"]), make_study(["queued"])
    Study.objects.filter(id=old.id).update(
        created_at=timezone.make_aware(dt.datetime(2026, 1, 10, 15, 0), dt.UTC))
    assert ids(api.get("/api/studies/?created_before=2026-01-10")) == [str(old.id)]
    assert ids(api.get("/api/studies/?created_before=2026-01-09")) == []
    assert ids(api.get("/api/studies/?created_after=2026-01-11")) == [str(new.id)]
    assert ids(api.get("/api/studies/?created_after=2026-01-10T14:00:00Z"
                       "&created_before=2026-01-10T16:00:00Z")) == [str(old.id)]


@pytest.mark.parametrize("query", ["status=exploded", "priority=asap", "created_after=yesterday",
                                   "page=0"])
def test_list_rejects_bad_filters_with_400(api: Any, query: str) -> None:
    response = api.get(f"/api/studies/?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json()


def test_list_is_paginated(api: Any, make_study: MakeStudy, settings: Any) -> None:
    for _ in range(3):
        make_study(["queued"])
    body = api.get("/api/studies/?page_size=2&page=2").json()
    assert body["count"] == 3 and len(body["results"]) == 1 and body["previous"]


def test_list_requires_authentication_and_hides_other_hospitals(
    other_api: Any, make_study: MakeStudy
) -> None:
    make_study(["done"])
    assert APIClient().get("/api/studies/").status_code in (401, 403)
    assert other_api.get("/api/studies/").json()["count"] == 0


# --- detail and images ------------------------------------------------------------------------


def test_detail_and_images_include_results_flags_and_urls(
    api: Any, make_study: MakeStudy
) -> None:
    study = make_study(["done", "failed"], flags=["adult_patient"])
    detail = api.get(f"/api/studies/{study.id}/").json()
    assert detail["status"] == "done_with_errors"
    done = next(i for i in detail["images"] if i["status"] == "done")
    assert set(done["result"]) >= {"label", "probabilities", "score", "threshold",
                                   "etiology_label", "etiology_probabilities", "model_name",
                                   "model_version", "bbox"}
    assert done["flags"] == ["adult_patient"]
    assert done["heatmap_url"] == f"/api/images/{done['id']}/heatmap/"
    assert done["preview_url"] == f"/api/images/{done['id']}/preview/"
    failed = next(i for i in detail["images"] if i["status"] == "failed")
    assert failed["result"] is None and failed["heatmap_url"] is None and failed["error"]
    images = api.get(f"/api/studies/{study.id}/images/").json()
    assert sorted(i["id"] for i in images) == sorted(i["id"] for i in detail["images"])


@pytest.mark.parametrize("suffix", ["", "images/", "export.csv", "export.json"])
def test_study_reads_are_404_for_another_hospital_and_401_without_login(
    other_api: Any, make_study: MakeStudy, suffix: str
) -> None:
    study = make_study(["done"])
    assert other_api.get(f"/api/studies/{study.id}/{suffix}").status_code == 404
    assert APIClient().get(f"/api/studies/{study.id}/{suffix}").status_code in (401, 403)


def test_unknown_study_is_404(api: Any) -> None:
    assert api.get("/api/studies/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert api.get("/api/studies/not-a-uuid/").status_code == 404


# --- cancel and retry ---------------------------------------------------------------------------


def test_cancel_marks_queued_images_cancelled_and_leaves_processing_ones(
    api: Any, make_study: MakeStudy
) -> None:
    study = make_study(["queued", "queued", "processing", "done"])
    response = api.post(f"/api/studies/{study.id}/cancel/")
    assert response.status_code == 200
    assert response.json()["images_changed"] == 2
    statuses = sorted(study.images.values_list("status", flat=True))
    assert statuses == ["cancelled", "cancelled", "done", "processing"]
    # Still processing until the running image finishes; then cancelled.
    assert response.json()["study"]["status"] == "processing"
    from backend.studies.services import images_fail_many

    images_fail_many(image_ids=[study.images.get(status="processing").id], reason="x")
    study.refresh_from_db()
    assert study.status == "cancelled"


def test_cancel_of_a_finished_study_is_409(api: Any, make_study: MakeStudy) -> None:
    study = make_study(["done"])
    response = api.post(f"/api/studies/{study.id}/cancel/")
    assert response.status_code == 409
    assert "cannot be cancelled" in response.json()["detail"]


def test_retry_requeues_failed_images_and_enqueues_after_commit(
    api: Any, make_study: MakeStudy, no_broker: dict[str, list[Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    study = make_study(["done", "failed", "failed"])
    study.images.filter(status="failed").update(attempts=5)
    assert study.status == "done_with_errors"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post(f"/api/studies/{study.id}/retry/")
    assert response.status_code == 200
    assert response.json()["images_changed"] == 2
    assert response.json()["study"]["status"] == "processing"
    assert no_broker["enqueue"] == [study.id]
    assert len(callbacks) == 1
    failed_again = study.images.filter(status="queued")
    assert failed_again.count() == 2 and not any(failed_again.values_list("error", flat=True))
    assert set(failed_again.values_list("attempts", flat=True)) == {0}


def test_retry_without_failed_images_is_409(api: Any, make_study: MakeStudy,
                                            no_broker: dict[str, list[Any]]) -> None:
    study = make_study(["done"])
    response = api.post(f"/api/studies/{study.id}/retry/")
    assert response.status_code == 409
    assert no_broker["enqueue"] == []


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_cancel_and_retry_are_404_for_another_hospital_and_401_without_login(
    other_api: Any, make_study: MakeStudy, action: str
) -> None:
    study = make_study(["queued", "failed"])
    assert other_api.post(f"/api/studies/{study.id}/{action}/").status_code == 404
    assert APIClient().post(f"/api/studies/{study.id}/{action}/").status_code in (401, 403)
    assert sorted(study.images.values_list("status", flat=True)) == ["failed", "queued"]


# --- exports --------------------------------------------------------------------------------------


def test_csv_export_has_one_row_per_image_with_result_columns(
    api: Any, make_study: MakeStudy
) -> None:
    study = make_study(["done", "failed"], flags=["adult_patient"])
    response = api.get(f"/api/studies/{study.id}/export.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 2
    done = next(r for r in rows if r["status"] == "done")
    assert done["study_id"] == str(study.id)
    assert done["label"] == "pneumonia" and float(done["pneumonia_probability"]) == 0.8
    assert done["threshold"] == "0.5"
    assert done["etiology_label"] == "bacterial"
    assert done["etiology_probabilities"] == "bacterial=0.7;viral=0.3"
    assert done["model_name"] == "resnet18-binary" and done["model_version"] == "1.0.0"
    assert done["flags"] == "adult_patient"
    assert done["sop_instance_uid"] == "1.2.3.0"
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "decoder exploded" and failed["label"] == ""


def test_csv_export_neutralises_spreadsheet_formulas_in_file_names(
    api: Any, make_study: MakeStudy
) -> None:
    study = make_study(["queued"])
    study.images.update(original_name="=HYPERLINK(\"http://evil\")")
    rows = list(csv.DictReader(io.StringIO(
        api.get(f"/api/studies/{study.id}/export.csv").content.decode())))
    assert rows[0]["file_name"].startswith("'=")


def test_json_export_has_the_same_rows(api: Any, make_study: MakeStudy) -> None:
    study = make_study(["done", "queued"])
    response = api.get(f"/api/studies/{study.id}/export.json")
    assert response.status_code == 200
    body = response.json()
    assert body["study_id"] == str(study.id) and len(body["images"]) == 2
    done = next(r for r in body["images"] if r["status"] == "done")
    assert done["etiology_probabilities"] == {"bacterial": 0.7, "viral": 0.3}
    assert done["pneumonia_probability"] == 0.8


# --- files -------------------------------------------------------------------------------------


def content(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def test_original_file_heatmap_and_preview_are_served_privately(
    api: Any, make_study: MakeStudy
) -> None:
    image = make_study(["done"]).images.get()
    original = api.get(f"/api/images/{image.id}/file/")
    assert original.status_code == 200
    assert content(original) == image.file.open("rb").read()
    assert "attachment" in original["Content-Disposition"]
    assert original["Cache-Control"] == "private, no-store"
    heatmap = api.get(f"/api/images/{image.id}/heatmap/")
    assert heatmap.status_code == 200 and content(heatmap).startswith(b"\x89PNG")
    preview = api.get(f"/api/images/{image.id}/preview/")
    assert preview.status_code == 200 and content(preview).startswith(b"\x89PNG")


@pytest.mark.parametrize("kind", ["file", "preview", "heatmap"])
def test_image_files_are_404_for_another_hospital_and_401_without_login(
    other_api: Any, make_study: MakeStudy, kind: str
) -> None:
    image = make_study(["done"]).images.get()
    assert other_api.get(f"/api/images/{image.id}/{kind}/").status_code == 404
    assert APIClient().get(f"/api/images/{image.id}/{kind}/").status_code in (401, 403)


def test_heatmap_of_an_image_without_result_is_404(api: Any, make_study: MakeStudy) -> None:
    image = make_study(["queued"]).images.get()
    assert api.get(f"/api/images/{image.id}/heatmap/").status_code == 404


def test_uploads_are_not_reachable_under_a_media_url(
    api: Any, make_study: MakeStudy, settings: Any
) -> None:
    image = make_study(["done"]).images.get()
    for prefix in ("/media/", "/", "/static/"):
        response = APIClient().get(f"{prefix}{image.file.name}")
        assert response.status_code == 404 or b"\x89PNG" not in response.content


def test_preview_of_an_unreadable_stored_file_is_404_not_500(
    api: Any, make_study: MakeStudy
) -> None:
    image = make_study(["failed"]).images.get()
    with image.file.open("wb") as handle:
        handle.write(b"overwritten: no longer an image")
    response = api.get(f"/api/images/{image.id}/preview/")
    assert response.status_code == 404
