"""create_hospital_admin: a new hospital, or an existing one only when asked (--existing)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from backend.accounts.models import Hospital, User
from backend.studies.models import Study

pytestmark = pytest.mark.django_db
PASSWORD = "Operator-Chosen-2026"


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_hospital_admin", *args, "--password", PASSWORD, stdout=out)
    return out.getvalue()


def test_a_stranger_who_signed_up_first_cannot_receive_the_operators_admin() -> None:
    """The takeover: a stranger signs up as hospital "X", then the operator creates X's admin."""
    stranger = APIClient().post("/api/auth/signup/", {
        "username": "stranger", "password": "Stranger-Pass-77", "hospital": "Northside Kids",
    }, format="json")
    assert stranger.status_code == 201
    with pytest.raises(CommandError) as refused:
        run("--hospital", "northside kids", "--username", "ops-admin")
    message = str(refused.value)
    assert "already exists" in message and "stranger" in message and "--existing" in message
    assert not User.objects.filter(username="ops-admin").exists()
    hospital = Hospital.objects.get()
    assert list(hospital.members.values_list("username", flat=True)) == ["stranger"]
    # The operator's admin, created under another name, shares nothing with the stranger.
    run("--hospital", "Northside Kids Hospital", "--username", "ops-admin")
    admin = User.objects.get(username="ops-admin")
    assert admin.hospital != hospital
    Study.objects.create(hospital=admin.hospital, created_by=admin, name="real patients")
    client = APIClient()
    client.login(username="stranger", password="Stranger-Pass-77")
    assert client.get("/api/studies/").json()["count"] == 0


def test_existing_adds_the_admin_and_names_the_hospitals_admins() -> None:
    run("--hospital", "St. Mary", "--username", "mary")
    out = run("--hospital", "ST. MARY", "--username", "second", "--existing")
    assert "St. Mary exists; its admins: mary." in out
    second = User.objects.get(username="second")
    assert second.hospital.name == "St. Mary" and second.role == "admin"
    assert Hospital.objects.count() == 1


def test_existing_with_an_unknown_hospital_is_refused() -> None:
    with pytest.raises(CommandError, match="No hospital named"):
        run("--hospital", "Nowhere", "--username", "x", "--existing")
    assert not Hospital.objects.exists() and not User.objects.exists()


def test_print_token_prints_a_working_api_token() -> None:
    out = run("--hospital", "St. Mary", "--username", "mary", "--print-token")
    token = out.strip().splitlines()[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    me = client.get("/api/auth/me/")
    assert me.status_code == 200 and me.json()["hospital"] == "St. Mary"


def test_a_user_of_another_hospital_is_not_moved() -> None:
    run("--hospital", "St. Mary", "--username", "mary")
    with pytest.raises(CommandError, match="another hospital"):
        run("--hospital", "General", "--username", "mary")
    assert User.objects.get(username="mary").hospital.name == "St. Mary"
    assert not Hospital.objects.filter(name="General").exists()
