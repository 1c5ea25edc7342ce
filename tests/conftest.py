"""Shared fixtures: real data files, users of two hospitals, and a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PNEUMO_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
KERMANY_TRAIN = DATA_DIR / "kermany-cxr" / "train"
DICOM_DIR = DATA_DIR / "dicom"
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


@pytest.fixture(autouse=True)
def _media_root(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    settings.MEDIA_ROOT = REPO_ROOT / "var" / "test-media"


def full_size_jpeg(path: Path, size: tuple[int, int] = (1800, 1500), **save: Any) -> bytes:
    """A data-set X-ray enlarged to a full-size radiograph (width x height), as a JPEG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    with Image.open(path) as image:
        image.convert("L").resize(size, Image.Resampling.BICUBIC).save(
            buf, format="JPEG", quality=92, **save)
    return buf.getvalue()


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


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


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
