"""What the web tier sends to the workers: task names, queues, priorities and chunking.

The only module that knows them. Tasks are sent by name through the Celery app
(backend/config/celery.py), so the backend never imports the worker package; the worker's task
functions carry the same names (worker/tasks.py). The settings route and schedule the same
names (CELERY_TASK_ROUTES, CELERY_BEAT_SCHEDULE).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any
from uuid import UUID

from django.conf import settings

from backend.config.celery import app

from .models import Study

INFER_TASK = "worker.tasks.infer_images"
WEBHOOK_TASK = "worker.tasks.deliver_webhook"
SWEEP_TASK = "worker.tasks.sweep_stuck_images"

INFERENCE_QUEUE = "inference"
DEFAULT_QUEUE = "default"
QUEUES = (INFERENCE_QUEUE, DEFAULT_QUEUE)

URGENT_PRIORITY = 0  # Redis transport priorities: lower numbers are served first
ROUTINE_PRIORITY = 5


def queue_priority(study_priority: str) -> int:
    """Redis transport priority of a study's chunks: lower numbers are served first."""
    return URGENT_PRIORITY if study_priority == Study.Priority.URGENT else ROUTINE_PRIORITY


def chunk_split(items: Sequence[str], *, max_size: int) -> list[list[str]]:
    """As few chunks as `max_size` allows, of equal sizes (within one).

    Equal chunks finish together on the pool processes that share them: 500 images in chunks
    of at most 128 are 4 x 125, not 3 x 128 + 116, whose short last chunk left one process
    idle while the others finished.
    """
    if not items:
        return []
    count = -(-len(items) // max(1, max_size))
    bounds = [len(items) * k // count for k in range(count + 1)]
    return [list(items[a:b]) for a, b in pairwise(bounds)]


def inference_send(*, image_ids: list[str], priority: int) -> int:
    """Send image IDs to the inference queue in chunks; returns the number of tasks sent.

    The time limits are left out of the message on purpose: the worker's own configuration
    applies, not whatever the sending process happens to have configured.
    """
    chunks = chunk_split(image_ids, max_size=settings.INFERENCE_CHUNK_SIZE)
    for chunk in chunks:
        app.send_task(INFER_TASK, args=[chunk], queue=INFERENCE_QUEUE,
                      priority=priority, time_limit=None, soft_time_limit=None)
    return len(chunks)


def webhook_send(*, study_id: UUID) -> None:
    """Send a finished study's webhook task (raises when the broker is unreachable)."""
    app.send_task(WEBHOOK_TASK, args=[str(study_id)], queue=DEFAULT_QUEUE)


def _priority_lists(queue: str) -> list[str]:
    """kombu's Redis transport keeps one list per priority step: `q`, `q:1`, ... `q:9`."""
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    sep = options.get("sep", "\x06\x16")
    return [queue if step == 0 else f"{queue}{sep}{step}"
            for step in options.get("priority_steps", [0, 3, 6, 9])]


def queue_depths(client: Any | None = None) -> dict[str, int]:
    """Messages waiting per queue (not counting those a worker has taken), read straight from
    Redis (no worker needed): for /metrics and the sweep."""
    import redis

    r = client or redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2)
    pipe = r.pipeline()
    for queue in QUEUES:
        for name in _priority_lists(queue):
            pipe.llen(name)
    counts = iter(pipe.execute())
    return {queue: sum(next(counts) for _ in _priority_lists(queue)) for queue in QUEUES}
