"""`make run` (manage.py runstack): a worker killed with -9 takes nothing else down, runstack
starts a new one, and the new one picks up the work. Flower is behind basic auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO_ROOT, wait_for
from tests.worker.conftest import free_port, small_pngs, upload_files, wait_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def children_of(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def answers(url: str, **kwargs: Any) -> int | None:
    """The HTTP status, or None when nothing answers (health may say 503: still up)."""
    try:
        return requests.get(url, timeout=5, **kwargs).status_code
    except requests.RequestException:
        return None


def inference_worker(stack: subprocess.Popen) -> int | None:
    return next((pid for pid, cmd in children_of(stack.pid).items()
                 if "-Q inference" in cmd), None)


def test_runstack_survives_a_dead_worker(
    api: Any, db_name: str, broker: str, tiny_checkpoint: Path, tmp_path: Path,
) -> None:
    port, flower_port = free_port(), free_port()
    env = os.environ | {
        "DJANGO_SETTINGS_MODULE": "backend.config.settings.test",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}",
        "REDIS_URL": broker, "TEST_REDIS_URL": broker,
        "PORT": str(port), "FLOWER_PORT": str(flower_port), "WEB_CONCURRENCY": "1",
        "FLOWER_BASIC_AUTH": "ops:correct-horse", "PNEUMO_TORCH_THREADS": "1",
        "MODEL_CHECKPOINT_BINARY": str(tiny_checkpoint),
        "MODEL_CHECKPOINT_ETIOLOGY": str(tmp_path / "absent.pt"),
        "BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "DICOM_PORT": str(free_port()),  # other worktrees run this test at the same time
    }
    log = tmp_path / "runstack.log"
    stack = subprocess.Popen([sys.executable, "manage.py", "runstack", "--no-migrate"],
                             cwd=REPO_ROOT, env=env, stdout=log.open("wb"),
                             stderr=subprocess.STDOUT)
    web, flower = f"http://127.0.0.1:{port}/api/health/", f"http://127.0.0.1:{flower_port}/"
    try:
        wait_for(lambda: answers(web) is not None, timeout=90, interval=0.5)
        wait_for(lambda: answers(flower, auth=("ops", "correct-horse")) == 200, timeout=90,
                 interval=0.5)
        assert answers(flower) == 401  # no credentials, no Flower
        # Flower sees both queues (it counts every Redis priority list of each).
        queues = wait_for(lambda: {q["name"] for q in requests.get(
            f"{flower}api/queues/length", auth=("ops", "correct-horse"), timeout=5,
        ).json().get("active_queues", [])} >= {"inference", "default"}, timeout=30)
        assert queues
        assert wait_for(lambda: any("dicomlistener" in cmd
                                    for cmd in children_of(stack.pid).values()), timeout=30)
        first = wait_for(lambda: inference_worker(stack), timeout=30)
        os.killpg(first, signal.SIGKILL)  # the worker and its pool process
        # Nothing else goes down...
        for _ in range(6):
            assert answers(web) is not None
            assert answers(flower, auth=("ops", "correct-horse")) == 200
        # ...and a new worker takes the work.
        second = wait_for(lambda: (pid := inference_worker(stack)) not in (None, first) and pid,
                          timeout=30)
        assert second != first
        study = upload_files(api, small_pngs(3, seed=30))
        assert wait_study(study["id"], timeout=90)["status"] == "done"
        assert b"worker-inference exited" in log.read_bytes()
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
        print(log.read_text()[-4000:])
    assert not children_of(stack.pid)
