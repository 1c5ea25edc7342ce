"""Sign-up, token and session authentication."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from backend.accounts.models import Hospital, User

pytestmark = pytest.mark.django_db
PASSWORD = "Lung-Scan-2026!"


def signup(client: APIClient, username: str, hospital: str, password: str = PASSWORD) -> Any:
    return client.post("/api/auth/signup/", {"username": username, "password": password,
                                             "email": f"{username}@example.org",
                                             "hospital": hospital}, format="json")


def test_signup_with_new_hospital_makes_user_its_admin() -> None:
    response = signup(APIClient(), "carol", "Kids Clinic")
    assert response.status_code == 201, response.content
    user = User.objects.get(username="carol")
    assert user.hospital == Hospital.objects.get(name="Kids Clinic")
    assert user.role == "admin"
    assert response.json()["hospital"] == "Kids Clinic"


def test_signup_cannot_join_existing_hospital_without_its_admin() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    response = signup(APIClient(), "dave", "kids clinic")
    assert response.status_code == 400
    assert "admin" in response.json()["detail"]
    assert not User.objects.filter(username="dave").exists()


def test_signup_rejects_weak_password() -> None:
    response = signup(APIClient(), "erin", "Another", password="123")
    assert response.status_code == 400
    assert not Hospital.objects.filter(name="Another").exists()


def test_token_then_token_header_authenticates() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    bad = APIClient().post("/api/auth/token/", {"username": "carol", "password": "nope"})
    assert bad.status_code == 400
    token = APIClient().post("/api/auth/token/", {"username": "carol", "password": PASSWORD})
    assert token.status_code == 200
    client = APIClient()
    assert client.get("/api/auth/me/").status_code in (401, 403)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    me = client.get("/api/auth/me/")
    assert me.status_code == 200 and me.json()["username"] == "carol"


def test_session_login_enforces_csrf() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    client = APIClient(enforce_csrf_checks=True)
    client.get("/api/auth/login/")
    csrf = client.cookies["csrftoken"].value
    response = client.post("/api/auth/login/", {"username": "carol", "password": PASSWORD},
                           format="json", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200
    assert client.get("/api/auth/me/").json()["hospital"] == "Kids Clinic"
    # A state-changing request without the CSRF header is refused for session users.
    assert client.post("/api/auth/logout/").status_code == 403


def test_session_login_without_csrf_token_is_refused() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    client = APIClient(enforce_csrf_checks=True)
    response = client.post("/api/auth/login/", {"username": "carol", "password": PASSWORD},
                           format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert client.get("/api/auth/me/").status_code in (401, 403)


def test_signup_can_be_switched_off(settings: Any) -> None:
    assert APIClient().get("/api/auth/signup/").json() == {"enabled": True}
    settings.SIGNUP_ENABLED = False
    assert APIClient().get("/api/auth/signup/").json() == {"enabled": False}
    response = signup(APIClient(), "carol", "Kids Clinic")
    assert response.status_code == 403
    assert not User.objects.filter(username="carol").exists()


def test_signup_with_missing_fields_is_400() -> None:
    response = APIClient().post("/api/auth/signup/", {"username": "x"}, format="json")
    assert response.status_code == 400
    assert {"password", "hospital"} <= set(response.json())


def test_password_is_stored_hashed_never_in_clear() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    stored = User.objects.get(username="carol").password
    assert PASSWORD not in stored and "$" in stored


def test_production_hashes_passwords_with_argon2() -> None:
    from backend.config.settings import base

    assert base.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")
    assert len(base.AUTH_PASSWORD_VALIDATORS) >= 4


# --- brute-force defences -------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["/api/auth/login/", "/api/auth/token/"])
def test_repeated_failures_lock_the_account_even_for_the_right_password(
    endpoint: str, settings: Any
) -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    for _ in range(5):
        response = APIClient().post(endpoint, {"username": "carol", "password": "wrong"},
                                    format="json")
        assert response.status_code == 400
    locked = APIClient().post(endpoint, {"username": "carol", "password": PASSWORD},
                              format="json")
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) > 0
    # Another account is not affected.
    signup(APIClient(), "dave", "Other Clinic")
    ok = APIClient().post(endpoint, {"username": "dave", "password": PASSWORD}, format="json")
    assert ok.status_code == 200


def test_a_successful_login_resets_the_failure_count() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    for _ in range(3):
        APIClient().post("/api/auth/token/", {"username": "carol", "password": "no"})
    assert APIClient().post("/api/auth/token/", {"username": "carol",
                                                 "password": PASSWORD}).status_code == 200
    for _ in range(3):
        APIClient().post("/api/auth/token/", {"username": "carol", "password": "no"})
    assert APIClient().post("/api/auth/token/", {"username": "carol",
                                                 "password": PASSWORD}).status_code == 200


@pytest.mark.parametrize("endpoint", ["/api/auth/login/", "/api/auth/token/",
                                      "/api/auth/signup/"])
def test_auth_endpoints_are_rate_limited_per_client(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.accounts.throttles import AuthRateThrottle

    monkeypatch.setattr(AuthRateThrottle, "THROTTLE_RATES", {"auth": "3/m"})
    codes = [APIClient().post(endpoint, {"username": f"u{i}", "password": "x"},
                              format="json").status_code for i in range(4)]
    assert codes == [400, 400, 400, 429]
    # A forged X-Forwarded-For does not give the client a fresh allowance.
    forged = APIClient().post(endpoint, {"username": "u9", "password": "x"}, format="json",
                              HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert forged.status_code == 429


def test_failed_logins_are_audited() -> None:
    from backend.audit.models import AuditEvent

    signup(APIClient(), "carol", "Kids Clinic")
    APIClient().post("/api/auth/login/", {"username": "carol", "password": "wrong"})
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.hospital.name == "Kids Clinic"
    assert event.ip == "127.0.0.1"


# --- logout and password change -------------------------------------------------------------


def logged_in(username: str = "carol") -> APIClient:
    client = APIClient()
    assert client.post("/api/auth/login/", {"username": username, "password": PASSWORD},
                       format="json").status_code == 200
    return client


def test_logout_ends_the_session() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    client = logged_in()
    assert client.post("/api/auth/logout/").status_code == 204
    assert client.get("/api/auth/me/").status_code in (401, 403)


def test_logout_without_login_is_refused() -> None:
    assert APIClient().post("/api/auth/logout/").status_code in (401, 403)


def test_password_change_keeps_the_session_and_revokes_tokens() -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    token = APIClient().post("/api/auth/token/", {"username": "carol",
                                                  "password": PASSWORD}).json()["token"]
    client = logged_in()
    response = client.post("/api/auth/password/", {"old_password": PASSWORD,
                                                   "new_password": "Another-Lung-2027?"},
                           format="json")
    assert response.status_code == 204
    assert client.get("/api/auth/me/").status_code == 200  # session still valid
    assert User.objects.get(username="carol").check_password("Another-Lung-2027?")
    with_token = APIClient()
    with_token.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert with_token.get("/api/auth/me/").status_code in (401, 403)


@pytest.mark.parametrize("old, new, message", [
    ("wrong-old-password", "Another-Lung-2027?", "current password"),
    (PASSWORD, "short", "too short"),
    (PASSWORD, "password123", "too common"),
])
def test_password_change_rejects_wrong_old_or_weak_new(old: str, new: str,
                                                       message: str) -> None:
    signup(APIClient(), "carol", "Kids Clinic")
    client = logged_in()
    response = client.post("/api/auth/password/", {"old_password": old, "new_password": new},
                           format="json")
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert User.objects.get(username="carol").check_password(PASSWORD)


def test_password_change_requires_authentication() -> None:
    response = APIClient().post("/api/auth/password/", {"old_password": "a",
                                                        "new_password": "b"})
    assert response.status_code in (401, 403)
