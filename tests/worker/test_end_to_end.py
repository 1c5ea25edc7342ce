"""The whole path: API upload -> PostgreSQL -> Redis -> a real Celery worker -> result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def upload(api: Any, paths: list[Path]) -> Any:
    files = [path.open("rb") for path in paths]
    try:
        return api.post("/api/studies/", {"files": files, "name": "e2e"}, format="multipart")
    finally:
        for f in files:
            f.close()


def test_uploaded_xray_is_classified_by_a_real_worker(
    celery_worker_process: Any, api: Any, xray_paths: list[Path]
) -> None:
    from django.conf import settings

    from ml.checkpoint import load_checkpoint

    classes = load_checkpoint(settings.MODEL_CHECKPOINT_BINARY)[1]["classes"]
    response = upload(api, xray_paths[:1])
    assert response.status_code == 201, response.content
    study_id = response.json()["study"]["id"]
    assert response.json()["study"]["status"] == "queued"

    def finished() -> dict | None:
        body = api.get(f"/api/studies/{study_id}/").json()
        return body if body["status"] in ("done", "failed", "done_with_errors") else None

    body = wait_for(finished, timeout=120)
    assert body["status"] == "done", body
    positive = int(body["images"][0]["result"]["label"] == "pneumonia")
    assert body["progress"] == {"total": 1, "done": 1, "failed": 0, "rejected": 0,
                                "pneumonia": positive, "out_of_scope": 0, "not_analysed": 0}
    result = body["images"][0]["result"]
    assert math.isclose(sum(result["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert result["label"] in classes
    assert result["model_name"] and result["model_version"]
    heatmap = api.get(body["images"][0]["heatmap_url"])
    assert heatmap.status_code == 200
    # A compressed heatmap with transparency, laid over the radiograph by the viewer.
    assert heatmap["Content-Type"] == "image/png"
    assert b"".join(heatmap.streaming_content).startswith(b"\x89PNG")


def test_adult_dicom_is_not_analysed_unless_the_hospital_warns(
    celery_worker_process: Any, api: Any, user: Any
) -> None:
    from tests.conftest import DICOM_DIR

    adult = DICOM_DIR / "cr-chest-pa-jpeg-baseline.dcm"  # PatientAge 062Y
    if not adult.is_file():
        pytest.skip(f"{adult} not found")

    def run_study() -> dict:
        response = upload(api, [adult])
        assert response.status_code == 201, response.content
        study_id = response.json()["study"]["id"]

        def finished() -> dict | None:
            body = api.get(f"/api/studies/{study_id}/").json()
            return body if body["status"] in ("done", "failed", "done_with_errors") else None

        return wait_for(finished, timeout=180)

    body = run_study()
    assert body["status"] == "done", body
    image = body["images"][0]
    result = image["result"]
    assert result["scope"] == "out_of_scope" and result["scope_reason"] == "adult"
    assert result["label"] is None and result["label_withheld"] and result["score"] is None
    assert result["probabilities"] == {} and image["heatmap_url"] is None
    assert body["progress"]["out_of_scope"] == 1 and body["progress"]["not_analysed"] == 1

    assert api.patch("/api/hospital/settings/", {"scope_mode": "warn"},
                     format="json").status_code == 200
    # The same file again (a new study: duplicates are per study) now keeps its label.
    body = run_study()
    result = body["images"][0]["result"]
    assert result["scope"] == "out_of_scope" and result["scope_reason"] == "adult"
    assert result["label"] in ("normal", "pneumonia") and not result["label_withheld"]
    assert body["progress"]["not_analysed"] == 0
