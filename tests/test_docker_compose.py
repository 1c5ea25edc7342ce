"""docker-compose.yml cannot run here (no Docker engine): check it against the code instead."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_has_the_services_of_the_design(compose: dict[str, Any]) -> None:
    assert {"db", "redis", "web", "worker", "flower", "dicom"} <= set(compose["services"])
    assert "dicomlistener" in " ".join(command_of(compose["services"]["dicom"]))
    assert compose["services"]["db"]["image"].startswith("postgres")
    assert compose["services"]["redis"]["image"].startswith("redis")


def test_web_runs_gunicorn_on_the_real_wsgi_module(compose: dict[str, Any]) -> None:
    command = " ".join(command_of(compose["services"]["web"]))
    assert "migrate" in command
    module = command.split("gunicorn", 1)[1].split()[0]
    assert hasattr(importlib.import_module(module), "application")


def test_worker_listens_on_the_queue_tasks_are_routed_to(compose: dict[str, Any]) -> None:
    from django.conf import settings

    argv = command_of(compose["services"]["worker"])
    assert argv[:3] == ["celery", "-A", "worker"]
    queues = argv[argv.index("-Q") + 1].split(",")
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed <= set(queues) | {"default"}
    assert "inference" in queues
    # The default worker runs on any host (CPU); the GPU one is opt-in (`--profile gpu`),
    # because a device reservation makes the service fail on hosts without the NVIDIA runtime.
    assert "deploy" not in compose["services"]["worker"]
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["environment"]["INFERENCE_DEVICE"] == "cuda"
    assert command_of(gpu)[command_of(gpu).index("-Q") + 1] == "inference"
    # Its pool is sized for a GPU host by the settings (several processes feed one GPU).
    assert not any(arg.startswith("--concurrency") for arg in command_of(gpu))
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert importlib.import_module("worker").app.main == "pneumoscan"


def test_flower_is_protected_and_every_app_service_has_database_and_redis(
    compose: dict[str, Any],
) -> None:
    assert "--basic-auth" in " ".join(command_of(compose["services"]["flower"]))
    for name in ("web", "worker", "flower"):
        env = compose["services"][name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["DJANGO_SETTINGS_MODULE"] == "backend.config.settings.production"


def test_only_a_tls_proxy_is_published_and_it_fronts_web_and_flower(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    # HTTP only through the proxy; the DICOM listener speaks DICOM on its own port.
    assert published == {"proxy", "dicom"}
    assert all("11112" in str(port) for port in services["dicom"]["ports"])
    proxy = services["proxy"]
    assert proxy["image"].startswith("caddy:")
    assert any(port.endswith(":443") for port in proxy["ports"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    caddyfile = REPO_ROOT / mounts["/etc/caddy/Caddyfile"]
    text = caddyfile.read_text()
    assert "reverse_proxy web:8000" in text and "reverse_proxy flower:5555" in text
    assert services["web"]["expose"] == ["8000"] and services["flower"]["expose"] == ["5555"]
    assert "--bind 0.0.0.0:8000" in " ".join(command_of(services["web"]))
    assert "--port=5555" in command_of(services["flower"])


def test_the_app_trusts_exactly_the_one_proxy_in_front_of_it(compose: dict[str, Any]) -> None:
    env = compose["services"]["web"]["environment"]
    assert env["TRUST_X_FORWARDED_PROTO"] == "true" and env["NUM_PROXIES"] == "1"
    assert env["SECURE_SSL_REDIRECT"].endswith(":-true}")
    assert "USE_X_FORWARDED_HOST" not in env  # Caddy passes the client's Host through


def test_the_caddyfile_is_valid_for_caddy(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if not shutil.which("caddy"):
        pytest.skip("caddy is not installed (.ci/run installs Debian's caddy)")
    result = subprocess.run(
        ["caddy", "validate", "--config", str(REPO_ROOT / "deploy" / "Caddyfile"),
         "--adapter", "caddyfile"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
             "XDG_CONFIG_HOME": str(tmp_path), "SITE_ADDRESS": "pneumo.example.org"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid configuration" in result.stdout + result.stderr
