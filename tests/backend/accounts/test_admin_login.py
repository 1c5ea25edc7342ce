"""/admin/login/ shares the API's brute-force defences and is audited."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from backend.accounts.models import User
from backend.audit.models import AuditEvent

pytestmark = pytest.mark.django_db
PASSWORD = "Operator-Pass-2026"


@pytest.fixture
def operator() -> User:
    return User.objects.create_superuser("ops", "ops@example.org", PASSWORD)


def admin_login(password: str, username: str = "ops") -> Any:
    return Client().post("/admin/login/?next=/admin/",
                         {"username": username, "password": password})


def test_repeated_admin_failures_lock_the_account_even_for_the_right_password(
    operator: User,
) -> None:
    for _ in range(5):
        assert admin_login("wrong").status_code == 200  # the form again, with its error
    locked = admin_login(PASSWORD)
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) > 0
    failures = AuditEvent.objects.filter(action="auth.login_failed", username="")
    assert failures.count() == 5
    assert all(e.detail == {"username": "ops", "site": "admin"} for e in failures)


def test_failures_on_the_api_count_towards_the_admin_lockout(operator: User) -> None:
    for _ in range(5):
        APIClient().post("/api/auth/token/", {"username": "ops", "password": "wrong"})
    assert admin_login(PASSWORD).status_code == 429


def test_a_successful_admin_login_works_resets_the_count_and_is_audited(
    operator: User,
) -> None:
    for _ in range(4):
        admin_login("wrong")
    ok = admin_login(PASSWORD)
    assert ok.status_code == 302 and ok["Location"] == "/admin/"
    for _ in range(4):
        admin_login("wrong")
    assert admin_login(PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action="auth.login", detail__site="admin").count() == 2


def test_admin_login_is_rate_limited_per_client(operator: User,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.accounts.throttles import AuthRateThrottle

    monkeypatch.setattr(AuthRateThrottle, "THROTTLE_RATES", {"auth": "3/m"})
    codes = [admin_login("wrong", username=f"u{i}").status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]
    assert Client().get("/admin/login/").status_code == 200  # the form is still shown
