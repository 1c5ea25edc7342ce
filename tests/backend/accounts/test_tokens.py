"""API tokens (django-rest-knox): shown once, stored hashed, expiring, rotatable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.conftest import make_user

pytestmark = pytest.mark.django_db
PASSWORD = "x-Ray-pass-123"


def issue(username: str = "alice") -> dict[str, Any]:
    response = APIClient().post("/api/auth/token/", {"username": username,
                                                     "password": PASSWORD})
    assert response.status_code == 200, response.content
    return response.json()


def with_token(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_a_token_is_stored_hashed_and_expires_after_the_ttl(user: Any, settings: Any) -> None:
    body = issue()
    token = body["token"]
    (stored,) = AuthToken.objects.filter(user=user)
    assert token not in (stored.digest, stored.token_key) and len(stored.token_key) < len(token)
    assert token not in str(list(AuthToken.objects.values_list()))
    expected = timezone.now() + timedelta(hours=settings.API_TOKEN_TTL_HOURS)
    assert abs((stored.expiry - expected).total_seconds()) < 60
    assert body["expiry"].startswith(stored.expiry.strftime("%Y-%m-%dT%H:%M"))
    assert with_token(token).get("/api/auth/me/").status_code == 200


def test_an_expired_token_is_refused(user: Any) -> None:
    token = issue()["token"]
    AuthToken.objects.filter(user=user).update(expiry=timezone.now() - timedelta(seconds=1))
    assert with_token(token).get("/api/auth/me/").status_code in (401, 403)


def test_each_request_issues_a_new_token_and_the_oldest_go_past_the_limit(
    user: Any, settings: Any
) -> None:
    settings.API_TOKENS_PER_USER = 2
    first, second, third = (issue()["token"] for _ in range(3))
    assert len({first, second, third}) == 3
    assert AuthToken.objects.filter(user=user).count() == 2
    assert with_token(first).get("/api/auth/me/").status_code in (401, 403)
    assert with_token(second).get("/api/auth/me/").status_code == 200
    assert with_token(third).get("/api/auth/me/").status_code == 200


def test_rotation_replaces_only_the_token_used(user: Any) -> None:
    kept, rotated = issue()["token"], issue()["token"]
    response = with_token(rotated).post("/api/auth/token/rotate/")
    assert response.status_code == 201
    new = response.json()["token"]
    assert new not in (kept, rotated)
    assert with_token(rotated).get("/api/auth/me/").status_code in (401, 403)
    assert with_token(new).get("/api/auth/me/").status_code == 200
    assert with_token(kept).get("/api/auth/me/").status_code == 200


def test_revoke_ends_the_token_used_or_all_of_them(user: Any) -> None:
    one, other = issue()["token"], issue()["token"]
    assert with_token(one).post("/api/auth/token/revoke/").status_code == 204
    assert with_token(one).get("/api/auth/me/").status_code in (401, 403)
    assert with_token(other).get("/api/auth/me/").status_code == 200
    third = issue()["token"]
    assert with_token(third).post("/api/auth/token/revoke/?all=true").status_code == 204
    assert not AuthToken.objects.filter(user=user).exists()
    assert with_token(other).get("/api/auth/me/").status_code in (401, 403)


def test_rotation_and_revocation_need_the_token_itself(user: Any) -> None:
    client = APIClient()
    client.force_login(user)
    assert client.post("/api/auth/token/rotate/").status_code == 401
    assert client.post("/api/auth/token/revoke/").status_code == 401
    assert APIClient().post("/api/auth/token/rotate/").status_code == 401


def test_members_list_shows_who_holds_an_unexpired_token(user: Any, api: Any) -> None:
    carl = make_user("carl", user.hospital.name, role="clinician")
    make_user("dora", user.hospital.name, role="clinician")
    issue("carl")
    issue("dora")
    AuthToken.objects.filter(user__username="dora").update(
        expiry=timezone.now() - timedelta(minutes=1))
    members = {m["username"]: m["has_token"] for m in api.get("/api/hospital/members/").json()}
    assert members == {"alice": False, "carl": True, "dora": False}
    assert carl.auth_token_set.count() == 1


def test_legacy_clear_tokens_are_hashed_by_the_migration_and_their_table_dropped(
    user: Any,
) -> None:
    """Tokens of DRF's authtoken (stored in clear) keep working, hashed and expiring."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module(
        "backend.accounts.migrations.0002_hospital_upload_quota_knox_tokens")
    legacy = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, "
                       "created timestamptz, user_id bigint)")
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, now(), %s)", [legacy, user.id])
    with connection.schema_editor() as editor:
        migration.hash_legacy_tokens(apps, editor)
        migration.drop_legacy_table(apps, editor)
    assert "authtoken_token" not in connection.introspection.table_names()
    stored = AuthToken.objects.get(user=user)
    assert stored.expiry is not None and legacy not in stored.digest
    assert with_token(legacy).get("/api/auth/me/").json()["username"] == "alice"
