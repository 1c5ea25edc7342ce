"""OpenAPI schema validity, the docs page, production `check --deploy`, admin registration."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.conftest import REPO_ROOT


def test_openapi_schema_validates_without_warnings(tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    paths = schema["paths"]
    for expected in ["/api/auth/signup/", "/api/auth/token/", "/api/auth/login/",
                     "/api/auth/logout/", "/api/auth/me/", "/api/auth/password/",
                     "/api/studies/", "/api/studies/{study_id}/",
                     "/api/studies/{study_id}/images/", "/api/studies/{study_id}/cancel/",
                     "/api/studies/{study_id}/retry/", "/api/studies/{study_id}/export.csv",
                     "/api/studies/{study_id}/export.json", "/api/images/{image_id}/file/",
                     "/api/images/{image_id}/preview/", "/api/images/{image_id}/heatmap/",
                     "/api/hospital/members/", "/api/hospital/audit/", "/api/health/"]:
        assert expected in paths, expected
    upload = paths["/api/studies/"]["post"]["requestBody"]["content"]["multipart/form-data"]
    files = schema["components"]["schemas"][upload["schema"]["$ref"].rsplit("/", 1)[1]]
    assert files["properties"]["files"]["items"]["format"] == "binary"
    params = {p["name"] for p in paths["/api/studies/"]["get"]["parameters"]}
    assert {"status", "priority", "search", "created_after", "created_before", "page"} <= params


@pytest.mark.django_db
def test_schema_and_swagger_ui_are_served() -> None:
    assert APIClient().get("/api/schema/").status_code == 200
    docs = APIClient().get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_production_settings_pass_check_deploy_without_warnings() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "backend.config.settings.production",
           "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "pneumoscan.example.org"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env["DJANGO_SETTINGS_MODULE"] = "backend.config.settings.production"
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.django_db
def test_operators_see_studies_images_results_and_audit_read_only_in_admin(
    admin_client: Any,
) -> None:
    for model in ["studies/study", "studies/image", "studies/result", "audit/auditevent",
                  "accounts/hospital", "accounts/user"]:
        assert admin_client.get(f"/admin/{model}/").status_code == 200, model
    assert admin_client.get("/admin/studies/study/add/").status_code == 403
    assert admin_client.get("/admin/audit/auditevent/add/").status_code == 403


@pytest.mark.django_db
def test_models_and_migrations_are_in_sync() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
