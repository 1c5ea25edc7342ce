"""Worker lifecycle: load the model once per pool process, after the fork, never before.

Trap avoided: CUDA cannot be re-initialised in a forked child, and a model loaded in the parent
would either break CUDA or be copied into every child. The parent (`worker_init`) only notes
which queues it serves; each pool process (`worker_process_init`) loads the model itself.
An inference worker runs one pool process (`--concurrency=1`): one model copy per worker, and
batching, not more processes, keeps the CPU or GPU busy.
"""

from __future__ import annotations

import logging
import os

from celery import signals

logger = logging.getLogger(__name__)

INFERENCE_QUEUE = "inference"
_serves_inference = False


def serves_inference() -> bool:
    return _serves_inference


@signals.worker_init.connect
def _note_queues(sender: object = None, **kwargs: object) -> None:
    """In the parent, before any fork: remember whether this worker consumes `inference`."""
    global _serves_inference
    queues = getattr(getattr(getattr(sender, "app", None), "amqp", None), "queues", None)
    consume_from = getattr(queues, "consume_from", None) or {}
    _serves_inference = INFERENCE_QUEUE in consume_from


@signals.worker_process_init.connect
def _preload_models(**kwargs: object) -> None:
    """In each pool process, after the fork: load the models once, so a task never waits."""
    from django.conf import settings

    if not _serves_inference or not settings.INFERENCE_PRELOAD:
        return
    from . import inference

    try:
        inference.load_models()
    except Exception:
        # The worker stays up; each task reports the problem in its images' failure reason.
        logger.exception("Could not load the models in worker process %s", os.getpid())
