"""Worker lifecycle: load the model once per pool process, after the fork, never before.

Trap avoided: CUDA cannot be re-initialised in a forked child, and a model loaded in the parent
would either break CUDA or be copied into every child. The parent (`worker_init`) only notes
which queues it serves; each pool process (`worker_process_init`) creates its WorkerRuntime
(worker/runtime.py) and loads the model itself.
A GPU worker runs one pool process (one CUDA context; batching keeps the GPU busy). A CPU worker
runs one per core by default (INFERENCE_PROCESSES), each with its own copy of the small models
and its share of the cores as torch threads: while one process decodes, writes heatmaps or
talks to the database, the others keep the cores busy (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os

from celery import signals

logger = logging.getLogger(__name__)

_serves_inference = False
_pool_processes = 1


def serves_inference() -> bool:
    return _serves_inference


def pool_processes() -> int:
    """Pool processes of this worker (its --concurrency); 1 outside a worker."""
    return _pool_processes


@signals.worker_init.connect
def _note_queues(sender: object = None, **kwargs: object) -> None:
    """In the parent, before any fork: remember whether this worker consumes `inference`, and
    how many pool processes share the machine's cores."""
    from backend.studies.dispatch import INFERENCE_QUEUE

    global _serves_inference, _pool_processes
    _pool_processes = max(1, int(getattr(sender, "concurrency", 1) or 1))
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consume_from = getattr(queues, "consume_from", None) or {}
    _serves_inference = INFERENCE_QUEUE in consume_from


@signals.worker_process_init.connect
def _start_runtime(**kwargs: object) -> None:
    """In each pool process, after the fork: this process's WorkerRuntime, its models loaded
    at once, so a task never waits."""
    from django.conf import settings

    if not _serves_inference:
        return
    from .runtime import WorkerRuntime, install

    runtime = WorkerRuntime(pool_processes=_pool_processes)
    install(runtime)
    if not settings.INFERENCE_PRELOAD:
        return
    try:
        runtime.models()
    except Exception:
        # The worker stays up; each task reports the problem in its images' failure reason.
        logger.exception("Could not load the models in worker process %s", os.getpid())
