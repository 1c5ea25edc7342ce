"""The EFFECTIVE Celery configuration (app.conf, task options) and the fork/CUDA traps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

from tests.conftest import REPO_ROOT


def test_effective_reliability_settings() -> None:
    from backend.config.celery import app

    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    # Trap: a task that outlives the visibility timeout is delivered to a second worker.
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.result_backend is None and conf.task_ignore_result is True
    assert conf.broker_connection_max_retries is None  # Redis restarts: keep reconnecting
    assert conf.worker_proc_alive_timeout >= 60  # the pool process loads the model at start


def test_effective_task_options() -> None:
    from backend.config.celery import app
    from worker import tasks

    app.loader.import_default_modules()
    infer = app.tasks["worker.tasks.infer_images"]
    assert infer.name == tasks.infer_images.name
    assert infer.acks_late is True and infer.reject_on_worker_lost is True
    assert 0 < infer.max_retries < 20  # a task that keeps failing ends, it does not loop
    assert app.amqp.router.route({}, "worker.tasks.infer_images")["queue"].name == "inference"
    assert app.amqp.router.route({}, "worker.tasks.sweep_stuck_images")["queue"].name == (
        "default")


def test_priorities_and_beat_schedule() -> None:
    from backend.config.celery import app

    options = app.conf.broker_transport_options
    assert options["queue_order_strategy"] == "priority"
    assert list(options["priority_steps"]) == list(range(10))
    assert app.conf.task_default_priority == 5  # urgent studies are sent with 0: served first
    sweep = app.conf.beat_schedule["sweep-stuck-images"]
    assert sweep["task"] == "worker.tasks.sweep_stuck_images"
    assert sweep["options"]["queue"] == "default"


def test_visibility_timeout_always_exceeds_hard_limit() -> None:
    code = textwrap.dedent("""
        from django.conf import settings
        import django; django.setup()
        from backend.config.celery import app
        print(app.conf.task_time_limit, app.conf.broker_transport_options["visibility_timeout"])
    """)
    env = {"CELERY_TASK_TIME_LIMIT": "900", "CELERY_VISIBILITY_TIMEOUT": "60",
           "DJANGO_SETTINGS_MODULE": "backend.config.settings.test", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    hard, visibility = map(int, out)
    assert hard == 900 and visibility > hard


def test_importing_tasks_neither_initialises_cuda_nor_loads_the_model() -> None:
    """What a prefork parent does before forking: import the tasks, set up the queues."""
    code = textwrap.dedent("""
        import django; django.setup()
        from backend.config.celery import app
        app.loader.import_default_modules()
        import worker.tasks
        # (Importing torch would be harmless here; initialising CUDA or a model is not.)
        from worker import signals
        app.amqp.queues.select(["inference", "default"])  # what `-Q inference,default` does
        signals._note_queues(sender=WORKER)
        assert signals.serves_inference()
        import torch
        from worker.runtime import process_runtime
        assert process_runtime().loaded_models is None
        assert not torch.cuda.is_initialized()
        print("ok")
    """).replace("WORKER", "type('W', (), {'app': app})()")
    env = {"DJANGO_SETTINGS_MODULE": "backend.config.settings.test", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


def test_only_inference_workers_preload(monkeypatch: Any) -> None:
    from worker import signals
    from worker.runtime import install

    loaded = []
    monkeypatch.setattr("worker.runtime.load_models", lambda **kwargs: loaded.append(1))
    queues = SimpleNamespace(consume_from={"default": object()})
    signals._note_queues(sender=SimpleNamespace(app=SimpleNamespace(
        amqp=SimpleNamespace(queues=queues))))
    signals._start_runtime()
    assert loaded == []
    queues.consume_from["inference"] = object()
    signals._note_queues(sender=SimpleNamespace(app=SimpleNamespace(
        amqp=SimpleNamespace(queues=queues))))
    signals._start_runtime()
    assert loaded == [1]
    signals._serves_inference = False
    install(None)


def test_tests_send_to_their_own_redis_database() -> None:
    from backend.config.celery import app
    from tests.conftest import TEST_REDIS_URL

    assert app.conf.broker_url == TEST_REDIS_URL


def test_s3_storage_is_configured_from_the_environment() -> None:
    code = textwrap.dedent("""
        import django; django.setup()
        from django.conf import settings
        opts = settings.STORAGES["default"]["OPTIONS"]
        print(settings.STORAGES["default"]["BACKEND"], opts["bucket_name"],
              opts["endpoint_url"], opts["file_overwrite"], opts["querystring_auth"])
    """)
    env = {"DJANGO_SETTINGS_MODULE": "backend.config.settings.test", "PATH": "/usr/bin:/bin",
           "STORAGE_BACKEND": "s3", "AWS_STORAGE_BUCKET_NAME": "scans",
           "AWS_S3_ENDPOINT_URL": "http://minio:9000"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["storages.backends.s3.S3Storage", "scans", "http://minio:9000", "False",
                   "True"]


def test_retry_countdowns_stay_below_the_visibility_timeout() -> None:
    """An ETA message waits unacknowledged in the worker: beyond the visibility timeout Redis
    would hand it to a second worker."""
    from django.conf import settings

    from worker.tasks import MAX_RETRIES, backoff_s

    assert max(backoff_s(n) for n in range(MAX_RETRIES + 1)) < settings.CELERY_VISIBILITY_TIMEOUT


def test_inference_pool_size_follows_the_machine(tmp_path: Any) -> None:
    from backend.config.sizing import inference_processes, torch_threads

    no_gpu = tmp_path / "no-driver"
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    (gpus / "0000:3b:00.0").mkdir()
    # CPU worker: one process per core, capped; the cores shared out as torch threads.
    assert inference_processes(0, device="auto", cores=2, gpus=no_gpu) == 2
    assert inference_processes(0, device="cpu", cores=32, gpus=gpus) == 4
    assert inference_processes(0, device="auto", cores=1, gpus=no_gpu) == 1
    assert torch_threads(0, processes=2, cores=2) == 1
    assert torch_threads(0, processes=4, cores=32) == 8
    assert torch_threads(0, processes=1, cores=2) == 2
    assert torch_threads(3, processes=2, cores=2) == 3  # INFERENCE_TORCH_THREADS wins
    # GPU worker, found without initialising CUDA: one process per 4 cores feeds the GPU.
    assert inference_processes(0, device="auto", cores=16, gpus=gpus) == 4
    assert inference_processes(0, device="cuda", cores=8, gpus=no_gpu) == 2
    assert inference_processes(0, device="cuda", cores=2, gpus=no_gpu) == 1
    assert inference_processes(0, device="auto", cores=64, gpus=gpus) == 4
    assert inference_processes(3, device="auto", cores=16, gpus=gpus) == 3  # as configured


def test_pool_is_sized_by_the_cores_this_process_may_run_on(tmp_path: Any) -> None:
    import os

    from backend.config.sizing import inference_processes, torch_threads, usable_cores

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # as in a container limited to one CPU
    try:
        assert usable_cores() == 1
        assert inference_processes(0, device="cpu", gpus=tmp_path / "none") == 1
        assert torch_threads(0, processes=1) == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert usable_cores() == len(allowed)


def test_effective_worker_concurrency_is_the_inference_pool_size() -> None:
    from django.conf import settings

    from backend.config.celery import app
    from backend.config.sizing import inference_processes

    expected = inference_processes(settings.INFERENCE_PROCESSES, device=settings.INFERENCE_DEVICE)
    assert app.conf.worker_concurrency == expected >= 1


def test_the_worker_registers_every_task_the_backend_sends_by_name() -> None:
    """backend/studies/dispatch.py sends by name without importing the worker: the names,
    routes and schedule must match what the worker registers."""
    from backend.config.celery import app
    from backend.studies import dispatch

    app.loader.import_default_modules()
    assert {dispatch.INFER_TASK, dispatch.WEBHOOK_TASK, dispatch.SWEEP_TASK} <= set(app.tasks)
    assert app.amqp.router.route({}, dispatch.INFER_TASK)["queue"].name == (
        dispatch.INFERENCE_QUEUE)
    assert app.tasks[dispatch.WEBHOOK_TASK].queue == dispatch.DEFAULT_QUEUE
    assert app.conf.beat_schedule["sweep-stuck-images"]["task"] == dispatch.SWEEP_TASK
