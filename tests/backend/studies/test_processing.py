"""The real path once: a ZIP of real radiographs -> a real Celery worker -> flagged results,
a preview, an export and a signed webhook received by a local HTTP server."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.backend.studies.conftest import SECRET, Receiver, verify_like_a_receiver
from tests.conftest import DICOM_DIR, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_zip_of_real_radiographs_is_processed_flagged_exported_and_webhooked(
    celery_worker_process: Any, api: Any, user: Any, xray_paths: list[Path]
) -> None:
    chest = DICOM_DIR / "cr-chest-pa-jpeg-baseline.dcm"
    hip = DICOM_DIR / "cr-hip-monochrome2-rle.dcm"
    if not chest.exists():
        pytest.skip("DICOM test files not available")
    receiver = Receiver()
    user.hospital.webhook_url, user.hospital.webhook_secret = receiver.url, SECRET
    user.hospital.save()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(chest, f"exam/{chest.name}")
        zf.write(hip, f"exam/{hip.name}")
        zf.write(DICOM_DIR / "cr-hip-jpeg-extended-undecodable.dcm", "exam/broken.dcm")
        zf.write(xray_paths[0], f"kids/{xray_paths[0].name}")
    try:
        response = api.post("/api/studies/", {
            "files": [SimpleUploadedFile("batch.zip", archive.getvalue())], "priority": "urgent",
        }, format="multipart")
        assert response.status_code == 201, response.content
        body = response.json()
        assert body["rejected"] == []  # the upload decodes nothing: the worker rejects it
        study_id = body["study"]["id"]

        def finished() -> dict | None:
            detail = api.get(f"/api/studies/{study_id}/").json()
            return detail if detail["status"] not in ("queued", "processing") else None

        detail = wait_for(finished, timeout=120)
        assert detail["status"] == "done_with_errors", detail
        by_name = {i["original_name"].rsplit("/", 1)[-1]: i for i in detail["images"]}
        broken = by_name.pop("broken.dcm")
        assert broken["status"] == "rejected" and "JPEG Extended" in broken["error"]
        assert broken["result"] is None
        detail["images"] = list(by_name.values())
        assert by_name[chest.name]["flags"] == ["adult_patient"]
        assert by_name[hip.name]["flags"] == ["non_chest:hip"]
        assert by_name[xray_paths[0].name]["flags"] == []
        assert by_name[xray_paths[0].name]["result"]["label"] in ("normal", "pneumonia")
        # The adult chest and the hip are outside the validated population: no label (the
        # hospital enforces the scope gate by default), the reason instead.
        for name, reason in ((chest.name, "adult"), (hip.name, "not_chest_radiograph")):
            result = by_name[name]["result"]
            assert (result["scope"], result["scope_reason"]) == ("out_of_scope", reason)
            assert result["label"] is None and result["label_withheld"]
        rows = list(csv.DictReader(io.StringIO(
            api.get(f"/api/studies/{study_id}/export.csv").content.decode())))
        rows = [r for r in rows if not r["file_name"].endswith("broken.dcm")]
        assert {r["flags"] for r in rows} == {"adult_patient", "non_chest:hip", ""}
        assert all(r["model_version"] for r in rows)
        assert sorted(r["scope"] for r in rows) == ["in_scope", "out_of_scope", "out_of_scope"]
        assert all(bool(r["label"]) == (r["scope"] == "in_scope") for r in rows)

        wait_for(lambda: receiver.requests, timeout=30)
        (request,) = receiver.requests
        assert verify_like_a_receiver(request["headers"], request["body"])
        payload = json.loads(request["body"])
        assert payload["study"]["id"] == study_id
        assert payload["study"]["status"] == "done_with_errors"
    finally:
        receiver.close()
