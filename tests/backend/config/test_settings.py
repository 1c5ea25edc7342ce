"""Safe defaults of the settings modules, read as a process would start with them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from tests.conftest import REPO_ROOT

NAMES = ["DEBUG", "SIGNUP_ENABLED", "METRICS_PUBLIC", "SECURE_PROXY_SSL_HEADER",
         "USE_X_FORWARDED_HOST", "NUM_PROXIES"]


def settings_of(module: str, **env: str) -> dict[str, Any]:
    """The settings a fresh process gets from `module` and the given environment."""
    clean = {k: v for k, v in os.environ.items()
             if k not in {"DEBUG", "SIGNUP_ENABLED", "METRICS_PUBLIC", "NUM_PROXIES",
                          "TRUST_X_FORWARDED_PROTO", "USE_X_FORWARDED_HOST"}}
    clean.update(DJANGO_SETTINGS_MODULE=f"backend.config.settings.{module}",
                 SECRET_KEY="k" * 60, **env)
    code = ("import json; from django.conf import settings; "
            f"print(json.dumps({{n: getattr(settings, n) for n in {NAMES!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=clean,
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_make_run_wsgi_and_celery_settings_keep_debug_off_unless_asked() -> None:
    # `make run`, backend/config/wsgi.py and the Celery app default to the local settings.
    assert settings_of("local")["DEBUG"] is False
    assert settings_of("local", DEBUG="1")["DEBUG"] is True
    assert settings_of("production", DEBUG="1")["DEBUG"] is False


def test_production_closes_sign_up_and_metrics_and_trusts_no_forwarded_header() -> None:
    prod = settings_of("production")
    assert prod["SIGNUP_ENABLED"] is False and prod["METRICS_PUBLIC"] is False
    assert prod["SECURE_PROXY_SSL_HEADER"] is None
    assert prod["USE_X_FORWARDED_HOST"] is False and prod["NUM_PROXIES"] == 0
    assert settings_of("production", METRICS_PUBLIC="1")["METRICS_PUBLIC"] is False
    assert settings_of("production", SIGNUP_ENABLED="1")["SIGNUP_ENABLED"] is True


def test_forwarded_headers_are_trusted_when_configured() -> None:
    proxied = settings_of("production", TRUST_X_FORWARDED_PROTO="1",
                          USE_X_FORWARDED_HOST="1", NUM_PROXIES="1")
    assert proxied["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert proxied["USE_X_FORWARDED_HOST"] is True and proxied["NUM_PROXIES"] == 1


@pytest.mark.django_db
def test_a_forged_x_forwarded_proto_does_not_pass_for_https() -> None:
    with override_settings(SECURE_SSL_REDIRECT=True):
        forged = APIClient().get("/api/health/live/", HTTP_X_FORWARDED_PROTO="https")
    assert forged.status_code == 301 and forged["Location"].startswith("https://")
    with override_settings(SECURE_SSL_REDIRECT=True,
                           SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        proxied = APIClient().get("/api/health/live/", HTTP_X_FORWARDED_PROTO="https")
    assert proxied.status_code == 200


@pytest.mark.django_db
def test_x_forwarded_host_is_ignored_unless_configured() -> None:
    with override_settings(ALLOWED_HOSTS=["pneumo.example.org"]):
        plain = APIClient().get("/api/health/live/", HTTP_HOST="pneumo.example.org",
                                HTTP_X_FORWARDED_HOST="evil.example.net")
        with override_settings(USE_X_FORWARDED_HOST=True):
            trusted = APIClient().get("/api/health/live/", HTTP_HOST="pneumo.example.org",
                                      HTTP_X_FORWARDED_HOST="evil.example.net")
    assert plain.status_code == 200
    assert trusted.status_code == 400  # the forwarded host is checked, and refused


@pytest.mark.django_db
def test_the_audit_log_takes_the_client_address_from_trusted_proxies_only(
    user: Any, settings: Any
) -> None:
    from backend.audit.models import AuditEvent

    def login_ip() -> str:
        APIClient().post("/api/auth/token/", {"username": "alice", "password": "wrong"},
                         REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7")
        return AuditEvent.objects.filter(action="auth.login_failed").latest("id").ip

    assert login_ip() == "10.0.0.2"
    settings.NUM_PROXIES = 1
    assert login_ip() == "198.51.100.7"
