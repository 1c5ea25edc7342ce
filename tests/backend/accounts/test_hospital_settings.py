"""The hospital's scope mode: members read it, admins change it, changes are audited."""

from __future__ import annotations

from typing import Any

from backend.audit.models import AuditEvent
from tests.conftest import client_for, make_user


def test_default_scope_mode_is_enforce(api: Any) -> None:
    response = api.get("/api/hospital/settings/")
    assert response.status_code == 200
    assert response.json() == {"name": "St. Mary", "scope_mode": "enforce"}


def test_admin_switches_to_warn_and_it_is_audited(api: Any, user: Any) -> None:
    response = api.patch("/api/hospital/settings/", {"scope_mode": "warn"}, format="json")
    assert response.status_code == 200 and response.json()["scope_mode"] == "warn"
    user.hospital.refresh_from_db()
    assert user.hospital.scope_mode == "warn"
    event = AuditEvent.objects.get(action=AuditEvent.Action.SETTINGS_CHANGED)
    assert event.hospital_id == user.hospital_id and event.username == user.username
    assert event.detail == {"scope_mode": {"from": "enforce", "to": "warn"}}
    # Setting the same value again changes nothing and writes no event.
    api.patch("/api/hospital/settings/", {"scope_mode": "warn"}, format="json")
    assert AuditEvent.objects.filter(action=AuditEvent.Action.SETTINGS_CHANGED).count() == 1


def test_clinician_reads_but_cannot_change(db: None, user: Any) -> None:
    clinician = make_user("carol", "St. Mary", role="clinician")
    client = client_for(clinician)
    assert client.get("/api/hospital/settings/").json()["scope_mode"] == "enforce"
    response = client.patch("/api/hospital/settings/", {"scope_mode": "warn"}, format="json")
    assert response.status_code == 403
    user.hospital.refresh_from_db()
    assert user.hospital.scope_mode == "enforce"


def test_unknown_mode_is_refused(api: Any) -> None:
    response = api.patch("/api/hospital/settings/", {"scope_mode": "off"}, format="json")
    assert response.status_code == 400
    assert "scope_mode" in response.json()
