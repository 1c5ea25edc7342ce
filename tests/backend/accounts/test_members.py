"""Hospital admins manage their hospital's members and API tokens; nobody else can."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from backend.accounts.models import User
from tests.conftest import client_for, make_user

pytestmark = pytest.mark.django_db
NEW = {"username": "nurse", "password": "Chest-Film-4242", "email": "n@example.org",
       "role": "clinician"}


@pytest.fixture
def clinician(user: Any) -> Any:
    return make_user("carl", user.hospital.name, role="clinician")


def test_admin_creates_a_clinician_who_can_then_log_in(api: Any, user: Any) -> None:
    response = api.post("/api/hospital/members/", NEW, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["role"] == "clinician"
    member = User.objects.get(username="nurse")
    assert member.hospital == user.hospital and member.role == "clinician"
    login = APIClient().post("/api/auth/login/", {"username": "nurse",
                                                  "password": NEW["password"]}, format="json")
    assert login.status_code == 200 and login.json()["hospital"] == user.hospital.name


def test_admin_lists_only_their_hospitals_members(api: Any, other_user: Any,
                                                  clinician: Any) -> None:
    response = api.get("/api/hospital/members/")
    assert response.status_code == 200
    assert [m["username"] for m in response.json()] == ["alice", "carl"]


@pytest.mark.parametrize("payload, field", [
    ({**NEW, "password": "123"}, "detail"),
    ({**NEW, "username": "ALICE"}, "detail"),
    ({**NEW, "role": "superuser"}, "role"),
    ({"username": "x"}, "password"),
])
def test_member_creation_rejects_bad_input(api: Any, user: Any, payload: dict[str, str],
                                           field: str) -> None:
    response = api.post("/api/hospital/members/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert User.objects.count() == 1


def test_clinicians_cannot_manage_members(clinician: Any) -> None:
    client = client_for(clinician)
    assert client.get("/api/hospital/members/").status_code == 403
    assert client.post("/api/hospital/members/", NEW, format="json").status_code == 403
    assert not User.objects.filter(username="nurse").exists()


def test_members_endpoint_requires_authentication() -> None:
    assert APIClient().get("/api/hospital/members/").status_code in (401, 403)
    assert APIClient().post("/api/hospital/members/", NEW).status_code in (401, 403)


def test_admin_issues_rotates_and_revokes_a_members_token(api: Any, clinician: Any) -> None:
    first = api.post(f"/api/hospital/members/{clinician.id}/token/")
    assert first.status_code == 201
    second = api.post(f"/api/hospital/members/{clinician.id}/token/").json()["token"]
    assert second != first.json()["token"]
    integration = APIClient()
    integration.credentials(HTTP_AUTHORIZATION=f"Token {second}")
    assert integration.get("/api/auth/me/").json()["username"] == "carl"
    assert api.delete(f"/api/hospital/members/{clinician.id}/token/").status_code == 204
    assert integration.get("/api/auth/me/").status_code in (401, 403)


def test_admin_deactivates_a_member_and_cannot_demote_themself(
    api: Any, user: Any, clinician: Any
) -> None:
    response = api.patch(f"/api/hospital/members/{clinician.id}/", {"is_active": False},
                         format="json")
    assert response.status_code == 200 and response.json()["is_active"] is False
    assert APIClient().post("/api/auth/token/", {"username": "carl",
                                                 "password": "x-Ray-pass-123"}).status_code == 400
    own = api.patch(f"/api/hospital/members/{user.id}/", {"role": "clinician"}, format="json")
    assert own.status_code == 400
    user.refresh_from_db()
    assert user.role == "admin"


def test_another_hospitals_member_is_404(other_api: Any, clinician: Any) -> None:
    assert other_api.post(f"/api/hospital/members/{clinician.id}/token/").status_code == 404
    assert other_api.delete(f"/api/hospital/members/{clinician.id}/token/").status_code == 404
    assert other_api.patch(f"/api/hospital/members/{clinician.id}/", {"role": "admin"},
                           format="json").status_code == 404
    clinician.refresh_from_db()
    assert clinician.role == "clinician"


def test_member_update_rejects_an_unknown_role(api: Any, clinician: Any) -> None:
    response = api.patch(f"/api/hospital/members/{clinician.id}/", {"role": "owner"},
                         format="json")
    assert response.status_code == 400 and "role" in response.json()
    clinician.refresh_from_db()
    assert clinician.role == "clinician"
