"""Shared fixtures: real data files, users of two hospitals, and a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import (  # noqa: F401  (re-exported for the test modules)
    DATA_DIR,
    DICOM_DIR,
    KERMANY_TRAIN,
    REPO_ROOT,
    free_port,
    full_size_jpeg,
    wait_for,
)

# A Redis database of its own, so tests never mix with a `make run` on the same machine.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("REDIS_URL", TEST_REDIS_URL)


@pytest.fixture(scope="session")
def kermany_images() -> dict[str, list[Path]]:
    if not KERMANY_TRAIN.is_dir():
        pytest.skip(f"Kermany data not found at {KERMANY_TRAIN}")
    return {
        "normal": sorted((KERMANY_TRAIN / "NORMAL").glob("*.jpeg")),
        "pneumonia": sorted((KERMANY_TRAIN / "PNEUMONIA").glob("*.jpeg")),
    }


@pytest.fixture(scope="session")
def xray_paths(kermany_images: dict[str, list[Path]]) -> list[Path]:
    """A few real X-rays of both classes."""
    return kermany_images["normal"][:3] + kermany_images["pneumonia"][:3]


@pytest.fixture(scope="session", autouse=True)
def _session_media_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Uploads and heatmaps of this run, under pytest's temporary directory (never in the
    repository). Worker subprocesses started by the tests inherit it (TEST_MEDIA_ROOT, read by
    the test settings), so they read and write the same files as the test process."""
    root = tmp_path_factory.mktemp("media")
    previous = os.environ.get("TEST_MEDIA_ROOT")
    os.environ["TEST_MEDIA_ROOT"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("TEST_MEDIA_ROOT", None)
    else:
        os.environ["TEST_MEDIA_ROOT"] = previous


@pytest.fixture(autouse=True)
def _media_root(settings: Any, _session_media_root: Path) -> None:
    settings.MEDIA_ROOT = _session_media_root


def make_user(username: str, hospital: str, role: str = "admin") -> Any:
    from backend.accounts.models import Hospital
    from backend.accounts.services import user_create

    hosp, _ = Hospital.objects.get_or_create(name=hospital)
    return user_create(username=username, password="x-Ray-pass-123", email="",
                       hospital=hosp, role=role)


@pytest.fixture
def user(db: None) -> Any:
    return make_user("alice", "St. Mary")


@pytest.fixture
def other_user(db: None) -> Any:
    return make_user("bob", "General Hospital")


def client_for(user: Any) -> Any:
    """A REST client authenticated as `user`."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api(user: Any) -> Any:
    return client_for(user)


@pytest.fixture
def other_api(other_user: Any) -> Any:
    return client_for(other_user)


def worker_env(db_name: str, **extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        DJANGO_SETTINGS_MODULE="backend.config.settings.test",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db_name}",
        REDIS_URL=TEST_REDIS_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, queues: str = "inference,default",
                 name: str = "test") -> subprocess.Popen:
    """A real `celery worker` process, as an operator would start it."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queues,
         "--pool=prefork", "--concurrency=1", "-n", f"{name}-{os.getpid()}@%h",
         "--loglevel=INFO", "--without-gossip", "--without-mingle"],
        cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen]:
    import redis
    from django.db import connection

    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(worker_env(connection.settings_dict["NAME"]), log)
    yield process
    stop_process(process)
    print(log.read_text()[-3000:])
