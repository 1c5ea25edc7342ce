"""Out-of-scope images in the web app: withheld labels say why; warned ones keep a warning."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def seed_scope_study(user: Any) -> Any:
    from backend.studies.models import Image, Result, Study
    from backend.studies.services import study_refresh_status

    study = Study.objects.create(hospital=user.hospital, created_by=user, name="Mixed referrals")
    rows = Image.objects.bulk_create([
        Image(study=study, file=f"studies/{study.id}/images/s-{i}", original_name=name,
              sha256=f"{i:064d}", size_bytes=1, format="jpeg", status="done")
        for i, name in enumerate(["child.jpeg", "adult.jpeg", "lateral.jpeg"])
    ])
    common = {"threshold": 0.5, "model_name": "pneumo-multi", "model_version": "2.0.0"}
    Result.objects.bulk_create([
        Result(image=rows[0], label="pneumonia", score=0.91,
               probabilities={"normal": 0.09, "pneumonia": 0.91}, **common),
        Result(image=rows[1], label="", score=None, probabilities={}, scope="out_of_scope",
               scope_reason="adult", scope_source="pixels", in_scope_probability=0.01,
               **common),
        Result(image=rows[2], label="normal", score=0.2,
               probabilities={"normal": 0.8, "pneumonia": 0.2}, scope="out_of_scope",
               scope_reason="lateral", scope_source="metadata", **common),
    ])
    study_refresh_status(study_id=study.id)
    return study


def test_withheld_and_warned_results_are_explained(page: Any) -> None:
    from playwright.sync_api import expect

    dana = make_user("dana", "Scope Clinic", role="clinician")
    study = seed_scope_study(dana)
    page.goto("/")
    page.get_by_label("Username").fill("dana")
    page.get_by_label("Password").fill("x-Ray-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("tbody tr")).to_contain_text("1 pneumonia1 normal2 out of scope")

    page.goto(f"/#/studies/{study.id}")
    grid = page.locator("#image-grid")
    expect(grid.locator("[data-label='not_analysed']")).to_have_text("Not analysed")
    expect(grid.locator(".scope-note.withheld")).to_have_text(
        "Not analysed — adult chest X-ray (outside the validated population)")
    expect(grid.locator(".scope-note.warned")).to_have_text(
        "⚠ Outside the validated population: lateral chest X-ray "
        "(outside the validated population)")
    expect(page.locator(".count-box.count-out-of-scope dd")).to_have_text("2")
    # The counts do not call the withheld image normal; the warned one keeps its label.
    expect(page.locator(".count-box.count-normal dd")).to_have_text("1")

    grid.locator("a[aria-label^='adult.jpeg']").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Not analysed — adult chest X-ray")
    expect(dialog).not_to_contain_text("probability of pneumonia")
