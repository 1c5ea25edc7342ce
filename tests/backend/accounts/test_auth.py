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
