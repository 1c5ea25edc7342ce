"""Fault tests with real processes: a worker killed with -9, Redis restarted, the database cut.

The database outage is simulated with a TCP proxy this test controls (tests/worker/conftest.py,
`TcpProxy`): the worker reaches PostgreSQL only through it, and cutting it closes the listener
and every open connection for a few seconds. The system PostgreSQL and Redis are never touched;
the Redis test runs its own redis-server (append-only file on, as in docker-compose.yml).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.worker.conftest import (
    RedisServer,
    TcpProxy,
    kill_group,
    launch_worker,
    proxied_database_url,
    running_worker,
    small_pngs,
    stop_worker,
    upload_files,
    wait_ready,
    wait_study,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def done_count(study_id: str) -> int:
    from backend.studies.models import Image

    return Image.objects.filter(study_id=study_id, status="done").count()


def assert_exactly_one_result_each(study_id: str, n: int) -> None:
    from backend.studies.models import Image, Result, Study

    assert Study.objects.get(id=study_id).status == "done"
    assert Image.objects.filter(study_id=study_id, status="done").count() == n
    results = Result.objects.filter(image__study_id=study_id)
    assert results.count() == n
    assert results.values("image_id").distinct().count() == n
    assert all(r.heatmap for r in results)


def test_worker_killed_mid_study_then_another_finishes_it(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
    settings: Any,
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 4
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = launch_worker(first_log, db_name=db_name, redis_url=broker,
                          checkpoint=tiny_checkpoint, name="first")
    second = None
    try:
        wait_ready(first_log)
        study = upload_files(api, small_pngs(200, seed=10))
        wait_for(lambda: done_count(study["id"]) >= 40, timeout=60, interval=0.05)
        kill_group(first)  # the worker and its pool process, mid-chunk, no goodbye
        assert done_count(study["id"]) < 200
        # The new worker runs the periodic sweep too (celery beat), with short deadlines so
        # what the dead worker held is requeued in seconds instead of minutes: the chunk it
        # was processing, and a message it may already have taken for the next chunk.
        second = launch_worker(second_log, db_name=db_name, redis_url=broker,
                               checkpoint=tiny_checkpoint, name="second", beat=True,
                               STUCK_IMAGE_DEADLINE_S="4", QUEUED_IMAGE_DEADLINE_S="15",
                               SWEEP_INTERVAL_S="2")
        state = wait_study(study["id"], timeout=120)
        assert state["status"] == "done", second_log.read_text()[-3000:]
        assert_exactly_one_result_each(study["id"], 200)
    finally:
        if first.poll() is None:
            kill_group(first)
        if second:
            stop_worker(second)
            print(second_log.read_text()[-6000:])  # shown when the test fails


def study_completes_through(api: Any, log: Path, *, seed: int, stop: Callable[[], None],
                            restart: Callable[[], None], outage_s: float) -> None:
    """Upload 120 images, take a service away mid-study, bring it back: every image ends
    with exactly one result."""
    wait_ready(log)
    study = upload_files(api, small_pngs(120, seed=seed))
    wait_for(lambda: done_count(study["id"]) >= 20, timeout=60, interval=0.05)
    stop()
    time.sleep(outage_s)
    restart()
    state = wait_study(study["id"], timeout=120)
    assert state["status"] == "done", log.read_text()[-3000:]
    assert_exactly_one_result_each(study["id"], 120)


def test_redis_restart_during_a_study(
    api: Any, db_name: str, private_redis: RedisServer, broker: str, tiny_checkpoint: Path,
    tmp_path: Path, settings: Any,
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 4
    log = tmp_path / "worker.log"
    # A message the worker had taken when Redis went down is redelivered only after the
    # visibility timeout; the sweep (beat) requeues its images sooner. Short deadlines here.
    with running_worker(log, log_tail=6000, db_name=db_name, redis_url=broker,
                        checkpoint=tiny_checkpoint, beat=True, SWEEP_INTERVAL_S="2",
                        STUCK_IMAGE_DEADLINE_S="5", QUEUED_IMAGE_DEADLINE_S="20"):
        # same port, same append-only file
        study_completes_through(api, log, seed=11, stop=private_redis.stop,
                                restart=private_redis.start, outage_s=2)


def test_database_outage_during_a_study(
    api: Any, db_name: str, broker: str, pg_proxy: TcpProxy, tiny_checkpoint: Path,
    tmp_path: Path, settings: Any,
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 4
    log = tmp_path / "worker.log"
    with running_worker(log, log_tail=6000, db_name=db_name, redis_url=broker,
                        checkpoint=tiny_checkpoint,
                        DATABASE_URL=proxied_database_url(pg_proxy, db_name)):
        # pg_proxy.cut(): the database is gone for the worker
        study_completes_through(api, log, seed=12, stop=pg_proxy.cut, restart=pg_proxy.start,
                                outage_s=4)
        assert b"Transient error" in log.read_bytes()  # it did hit the outage, and retried
        # An outage is not a lost worker: the retries re-claimed their images uncounted.
        from backend.studies.models import Image

        assert not Image.objects.filter(attempts__gt=0).exists()
