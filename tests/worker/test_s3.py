"""Uploads and heatmaps on S3-compatible object storage: a real S3-speaking server (moto in
server mode) on a local port, the web side in this process and the worker as another process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.conftest import (
    free_port,
    running_worker,
    small_pngs,
    upload_files,
    wait_ready,
    wait_study,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BUCKET = "pneumoscan-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_S3_REGION_NAME": "us-east-1"}


@pytest.fixture
def s3_server() -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing",
                 ).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def test_study_through_s3_storage(
    api: Any, db_name: str, broker: str, s3_server: str, tiny_checkpoint: Path,
    tmp_path: Path, settings: Any,
) -> None:
    import boto3

    from backend.studies.models import Image, Result

    env = {"STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": BUCKET,
           "AWS_S3_ENDPOINT_URL": s3_server, **CREDENTIALS}
    # This process is the web side: the same storage as base.py builds from these variables
    # (the worker, another process, gets them through its environment).
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {"bucket_name": BUCKET, "endpoint_url": s3_server,
                    "region_name": "us-east-1", "access_key": "testing",
                    "secret_key": "testing", "default_acl": None, "file_overwrite": False},
    }}

    log = tmp_path / "worker.log"
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=tiny_checkpoint,
                        **env):
        wait_ready(log)
        study = upload_files(api, small_pngs(3, seed=20))
        state = wait_study(study["id"], timeout=90)
        assert state["status"] == "done", log.read_text()[-3000:]
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    images = list(Image.objects.filter(study_id=study["id"]))
    results = list(Result.objects.filter(image__study_id=study["id"]))
    assert {im.file.name for im in images} <= keys  # uploads went to the bucket
    assert {r.heatmap.name for r in results} <= keys  # heatmaps written there by the worker
    assert all("/heatmaps/" in r.heatmap.name for r in results)
    assert not (Path(settings.MEDIA_ROOT) / "studies" / str(study["id"])).exists()
    heatmap = api.get(f"/api/images/{images[0].id}/heatmap/")
    assert heatmap.status_code == 200
    assert heatmap["Content-Type"] == "image/png"
    assert b"".join(heatmap.streaming_content)[:4] == b"\x89PNG"
