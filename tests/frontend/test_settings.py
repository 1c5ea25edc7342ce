"""The hospital settings page in a real browser: a hospital admin switches the scope mode,
sets the calling AE titles and the destination PACS; a bad value is refused with the server's
reason; nothing can be typed before the stored values are in; clinicians do not get the
page."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import make_user
from tests.frontend.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def log_in(page: Any, username: str) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("x-Ray-pass-123")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Studies").wait_for()


def test_admin_sets_calling_ae_titles_and_destination(page: Any) -> None:
    from playwright.sync_api import expect

    make_user("alice", "St. Mary")
    log_in(page, "alice")
    # The stored settings arrive late: until they do, the form takes no typing (a late answer
    # would overwrite what was typed).
    held: list[Any] = []
    page.route("**/api/hospital/dicom/", lambda route: held.append(route)
               if route.request.method == "GET" and not held else route.continue_())
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Hospital settings")).to_be_visible()
    calling = page.get_by_label("Calling AE titles")
    expect(calling).to_be_disabled()
    expect(page.get_by_role("button", name="Save DICOM settings")).to_be_disabled()
    page.wait_for_function("() => true")  # let the held request reach the route handler
    assert held, "the settings were never requested"
    held[0].continue_()
    expect(calling).to_be_enabled()
    calling.fill("CR_ROOM_1, BARMODALITY")
    page.get_by_label("Destination AE title").fill("ORTHANC")
    page.get_by_label("Destination host").fill("pacs.local")
    page.get_by_label("Destination port").fill("4242")
    page.get_by_role("button", name="Save DICOM settings").click()
    expect(page.get_by_text("DICOM settings saved.")).to_be_visible(timeout=20_000)
    # Stored, as the server reads it back (through the page's own session).
    stored = page.request.get("/api/hospital/dicom/").json()
    assert stored == {"calling_ae_titles": ["BARMODALITY", "CR_ROOM_1"],
                      "destination": {"ae_title": "ORTHANC", "host": "pacs.local", "port": 4242},
                      "dicomweb_url": None}
    events = page.request.get("/api/hospital/audit/").json()["results"]
    assert [e["detail"]["after"]["calling_ae_titles"] for e in events
            if e["detail"].get("settings") == "dicom"] == [["BARMODALITY", "CR_ROOM_1"]]
    screenshot(page, "dicom-settings")

    # Reloaded from the server, and an invalid title is refused with its reason.
    page.unroute("**/api/hospital/dicom/")
    page.reload()
    expect(page.get_by_label("Calling AE titles")).to_have_value("BARMODALITY, CR_ROOM_1")
    page.get_by_label("Calling AE titles").fill("A_TITLE_FAR_TOO_LONG")
    page.get_by_role("button", name="Save DICOM settings").click()
    expect(page.locator("#dicom-error")).to_contain_text("not a valid AE title")
    assert page.request.get("/api/hospital/dicom/").json()["calling_ae_titles"] == [
        "BARMODALITY", "CR_ROOM_1"]


def test_clinicians_get_no_dicom_settings(page: Any) -> None:
    from playwright.sync_api import expect

    make_user("carol", "St. Mary", role="clinician")
    log_in(page, "carol")
    expect(page.get_by_role("link", name="Settings")).to_be_hidden()
    page.goto("/#/settings")
    expect(page.locator("#not-admin")).to_contain_text("Only an admin")


def test_admin_switches_scope_mode_to_warn_and_it_is_audited(page: Any) -> None:
    from playwright.sync_api import expect

    from backend.accounts.models import Hospital

    make_user("alice", "St. Mary")
    log_in(page, "alice")
    page.goto("/#/settings")
    withhold = page.get_by_label("Withhold the label (recommended)")
    expect(withhold).to_be_checked()  # the default: out-of-scope images get no label
    page.get_by_label("Show the label with a warning").check()
    page.get_by_role("button", name="Save scope setting").click()
    expect(page.get_by_text("Scope setting saved.")).to_be_visible(timeout=20_000)
    screenshot(page, "settings")
    assert Hospital.objects.get(name="St. Mary").scope_mode == "warn"
    events = page.request.get("/api/hospital/audit/").json()["results"]
    assert [e["detail"]["scope_mode"] for e in events if "scope_mode" in e["detail"]] == [
        {"from": "enforce", "to": "warn"}]
    page.reload()
    expect(page.get_by_label("Show the label with a warning")).to_be_checked()
