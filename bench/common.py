"""Shared by the benchmarks: a private stack (PostgreSQL database, Redis, gunicorn, one CPU
worker) started from this checkout, a REST client, and X-ray selection."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from support import REPO_ROOT, free_port, full_size_jpeg, wait_for

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/pneumoscan_bench"
FINAL = ("done", "failed", "done_with_errors", "cancelled")


def settle_deletions() -> None:
    """Write back recently deleted files before measuring.

    On ext4 without a journal (this development machine's disk) the inode allocator skips
    inodes deleted while their inode-table block is still dirty, so creating files right
    after a run deleted thousands of them cost ~0.45 ms of kernel time per file instead of
    ~0.03 ms; the next run's heatmap writes paid for the previous run's clean-up.
    """
    os.sync()


def full_size(paths: list[Path], size: tuple[int, int]) -> list[Path]:
    """The same X-rays enlarged to a full-size radiograph (width x height) as JPEGs.

    Written once into var/bench/full-size-WxH/ and reused.
    """
    folder = REPO_ROOT / "var" / "bench" / f"full-size-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        target = folder / path.name
        if not target.exists():
            target.write_bytes(full_size_jpeg(path, size))
        out.append(target)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Client:
    """The REST API as a hospital uses it (token authentication)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def submit(self, paths: list[Path], name: str, priority: str = "routine") -> dict:
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
        response = self.session.post(f"{self.base}/api/studies/", files=files,
                                     data={"name": name, "priority": priority}, timeout=600)
        response.raise_for_status()
        return response.json()["study"]

    def study(self, study_id: str) -> dict:
        response = self.session.get(f"{self.base}/api/studies/{study_id}/", timeout=60)
        response.raise_for_status()
        return response.json()

    def status_by_name(self, name: str) -> dict:
        """The light list endpoint (no images): cheap to poll for a big study."""
        response = self.session.get(f"{self.base}/api/studies/",
                                    params={"search": name, "page_size": 1}, timeout=60)
        response.raise_for_status()
        return response.json()["results"][0]


@dataclass
class Stack:
    """A private installation: its own database, Redis, media root, web server and worker."""

    chunk_size: int
    batch_size: int | None = None
    checkpoint: str | None = None
    database_url: str = field(default_factory=lambda: os.environ.get("BENCH_DATABASE_URL",
                                                                     DEFAULT_DB))
    torch_threads: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pneumo-bench-")))
    url: str = ""
    token: str = ""
    worker: subprocess.Popen | None = None

    @property
    def worker_log(self) -> Path:
        return self.workdir / "worker.log"

    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update(
            DJANGO_SETTINGS_MODULE="backend.config.settings.production",
            SECRET_KEY="bench-not-secret", SECURE_SSL_REDIRECT="false",
            DATABASE_URL=self.database_url, REDIS_URL=self.redis_url,
            MEDIA_ROOT=str(self.workdir / "media"), STATIC_ROOT=str(self.workdir / "static"),
            INFERENCE_CHUNK_SIZE=str(self.chunk_size),
            LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            PYTHONUNBUFFERED="1", ALLOWED_HOSTS="127.0.0.1,localhost",
        )
        if self.batch_size:
            env["INFERENCE_BATCH_SIZE"] = str(self.batch_size)
        if self.checkpoint:
            env["MODEL_CHECKPOINT_BINARY"] = self.checkpoint
        if self.torch_threads:
            env["PNEUMO_TORCH_THREADS"] = self.torch_threads
        env.update(self.extra_env)
        return env

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env(), stdout=log.open("wb"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    @property
    def postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))

    def _ensure_database(self) -> None:
        if not self.postgres:  # SQLite (a GPU host without PostgreSQL): the file is made
            return
        import psycopg

        name = self.database_url.rsplit("/", 1)[1]
        admin = self.database_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def _vacuum(self) -> None:
        """Runs accumulate dead rows in the bench database; PostgreSQL servers without
        autovacuum (this development machine's) never reclaim them, so clean up first, as
        autovacuum would in production."""
        if not self.postgres:
            return
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

    def start(self) -> None:
        settle_deletions()
        redis_server = shutil.which("redis-server")
        port = free_port()
        if redis_server:
            self._spawn([redis_server, "--port", str(port), "--bind", "127.0.0.1",
                         "--save", "", "--dir", str(self.workdir)], self.workdir / "redis.log")
            self.redis_url = f"redis://127.0.0.1:{port}/0"
        else:
            self.redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
        self._ensure_database()
        py = sys.executable
        subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO_ROOT,
                       env=self.env(), check=True)
        self._vacuum()
        self.token = subprocess.run(
            [py, "-c", _MAKE_USER], cwd=REPO_ROOT, env=self.env(), check=True,
            capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        web_port = free_port()
        self.url = f"http://127.0.0.1:{web_port}"
        self._spawn([py, "-m", "gunicorn", "backend.config.wsgi", "--bind",
                     f"127.0.0.1:{web_port}", "--workers", "2", "--timeout", "600"],
                    self.workdir / "web.log")
        self.worker = self.start_worker()
        wait_for(lambda: _answers(f"{self.url}/api/health/"), 120, what="web server")

    def start_worker(self, name: str = "bench") -> subprocess.Popen:
        worker = self._spawn([sys.executable, "-m", "celery", "-A", "worker", "worker",
                              "-Q", "inference,default", "--pool=prefork",
                              "-n", f"{name}@%h", "--loglevel=INFO", "--without-gossip",
                              "--without-mingle"], self.worker_log)
        wait_for(lambda: b"Loaded " in self.worker_log.read_bytes()
                 and b" ready." in self.worker_log.read_bytes(), 180, what="worker ready")
        return worker

    def pool_pids(self) -> list[int]:
        """The worker's pool processes (where the models live)."""
        assert self.worker is not None
        children = Path(f"/proc/{self.worker.pid}/task/{self.worker.pid}/children")
        return [int(p) for p in children.read_text().split()]

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        if os.environ.get("BENCH_KEEP"):
            print(f"logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
            settle_deletions()

    redis_url: str = ""


class RawModels:
    """The models alone, as the worker runs them: X-rays decoded and preprocessed in memory
    once; binary forward pass + CAM, plus the etiology pass when the worker has one."""

    def __init__(self, checkpoint: str, paths: list[Path], etiology: str | None = None,
                 threads: str | None = None, device: str = "cpu") -> None:
        import torch

        from ml.predictor import Predictor
        from ml.preprocess import decode_image, preprocess
        from worker.runtime import Models
        from worker.tuning import tune_allocator

        tune_allocator()  # the same glibc settings as the worker's pool process
        cores = int(threads) if threads else None
        self.models = Models(
            Predictor.from_checkpoint(checkpoint, device=device, threads=cores),
            Predictor.from_checkpoint(etiology, device=device, threads=cores) if etiology else None,
            torch.device(device), 0)
        self.binary, self.etiology = self.models.binary, self.models.etiology
        pixels = [decode_image(p.read_bytes()).pixels for p in paths]
        self.tensors = torch.stack([preprocess(px, self.binary.spec) for px in pixels])
        self.tensors2 = (torch.stack([preprocess(px, self.etiology.spec) for px in pixels])
                         if self.etiology else None)
        self.run(0, 32)  # warm-up

    def run(self, start: int, n: int) -> None:
        # Models.forward: on CUDA with pinned memory and fp16 autocast, as the worker runs it.
        self.models.forward(self.binary, self.tensors[start:start + n], with_cam=True)
        if self.etiology is not None and self.tensors2 is not None:
            self.models.forward(self.etiology, self.tensors2[start:start + n], with_cam=False)

    def pass_seconds(self, batch: int) -> tuple[float, float]:
        """(wall, CPU) seconds for every image once, in batches of `batch`."""
        started, cpu_started = time.perf_counter(), time.process_time()
        for i in range(0, len(self.tensors), batch):
            self.run(i, batch)
        return time.perf_counter() - started, time.process_time() - cpu_started

    def measure(self, batch: int, repeats: int = 2) -> dict[str, Any]:
        import torch

        passes = [self.pass_seconds(batch) for _ in range(repeats)]
        n = len(self.tensors)
        singles = []
        for i in range(min(40, n)):
            started = time.perf_counter()
            self.run(i, 1)
            singles.append(time.perf_counter() - started)
        second = self.etiology
        return {"images_per_s": n / min(wall for wall, _ in passes),
                "single_ms": statistics.median(singles) * 1000,
                "cpu_ms_per_image": min(cpu for _, cpu in passes) / n * 1000,
                "threads": torch.get_num_threads(),
                "model": f"{self.binary.name} {self.binary.version}"
                         + (f" + {second.name} {second.version}" if second else ""),
                "arch": self.binary.meta.get("arch", "?"),
                "input_size": self.binary.input_size}


class RawStreams:
    """The worker's layout without the worker: `processes` copies of the models, each with
    `threads` torch threads, passing over the same tensors at the same time (spawned
    processes, started in lock step). Their combined images/s is the raw speed of that
    layout, to compare with one copy using every core (RawModels)."""

    def __init__(self, processes: int, threads: int, checkpoint: str, paths: list[Path],
                 etiology: str | None, device: str = "cpu") -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.n = len(paths)
        self.barrier = context.Barrier(processes)
        self.pipes = []
        self.processes = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=_raw_stream, daemon=True, args=(
                child, self.barrier, threads, checkpoint, [str(p) for p in paths], etiology,
                device))
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            pipe.recv()  # loaded and warmed up

    def images_per_s(self, batch: int, repeats: int = 2) -> float:
        best = 0.0
        for _ in range(repeats):
            for pipe in self.pipes:
                pipe.send(batch)
            walls = [pipe.recv() for pipe in self.pipes]
            best = max(best, len(self.pipes) * self.n / max(walls))
        return best

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for process in self.processes:
            process.join(timeout=30)


def _raw_stream(pipe: Any, barrier: Any, threads: int, checkpoint: str, paths: list[str],
                etiology: str | None, device: str) -> None:
    import django

    django.setup()  # RawModels uses the worker's allocator settings
    raw = RawModels(checkpoint, [Path(p) for p in paths], etiology=etiology,
                    threads=str(threads), device=device)
    pipe.send("ready")
    while (batch := pipe.recv()) is not None:
        barrier.wait()
        pipe.send(raw.pass_seconds(batch)[0])


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=5)
        return True
    except requests.RequestException:
        return False


_MAKE_USER = """
import django
django.setup()
from backend.accounts.models import Hospital, User
from backend.accounts.services import token_issue
hospital, _ = Hospital.objects.get_or_create(name="Bench Hospital")
user = User.objects.filter(username="bench").first()
if user is None:
    user = User(username="bench", hospital=hospital, role="admin")
    user.set_password("bench-Pass-123-x")
    user.save()
print(token_issue(user=user).key)
"""


@contextlib.contextmanager
def running_stack(**kwargs: Any) -> Iterator[Stack]:
    stack = Stack(**kwargs)
    try:
        stack.start()
        yield stack
    except BaseException:
        for log in sorted(stack.workdir.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        stack.stop()


def machine_busy_cpu() -> float:
    """Busy CPU seconds of the whole machine so far, all cores together (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pss_mb(pid: int) -> float:
    """Proportional set size: private pages plus a share of the shared ones."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")
