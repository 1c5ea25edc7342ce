"""Queue depths read straight from Redis (no worker needed): for /metrics, the sweep, Flower."""

from __future__ import annotations

from django.conf import settings

QUEUES = ("inference", "default")


def _priority_lists(queue: str) -> list[str]:
    """kombu's Redis transport keeps one list per priority step: `q`, `q:1`, ... `q:9`."""
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    sep = options.get("sep", "\x06\x16")
    return [queue if step == 0 else f"{queue}{sep}{step}"
            for step in options.get("priority_steps", [0, 3, 6, 9])]


def queue_depths(client: object | None = None) -> dict[str, int]:
    """Messages waiting per queue (not counting those a worker has taken)."""
    import redis

    r = client or redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2)
    pipe = r.pipeline()  # type: ignore[attr-defined]
    for queue in QUEUES:
        for name in _priority_lists(queue):
            pipe.llen(name)
    counts = iter(pipe.execute())
    return {queue: sum(next(counts) for _ in _priority_lists(queue)) for queue in QUEUES}
