"""The web server exactly as `make run` starts it serves no debug page."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO_ROOT, stop_process, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_404_under_make_run_shows_no_debug_page(tmp_path: Path) -> None:
    from django.db import connection

    from backend.core.management.commands.runstack import build_children

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    env.update(DJANGO_SETTINGS_MODULE="backend.config.settings.local", PORT=str(port),
               WEB_CONCURRENCY="1", FLOWER_BASIC_AUTH="x:y",
               DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/"
                            f"{connection.settings_dict['NAME']}")
    (web,) = [c for c in build_children(os.sys.executable, env, tmp_path) if c.name == "web"]
    log = tmp_path / "web.log"
    process = subprocess.Popen(web.argv, cwd=REPO_ROOT, env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> Any:
        try:
            return requests.get(base + path, timeout=5)
        except requests.RequestException:
            return None

    try:
        assert wait_for(lambda: get("/api/health/live/"), timeout=60, interval=0.3)
        missing = get("/no-such-page/")
        assert missing.status_code == 404
        for leak in ("DEBUG = True", "URLconf", "Traceback", "backend.config.urls"):
            assert leak not in missing.text, leak
    finally:
        stop_process(process)
