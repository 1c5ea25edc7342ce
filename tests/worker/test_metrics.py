"""GET /metrics: numbers computed from the database and Redis at scrape time."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.worker.conftest import small_pngs, upload_files

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client: Any, **headers: str) -> dict[str, dict]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def test_metrics_follow_the_work(
    runtime: Any, api: Any, client: Any, broker: str, settings: Any
) -> None:
    from worker.inference import run_chunk

    settings.INFERENCE_CHUNK_SIZE = 2
    upload_files(api, small_pngs(5))  # 3 chunks wait in Redis, nobody consumes them
    before = scrape(client)
    assert before["pneumoscan_queue_depth"][(("queue", "inference"),)] == 3
    assert before["pneumoscan_queue_depth"][(("queue", "default"),)] == 0
    assert before["pneumoscan_images"][(("status", "queued"),)] == 5
    assert before["pneumoscan_images_processed_total"][()] == 0

    from backend.studies.models import Image

    ids = [str(i) for i in Image.objects.values_list("id", flat=True)]
    broken = Image.objects.get(id=ids[0])
    with broken.file.storage.open(broken.file.name, "wb") as fh:
        fh.write(b"not an image")
    run_chunk(runtime, ids)
    after = scrape(client)
    assert after["pneumoscan_images_processed_total"][()] == 4
    assert after["pneumoscan_image_failures_total"][()] == 1
    assert after["pneumoscan_inference_seconds_count"][()] == 4
    assert after["pneumoscan_inference_seconds_bucket"][(("le", "+Inf"),)] == 4
    assert after["pneumoscan_inference_seconds_sum"][()] > 0
    assert after["pneumoscan_end_to_end_seconds_count"][()] == 4
    assert after["pneumoscan_end_to_end_seconds_bucket"][(("le", "3600.0"),)] == 4
    assert after["pneumoscan_studies"][(("status", "done_with_errors"),)] == 1
    assert after["pneumoscan_broker_up"][()] == 1


def test_metrics_token(client: Any, settings: Any, db: None) -> None:
    settings.METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert scrape(client, HTTP_AUTHORIZATION="Bearer s3cret")["pneumoscan_broker_up"]
