"""Real worker processes: priorities, time limits, one model per pool process."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from backend.config.sizing import usable_cores
from tests.conftest import wait_for
from tests.worker.conftest import running_worker, small_pngs, upload_files, wait_ready, wait_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_urgent_study_overtakes_a_routine_backlog(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
    settings: Any,
) -> None:
    from backend.studies.models import Image, Study

    settings.INFERENCE_CHUNK_SIZE = 2
    routine = upload_files(api, small_pngs(24, seed=1))  # 12 chunks waiting
    urgent = upload_files(api, small_pngs(2, seed=2), priority="urgent")  # submitted last
    log = tmp_path / "worker.log"
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=tiny_checkpoint):
        wait_study(urgent["id"], timeout=90)
        wait_study(routine["id"], timeout=90)
    urgent_done = Study.objects.get(id=urgent["id"]).finished_at
    routine_times = list(Image.objects.filter(study_id=routine["id"])
                         .values_list("finished_at", flat=True))
    assert all(urgent_done <= t for t in routine_times), log.read_text()[-3000:]


def test_chunk_over_the_soft_time_limit_is_a_recorded_failure_and_the_worker_lives_on(
    api: Any, db_name: str, broker: str, slow_checkpoint: Path, tiny_checkpoint: Path,
    tmp_path: Path, settings: Any,
) -> None:
    import worker.tasks  # noqa: F401  (registers its tasks with the app of this process)
    from backend.config.celery import app
    from backend.studies.models import Image

    # Finalising registers the task in this (sending) process with its own 240 s limits.
    assert app.tasks["worker.tasks.infer_images"].soft_time_limit == 240

    # The worker's limit applies even though the sending process registers the task with
    # other limits: Celery would otherwise stamp the sender's limits into the message.
    # 48 images at 448 px through resnet18 is ~350 GFLOP: several seconds on any CPU, so the
    # 1 s soft limit is always exceeded (16 images sometimes finished in time on a fast core).
    settings.INFERENCE_CHUNK_SIZE = 48
    log = tmp_path / "worker.log"
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=slow_checkpoint,
                        CELERY_TASK_SOFT_TIME_LIMIT="1", CELERY_TASK_TIME_LIMIT="60"):
        wait_ready(log)
        study = upload_files(api, small_pngs(48, seed=3))
        state = wait_study(study["id"], timeout=90)
        assert state["status"] == "failed", log.read_text()[-3000:]
        errors = set(Image.objects.filter(study_id=study["id"]).values_list("error", flat=True))
        assert errors == {"Timed out: classifying this batch took longer than the 1 s time "
                          "limit."}
        # The same worker process carries on with the next (small, fast) chunk.
        settings.INFERENCE_CHUNK_SIZE = 1
        quick = upload_files(api, small_pngs(1, seed=4))
        assert wait_study(quick["id"], timeout=60)["status"] == "done"


def test_cpu_worker_pool_shares_the_cores_between_its_processes(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    # As `make worker`: no --concurrency, no thread count; the settings size the pool.
    with running_worker(log, db_name=db_name, redis_url=broker, checkpoint=tiny_checkpoint,
                        concurrency=None, INFERENCE_PROCESSES="2", PNEUMO_TORCH_THREADS="",
                        INFERENCE_DEVICE="cpu") as worker:
        wait_for(lambda: len(re.findall(r"Loaded tiny-test", log.read_text())) == 2,
                 timeout=90, interval=0.3)
        study = upload_files(api, small_pngs(3, seed=7))
        assert wait_study(study["id"], timeout=60)["status"] == "done"
    loads = re.findall(r"Loaded tiny-test .* \((\d+) threads\) in process (\d+)", log.read_text())
    pids = {int(pid) for _, pid in loads}
    assert len(pids) == 2 and worker.pid not in pids  # two pool processes, one model each
    assert {int(threads) for threads, _ in loads} == {max(1, usable_cores() // 2)}


def test_model_is_loaded_once_in_the_pool_process_not_the_parent(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    with running_worker(log, db_name=db_name, redis_url=broker,
                        checkpoint=tiny_checkpoint) as worker:
        wait_ready(log)
        for seed in (5, 6):
            study = upload_files(api, small_pngs(3, seed=seed))
            assert wait_study(study["id"], timeout=60)["status"] == "done"
    text = log.read_text()
    loads = re.findall(r"Loaded tiny-test .* in process (\d+)", text)
    assert len(loads) == 1, text[-3000:]  # once per worker process, not per task
    assert int(loads[0]) != worker.pid  # in the forked pool process, never in the parent
    wait_for(lambda: worker.poll() is not None, timeout=5)
