"""Fixtures for the worker fleet: a tiny model, small X-ray images, real worker processes,
a private Redis server and a TCP proxy in front of PostgreSQL (to cut the database)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO_ROOT,
    TEST_REDIS_URL,
    free_port,
    stop_process,
    wait_for,
    worker_env,
)

FINAL = ("done", "failed", "done_with_errors", "cancelled")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random pneumonet checkpoint (64 px): fault tests need speed, not accuracy."""
    import torch

    from ml.checkpoint import save_checkpoint
    from ml.models import build_model

    torch.manual_seed(0)
    model = build_model("pneumonet_small", 2)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model, {
        "arch": "pneumonet_small", "task": "binary", "classes": ["normal", "pneumonia"],
        "preprocessing": {"input_size": 64, "mean": [0.48], "std": [0.24], "channels": 1},
        "threshold": 0.5, "temperature": 1.0, "name": "tiny-test", "version": "0.0.1",
    })
    return path


@pytest.fixture
def batch_stored(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set each time the worker's recorder has stored a batch (tests wait on it)."""
    from backend.studies import services

    stored = threading.Event()
    record = services.results_record_many

    def recording(**kwargs: Any) -> int:
        count = record(**kwargs)
        stored.set()
        return count

    monkeypatch.setattr(services, "results_record_many", recording)
    return stored


@pytest.fixture
def runtime(settings: Any, tiny_checkpoint: Path) -> Iterator[Any]:
    """A WorkerRuntime with the tiny model, run in this process on one thread; also the
    process's runtime, for tasks applied here."""
    from worker.runtime import WorkerRuntime, install

    settings.MODEL_CHECKPOINT_BINARY = str(tiny_checkpoint)
    settings.MODEL_CHECKPOINT_ETIOLOGY = str(tiny_checkpoint.parent / "absent.pt")
    runtime = WorkerRuntime()
    install(runtime)
    yield runtime
    install(None)
    # The recorder thread's connection would keep the test database from being dropped.
    runtime.close()
    gc.unfreeze()  # loading the models froze this test process's objects: give them back


def small_pngs(n: int, size: int = 96, seed: int = 0) -> list[tuple[str, bytes]]:
    """n distinct small grayscale PNGs (derived from real X-rays when available)."""
    import numpy as np
    from PIL import Image

    from tests.conftest import KERMANY_TRAIN

    sources = sorted((KERMANY_TRAIN / "PNEUMONIA").glob("*.jpeg"))[:20]
    rng = np.random.default_rng(seed)
    bases = []
    for path in sources:
        with Image.open(path) as im:
            bases.append(np.asarray(im.convert("L").resize((size, size)), dtype=np.uint8))
    if not bases:
        bases = [rng.integers(0, 255, (size, size), dtype=np.uint8)]
    out = []
    for i in range(n):
        pixels = bases[i % len(bases)].copy()
        pixels[0, :4] = [i % 256, (i // 256) % 256, seed % 256, 7]  # distinct files
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        out.append((f"img-{i:04d}.png", buf.getvalue()))
    return out


def upload_files(api: Any, files: list[tuple[str, bytes]], **data: str) -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile

    uploads = [SimpleUploadedFile(name, content) for name, content in files]
    response = api.post("/api/studies/", {"files": uploads, "name": "test", **data},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()["study"]


def study_state(study_id: str) -> dict:
    from backend.studies.models import Image, Result, Study

    study = Study.objects.get(id=study_id)
    images = Image.objects.filter(study_id=study_id)
    return {
        "status": study.status,
        "finished_at": study.finished_at,
        "statuses": sorted(images.values_list("status", flat=True)),
        "results": Result.objects.filter(image__study_id=study_id).count(),
        "images": images.count(),
    }


def wait_study(study_id: str, timeout: float = 120) -> dict:
    return wait_for(lambda: (s := study_state(study_id))["status"] in FINAL and s,
                    timeout=timeout, interval=0.3)


def launch_worker(log: Path, *, db_name: str, checkpoint: Path, redis_url: str = TEST_REDIS_URL,
                  queues: str = "inference,default", name: str = "w", beat: bool = False,
                  concurrency: int | None = 1, app: str = "worker",
                  **extra_env: str) -> subprocess.Popen:
    """A real `celery worker` (own process group, so kill -9 can take all its processes)."""
    env = worker_env(db_name, REDIS_URL=redis_url, TEST_REDIS_URL=redis_url,
                     MODEL_CHECKPOINT_BINARY=str(checkpoint),
                     MODEL_CHECKPOINT_ETIOLOGY=str(checkpoint.parent / "absent.pt"),
                     **{"PNEUMO_TORCH_THREADS": "1", "INFERENCE_IO_THREADS": "2", **extra_env})
    # Without a concurrency, the worker sizes its pool from the settings, as `make worker`.
    pool = [f"--concurrency={concurrency}"] if concurrency else []
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues,
            "--pool=prefork", *pool, "-n", f"{name}-{os.getpid()}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if beat:
        argv += ["-B", "-s", str(log.parent / f"beat-{name}")]
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    """kill -9 the worker and its pool processes (the harshest way a worker can die)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_worker(process: subprocess.Popen) -> None:
    stop_process(process)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_worker(log: Path, *, log_tail: int = 0,
                   **options: Any) -> Iterator[subprocess.Popen]:
    """`launch_worker(log, **options)`, stopped when the block is left, however it is left;
    then the last `log_tail` characters of its log are printed (pytest shows them when the
    test fails)."""
    process = launch_worker(log, **options)
    try:
        yield process
    finally:
        stop_worker(process)
        if log_tail:
            print(log.read_text()[-log_tail:])


def wait_ready(log: Path, timeout: float = 90) -> None:
    """The worker is consuming and its pool process has loaded the model."""
    wait_for(lambda: log.exists() and b" ready." in log.read_bytes()
             and b"Loaded " in log.read_bytes(), timeout=timeout, interval=0.2)


@pytest.fixture
def db_name(transactional_db: None) -> str:
    from django.db import connection

    return connection.settings_dict["NAME"]


@pytest.fixture
def clean_redis() -> Iterator[None]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture
def send_via(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make this process send tasks to another broker (e.g. a private Redis server)."""
    from backend.config.celery import app

    opened = []

    def use(url: str) -> None:
        connection = app.connection_for_write(url)
        opened.append(connection)
        original = type(app).send_task

        def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("connection", connection)
            return original(app, name, *args, **kwargs)

        monkeypatch.setattr(app, "send_task", send_task)

    yield use
    for connection in opened:
        connection.release()


class RedisServer:
    """A private redis-server (append-only file on), restartable; never the system one."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        wait_for(lambda: _pings(redis.Redis.from_url(self.url)), timeout=15, interval=0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # redis-server saves the AOF on SIGTERM
            self.process.wait(timeout=15)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


class TcpProxy:
    """asyncio TCP proxy in a thread: the worker reaches PostgreSQL through it, and `cut()`
    closes the listener and every open connection, as if the database went away."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                 reuse_address=True)

    async def _cut(self) -> None:
        if self.server:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            transport = writer.transport
            transport.abort()
        self.writers.clear()

    def start(self) -> None:
        self._call(self._start())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    from django.db import connection

    proxy = TcpProxy(int(connection.settings_dict.get("PORT") or 5432),
                     connection.settings_dict.get("HOST") or "127.0.0.1")
    proxy.start()
    yield proxy
    proxy.close()


def proxied_database_url(proxy: TcpProxy, db_name: str) -> str:
    return f"postgres://postgres@127.0.0.1:{proxy.port}/{db_name}"


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deliberately heavy model (resnet18 at 448 px): a chunk of 48 takes seconds."""
    import torch

    from ml.checkpoint import save_checkpoint
    from ml.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("slow-model") / "slow.pt"
    save_checkpoint(path, build_model("resnet18", 2), {
        "arch": "resnet18", "task": "binary", "classes": ["normal", "pneumonia"],
        "preprocessing": {"input_size": 448, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225], "channels": 3},
        "threshold": 0.5, "temperature": 1.0, "name": "slow-test", "version": "0.0.1",
    })
    return path


@pytest.fixture
def broker(private_redis: RedisServer, send_via: Any, settings: Any) -> str:
    """A Redis of this test's own: no other worker (e.g. the session one) can take its tasks."""
    send_via(private_redis.url)
    settings.CELERY_BROKER_URL = private_redis.url
    return private_redis.url
