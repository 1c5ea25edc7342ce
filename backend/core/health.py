"""Checks behind the health endpoints.

Liveness (/api/health/live/) checks nothing: the process answers. Readiness (/api/health/
and /api/health/ready/) checks the database, Redis and that a worker answers a ping, at most
once per HEALTH_CACHE_S for all web processes together: the answer is kept in the shared
cache (Redis) and a lock there lets one process check while the others answer from the
cache. A flood of health checks so costs one check per HEALTH_CACHE_S, never a web worker
per request. Once an answer is older than HEALTH_CACHE_S, one request starts a new check in
the background and is answered with the previous answer (older by the check's duration), so no
request waits for a check except the very first. When Redis itself is down, each process
checks on its own, still at most once per HEALTH_CACHE_S (a process-local copy of the answer).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection, connections

from backend.config import celery

CACHE_KEY = "health:readiness"
LOCK_KEY = "health:readiness:lock"
# How long a worker ping may take; one answer is enough (it returns at the first reply).
PING_TIMEOUT_S = 1.5
# The longest a whole check may take on a loaded machine (ping, Redis and database connects):
# how long one process holds the check, and how long past HEALTH_CACHE_S an answer may still
# be given while a check runs.
CHECK_BUDGET_S = 10.0
_local_lock = threading.Lock()
_local: Readiness | None = None


@dataclass(frozen=True)
class Readiness:
    problems: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    checked_at: float = 0.0  # time.time() of the check

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure is the answer we report
        return f"database: {exc.__class__.__name__}: {exc}"
    return None


def check_redis() -> str | None:
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2,
                             socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"redis: {exc.__class__.__name__}: {exc}"
    return None


def check_workers(timeout: float = PING_TIMEOUT_S) -> tuple[list[str], str | None]:
    try:
        # limit=1: return at the first reply instead of waiting out the timeout.
        replies = celery.app.control.ping(timeout=timeout, limit=1) or []
    except Exception as exc:
        return [], f"workers: {exc.__class__.__name__}: {exc}"
    names = sorted(name for reply in replies for name in reply)
    return names, None if names else "workers: no worker answered"


def check_all() -> Readiness:
    problems = [p for p in (check_database(), check_redis()) if p]
    workers: list[str] = []
    if not problems:
        workers, problem = check_workers()
        if problem:
            problems.append(problem)
    return Readiness(problems=problems, workers=workers, checked_at=time.time())


def _fresh(value: Any, now: float) -> bool:
    return isinstance(value, Readiness) and now - value.checked_at < settings.HEALTH_CACHE_S


def readiness() -> Readiness:
    """The readiness answer, checked at most once per HEALTH_CACHE_S (see the module doc)."""
    global _local
    now = time.time()
    if _fresh(_local, now):
        return _local  # type: ignore[return-value]
    with _local_lock:  # threads of one process: one checks, the others wait for its answer
        now = time.time()
        if _fresh(_local, now):
            return _local  # type: ignore[return-value]
        _local = _shared_readiness(now)
        return _local


def _shared_readiness(now: float) -> Readiness:
    ttl = settings.HEALTH_CACHE_S
    # An answer a little past HEALTH_CACHE_S is still given while a new check runs (no request
    # waits for a check then); an older one is not.
    stale_limit = ttl + CHECK_BUDGET_S
    try:
        cached = cache.get(CACHE_KEY)
        if _fresh(cached, now):
            return cached
        usable = isinstance(cached, Readiness) and now - cached.checked_at < stale_limit
        if cache.add(LOCK_KEY, 1, timeout=int(CHECK_BUDGET_S)):
            if usable:
                threading.Thread(target=_check_and_share, args=(True,), daemon=True,
                                 name="readiness-check").start()
                return cached
            return _check_and_share(False)
        if usable:  # another process is checking
            return cached
        deadline = time.monotonic() + CHECK_BUDGET_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            cached = cache.get(CACHE_KEY)
            if _fresh(cached, time.time()):
                return cached
    except Exception:  # the cache (Redis) is down: check on our own
        return check_all()
    return _check_and_share(False)


def _check_and_share(in_thread: bool) -> Readiness:
    """Check, and put the answer in the shared cache for every web process."""
    try:
        result = check_all()
        with contextlib.suppress(Exception):
            cache.set(CACHE_KEY, result,
                      timeout=max(1, int(settings.HEALTH_CACHE_S + CHECK_BUDGET_S)))
            cache.delete(LOCK_KEY)
        return result
    finally:
        if in_thread:
            connections.close_all()  # this thread's own database connection


def readiness_forget() -> None:
    """Drop the cached answers (tests, and after a configuration change)."""
    global _local
    _local = None
    with contextlib.suppress(Exception):
        cache.delete_many([CACHE_KEY, LOCK_KEY])
