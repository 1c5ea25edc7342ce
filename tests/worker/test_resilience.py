"""Nothing lost when a part fails, with real processes: the broker down at upload, a status
recomputation that failed, a worker without a model, an image that kills its worker, and a
database outage that must not count as lost workers.

Each test runs its own redis-server (tests/worker/conftest.py, `private_redis`) and real
`celery worker` processes; the system Redis and PostgreSQL are never touched.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.worker.conftest import (
    RedisServer,
    running_worker,
    small_pngs,
    upload_files,
    wait_ready,
    wait_study,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def files_exist(study_id: str) -> bool:
    from django.core.files.storage import default_storage

    from backend.studies.models import Image

    return all(default_storage.exists(name) for name in
               Image.objects.filter(study_id=study_id).values_list("file", flat=True))


def test_broker_down_at_upload_stores_the_study_and_queues_it_once_the_broker_is_back(
    api: Any, db_name: str, private_redis: RedisServer, broker: str, tiny_checkpoint: Path,
    tmp_path: Path, settings: Any,
) -> None:
    from backend.studies.models import Image

    settings.INFERENCE_CHUNK_SIZE = 8
    private_redis.stop()
    started = time.monotonic()
    study = upload_files(api, small_pngs(30, seed=21))  # asserts the 201
    assert time.monotonic() - started < 30
    images = Image.objects.filter(study_id=study["id"])
    assert images.count() == 30 and files_exist(study["id"])
    assert not images.exclude(sent_at=None).exists()  # nothing reached the broker
    assert set(images.values_list("status", flat=True)) == {"queued"}

    private_redis.start()  # back, empty: the messages never existed
    log = tmp_path / "worker.log"
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=tiny_checkpoint,
                        beat=True, SWEEP_INTERVAL_S="1", UNSENT_GRACE_S="1"):
        state = wait_study(study["id"], timeout=120)
        assert state["status"] == "done", log.read_text()[-3000:]
        assert state["results"] == 30 and files_exist(study["id"])
        assert b"never got a message" in log.read_bytes()


def test_sweep_finishes_a_study_whose_status_recomputation_failed_and_sends_its_webhook(
    api: Any, user: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
) -> None:
    from backend.studies.models import Image, Study
    from tests.backend.studies.conftest import SECRET, Receiver

    receiver = Receiver()
    user.hospital.webhook_url, user.hospital.webhook_secret = receiver.url, SECRET
    user.hospital.save()
    log = tmp_path / "worker.log"
    # Left in reverse: the beat worker, this worker, then the receiver.
    with contextlib.ExitStack() as running:
        running.callback(receiver.close)
        running.enter_context(running_worker(log, db_name=db_name, redis_url=broker,
                                             checkpoint=tiny_checkpoint))
        wait_ready(log)
        study = upload_files(api, small_pngs(6, seed=22))
        wait_study(study["id"], timeout=120)
        wait_for(lambda: receiver.requests, timeout=30)
        # As if the recomputation after the last results had failed (database gone between
        # the two transactions): every image finished, the study left processing.
        Study.objects.filter(id=study["id"]).update(
            status="processing", finished_at=None,
            updated_at=Study.objects.get(id=study["id"]).created_at)
        receiver.requests.clear()
        assert not Image.objects.filter(study_id=study["id"]).exclude(status="done").exists()
        running.enter_context(running_worker(
            tmp_path / "beat.log", db_name=db_name, redis_url=broker,
            checkpoint=tiny_checkpoint, queues="default", name="beat",
            beat=True, SWEEP_INTERVAL_S="1", RECONCILE_AFTER_S="1"))
        state = wait_study(study["id"], timeout=60)
        assert state["status"] == "done" and state["finished_at"] is not None
        wait_for(lambda: receiver.requests, timeout=60)
        # The beat sends the sweep to the default queue; either worker may run it.
        logs = (tmp_path / "beat.log").read_bytes() + log.read_bytes()
        assert b"Recomputed the status of 1 studies" in logs


def test_worker_that_cannot_load_its_model_stops_and_leaves_the_images_to_a_healthy_one(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
) -> None:
    from backend.studies.models import Image

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    study = upload_files(api, small_pngs(10, seed=23))
    log = tmp_path / "broken.log"
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=broken,
                        name="broken") as worker:
        code = worker.wait(timeout=120)
    assert code != 0, log.read_text()[-3000:]
    assert b"Stopping this worker: the model could not be loaded" in log.read_bytes()
    # Nothing was failed for it: the images wait for a worker that has a model.
    assert set(Image.objects.filter(study_id=study["id"])
               .values_list("status", flat=True)) == {"queued"}
    healthy_log = tmp_path / "healthy.log"
    with running_worker(healthy_log, db_name=db_name, redis_url=broker,
                        checkpoint=tiny_checkpoint, name="healthy"):
        state = wait_study(study["id"], timeout=120)
        assert state["status"] == "done" and state["results"] == 10


def crashing_png() -> tuple[str, bytes]:
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    from tests.worker.crash_app import CRASH_MARKER

    info = PngInfo()
    info.add_text("note", CRASH_MARKER.decode())
    out = io.BytesIO()
    PILImage.new("L", (96, 96), 77).save(out, format="PNG", pnginfo=info)
    return "crash.png", out.getvalue()


def test_an_image_that_kills_its_worker_fails_alone(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path, settings: Any,
) -> None:
    from backend.studies.models import Image

    settings.INFERENCE_CHUNK_SIZE = 16  # the crasher shares one chunk with 15 others
    files = small_pngs(15, seed=24)
    files.insert(7, crashing_png())
    log = tmp_path / "worker.log"
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=tiny_checkpoint,
                        app="tests.worker.crash_app", INFERENCE_MAX_ATTEMPTS="3"):
        wait_ready(log)
        study = upload_files(api, files)
        state = wait_study(study["id"], timeout=240)
        text = log.read_text()
        assert state["status"] == "done_with_errors", text[-4000:]
        crasher = Image.objects.get(study_id=study["id"], original_name="crash.png")
        assert crasher.status == "failed" and crasher.attempts == 3
        assert "Gave up after 3 attempts" in crasher.error
        others = Image.objects.filter(study_id=study["id"]).exclude(id=crasher.id)
        assert set(others.values_list("status", flat=True)) == {"done"}
        assert "each is sent again alone" in text
