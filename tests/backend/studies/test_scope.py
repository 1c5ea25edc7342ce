"""Out-of-scope results: withheld labels, the reason in the API, exports, progress, webhooks."""

from __future__ import annotations

import csv
import io
from typing import Any

from backend.studies.models import Result


def _out_of_scope(study: Any, *, withheld: bool, reason: str = "adult") -> Result:
    image = study.images.order_by("created_at").first()
    result = image.result
    result.scope = Result.Scope.OUT_OF_SCOPE
    result.scope_reason = reason
    result.scope_source = "pixels"
    result.in_scope_probability = 0.02
    if withheld:
        result.label, result.score, result.probabilities = "", None, {}
        result.etiology_label, result.etiology_probabilities = "", {}
    result.save()
    return result


def test_withheld_result_has_no_label_and_says_why(api: Any, make_study: Any) -> None:
    study = make_study(statuses=["done", "done"])
    _out_of_scope(study, withheld=True)
    images = api.get(f"/api/studies/{study.id}/").json()["images"]
    first = images[0]["result"]
    assert first["label"] is None and first["score"] is None and first["label_withheld"]
    assert first["scope"] == "out_of_scope" and first["scope_reason"] == "adult"
    assert first["scope_text"] == "adult chest X-ray (outside the validated population)"
    second = images[1]["result"]
    assert second["scope"] == "in_scope" and second["scope_reason"] is None
    assert second["label"] in ("normal", "pneumonia") and not second["label_withheld"]


def test_warned_result_keeps_its_label_with_the_reason(api: Any, make_study: Any) -> None:
    study = make_study(statuses=["done"])
    _out_of_scope(study, withheld=False, reason="lateral")
    result = api.get(f"/api/studies/{study.id}/").json()["images"][0]["result"]
    assert result["label"] == "pneumonia" and not result["label_withheld"]
    assert result["scope"] == "out_of_scope" and result["scope_reason"] == "lateral"


def test_progress_counts_out_of_scope_images(api: Any, make_study: Any) -> None:
    study = make_study(statuses=["done", "done", "done"])
    _out_of_scope(study, withheld=True)
    progress = api.get(f"/api/studies/{study.id}/").json()["progress"]
    assert progress["out_of_scope"] == 1 and progress["not_analysed"] == 1
    assert progress["done"] == 3
    # The withheld image is not counted as pneumonia (it had that label before).
    assert progress["pneumonia"] == 1


def test_exports_carry_scope_columns(api: Any, make_study: Any) -> None:
    study = make_study(statuses=["done", "done"])
    _out_of_scope(study, withheld=True, reason="not_chest_radiograph")
    rows = list(csv.DictReader(io.StringIO(
        api.get(f"/api/studies/{study.id}/export.csv").content.decode())))
    assert [r["scope"] for r in rows] == ["out_of_scope", "in_scope"]
    assert [r["scope_reason"] for r in rows] == ["not_chest_radiograph", ""]
    assert rows[0]["label"] == "" and rows[0]["pneumonia_probability"] == ""
    data = api.get(f"/api/studies/{study.id}/export.json").json()
    images = data["images"] if isinstance(data, dict) else data
    assert images[0]["scope_reason"] == "not_chest_radiograph" and images[0]["label"] is None


def test_webhook_payload_carries_scope(make_study: Any) -> None:
    from backend.studies.webhooks import build_payload

    study = make_study(statuses=["done", "done"])
    _out_of_scope(study, withheld=True, reason="inverted")
    payload = build_payload(study)
    assert payload["study"]["progress"]["out_of_scope"] == 1
    assert payload["study"]["progress"]["not_analysed"] == 1
    first = payload["images"][0]
    assert (first["label"], first["scope"], first["scope_reason"]) == (
        None, "out_of_scope", "inverted")
