"""The web app in a real browser, against a real Django server and a real Celery worker.

Sign up, upload X-rays (files and a ZIP) plus an invalid file, watch the study progress to
100 %, read a result with its heatmap, export the CSV; and a user of another hospital sees
nothing of it. The tests also save the screenshots shown in the README.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_user
from tests.frontend.conftest import TABLET, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "Lung-Scan-2026!"
HOSPITAL = "St. Mary's Children's Hospital"
# The invalid file's name is an HTML payload: it must be shown as text, never run.
EVIL_NAME = "<img src=x onerror=window.__xss=1>.jpeg"


def sign_up(page: Any, username: str, hospital: str) -> None:
    page.goto("/")
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Hospital").fill(hospital)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.org")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("heading", name="Studies").wait_for()


def seed_history(hospital_name: str) -> None:
    """Earlier studies of the hospital, in several states, so the list looks like a real day."""
    from datetime import timedelta

    from django.utils import timezone

    from backend.accounts.models import Hospital
    from backend.studies.models import Image, Result, Study

    hospital = Hospital.objects.get(name=hospital_name)
    now = timezone.now()
    # name, accession, priority, status, hours ago, [(image status, label or None), ...]
    plan = [
        ("Night shift ED admissions", "ED-2291", "urgent", "processing", 1,
         [("done", "pneumonia")] * 4 + [("done", "normal")] * 5 + [("queued", None)] * 15),
        ("PICU daily review", "PICU-0458", "urgent", "done", 5,
         [("done", "pneumonia")] * 5 + [("done", "normal")] * 3),
        ("Outpatient clinic follow-ups", "OPD-1187", "routine", "done_with_errors", 26,
         [("done", "pneumonia")] * 3 + [("done", "normal")] * 7 + [("failed", None)] * 2),
        ("Referral batch, community clinic", "", "routine", "cancelled", 50,
         [("done", "normal")] * 2 + [("cancelled", None)] * 4),
    ]
    for name, accession, priority, status, hours, images in plan:
        study = Study.objects.create(hospital=hospital, name=name, accession_number=accession,
                                     priority=priority, status=status)
        created = now - timedelta(hours=hours)
        finished = None if status == "processing" else created + timedelta(minutes=4)
        Study.objects.filter(id=study.id).update(created_at=created, finished_at=finished)
        rows = Image.objects.bulk_create([
            Image(study=study, file=f"studies/{study.id}/images/seed-{i}",
                  original_name=f"seed-{i}.jpeg", sha256=f"{i:064d}", size_bytes=1, format="jpeg",
                  status=image_status)
            for i, (image_status, _) in enumerate(images)
        ])
        Result.objects.bulk_create([
            Result(image=row, label=label, score=0.9 if label == "pneumonia" else 0.1,
                   probabilities={}, threshold=0.5, model_name="seed", model_version="0")
            for row, (_, label) in zip(rows, images, strict=True) if label
        ])


def wait_images_loaded(page: Any, selector: str) -> None:
    page.wait_for_function(
        """(selector) => [...document.querySelectorAll(selector)]
             .every((img) => img.complete && img.naturalWidth > 0)""",
        arg=selector, timeout=30_000,
    )


@pytest.mark.slow
def test_upload_watch_progress_read_results_and_export(
    page: Any, celery_worker_process: Any, xray_paths: list[Path], tmp_path: Path, settings: Any
) -> None:
    from playwright.sync_api import expect

    if not Path(settings.MODEL_CHECKPOINT_BINARY).is_file():
        pytest.skip(f"no model checkpoint at {settings.MODEL_CHECKPOINT_BINARY}")

    sign_up(page, "dr.lee", HOSPITAL)
    expect(page.locator("#account-hospital")).to_have_text(HOSPITAL)
    expect(page.locator("#account-role")).to_have_text("Hospital admin")
    expect(page.get_by_role("note")).to_contain_text("do not replace, a clinician's reading")

    # Upload: two X-rays and the invalid file picked as files, a third X-ray inside a ZIP.
    normal, pneumonia = xray_paths[0], xray_paths[3]
    zipped = xray_paths[1]
    archive = tmp_path / "ward-3.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(zipped, zipped.name)
    page.get_by_role("link", name="New upload").first.click()
    page.get_by_label("Study name").fill("Ward 3 morning round")
    page.get_by_label("Accession number").fill("ACC-2026-0113")
    page.set_input_files("#pick-files", [str(normal), str(pneumonia)])
    page.set_input_files("#pick-files", files=[
        {"name": EVIL_NAME, "mimeType": "image/jpeg", "buffer": b"this is plain text, not an image"}
    ])
    page.set_input_files("#pick-zip", str(archive))
    expect(page.locator("#file-list > li")).to_have_count(4)
    expect(page.locator(".file-summary")).to_contain_text("4 files")
    screenshot(page, "upload", full_page=True)

    page.get_by_role("button", name="Upload and analyse").click()

    # The new study opens; the rejected file is listed with its reason, as text.
    page.wait_for_url(re.compile(r"#/studies/[0-9a-f-]{36}$"))
    study_id = page.url.rsplit("/", 1)[-1]
    report = page.locator("#upload-report")
    expect(report).to_contain_text("3 files accepted, 1 rejected")
    rejection = page.locator("#rejections li")
    expect(rejection).to_have_count(1)
    expect(rejection.locator(".rejected-name")).to_have_text(EVIL_NAME)
    expect(rejection.locator(".rejected-reason")).not_to_be_empty()
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0
    screenshot(page, "upload-rejection")

    # The progress bar moves to 100 % while the real worker runs (every value it shows is kept).
    progress = page.locator("#study-progress")
    page.evaluate("""() => {
        const bar = document.getElementById("study-progress");
        const value = () => Number(bar.getAttribute("aria-valuenow"));
        window.__progress = [value()];
        new MutationObserver(() => window.__progress.push(value()))
            .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
    }""")
    expect(progress).to_have_attribute("aria-valuenow", "100", timeout=180_000)
    seen = page.evaluate("window.__progress")
    assert seen[-1] == 100 and seen == sorted(seen), seen
    expect(page.locator("#study-title + .badge, .title-row .badge")).to_have_text("Done")
    cards = page.locator("#image-grid > li")
    expect(cards).to_have_count(3)
    expect(page.locator("#image-grid .badge[data-label]")).to_have_count(3)
    wait_images_loaded(page, "#image-grid img")

    # Sorted by probability, highest first; the pneumonia filter keeps pneumonia only.
    page.get_by_label("Sort").select_option("prob-desc")
    shown = page.locator("#image-grid .prob").all_inner_texts()
    probabilities = [float(text.rstrip(" %")) for text in shown]
    assert probabilities == sorted(probabilities, reverse=True)
    page.get_by_label("Pneumonia only").check()
    labels = page.locator("#image-grid .badge[data-label]")
    for label in labels.all():
        expect(label).to_have_attribute("data-label", "pneumonia")
    page.get_by_label("Pneumonia only").uncheck()
    expect(cards).to_have_count(3)
    page.locator("#upload-report .icon-btn").click()  # dismiss the report for the grid picture
    screenshot(page, "study", full_page=True)

    # The viewer (opened from the keyboard): X-ray, heatmap on and off, opacity, box,
    # probabilities, threshold, model.
    cards.first.locator("a").focus()
    page.keyboard.press("Enter")
    viewer = page.get_by_role("dialog")
    expect(viewer).to_be_visible()
    wait_images_loaded(page, "#viewer-image, #viewer-heatmap")
    heatmap = page.locator("#viewer-heatmap")
    expect(heatmap).to_be_visible()
    expect(page.locator("#viewer-bbox")).to_be_visible()
    # One row per class of each shipped model: normal/pneumonia, then normal/bacterial/viral.
    expect(viewer.locator(".prob-list").first.locator(".prob-row")).to_have_count(2)
    for name in ("normal", "pneumonia"):
        expect(viewer.locator(f'.prob-list >> nth=0 >> .prob-row[data-class="{name}"]')) \
            .to_have_count(1)
    if Path(settings.MODEL_CHECKPOINT_ETIOLOGY).exists():
        expect(viewer.locator(".prob-list").nth(1).locator(".prob-row")).to_have_count(3)
    expect(page.locator("#viewer-threshold")).to_contain_text("Decision threshold")
    expect(page.locator("#viewer-info")).to_contain_text("version")
    page.get_by_label("Heatmap overlay").uncheck()
    expect(heatmap).to_be_hidden()
    page.get_by_label("Heatmap overlay").check()
    expect(heatmap).to_be_visible()
    page.get_by_label("Heatmap opacity").fill("70")
    expect(heatmap).to_have_css("opacity", "0.7")
    page.locator("#viewer").focus()
    screenshot(page, "viewer")

    # Arrow keys move through the images (the address follows); Esc closes.
    first_url = page.url
    page.keyboard.press("ArrowRight")
    expect(page.locator(".viewer-counter")).to_have_text("2 of 3")
    assert page.url != first_url and "/images/" in page.url
    page.keyboard.press("ArrowLeft")
    expect(page.locator(".viewer-counter")).to_have_text("1 of 3")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    page.wait_for_url(re.compile(rf"#/studies/{study_id}$"))

    # Tablet layout of the viewer.
    page.set_viewport_size(TABLET)
    cards.nth(1).locator("a").click()
    wait_images_loaded(page, "#viewer-image, #viewer-heatmap")
    screenshot(page, "viewer-tablet")
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 1280, "height": 800})

    # Export the CSV: one row per image, each with its label.
    with page.expect_download() as download_info:
        page.locator("#export-csv").click()
    download = download_info.value
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8-sig"))))
    assert len(rows) == 3
    assert {row["label"] for row in rows} <= {"normal", "pneumonia"}
    assert all(row["label"] for row in rows)
    assert sorted(row["file_name"] for row in rows) == sorted(
        [normal.name, pneumonia.name, f"{archive.name}/{zipped.name}"]
    )

    # The studies page lists the study with its progress and counts; search filters it.
    seed_history(HOSPITAL)
    page.get_by_role("link", name="Studies", exact=True).click()
    row = page.locator(f"tr[data-study-id='{study_id}']")
    expect(row).to_contain_text("Ward 3 morning round")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(row).to_contain_text("Done")
    page.get_by_label("Search").fill("ACC-2026")
    expect(page.locator("tbody tr")).to_have_count(1)
    page.get_by_label("Search").fill("no-such-study")
    expect(page.get_by_text("No study matches these filters.")).to_be_visible()
    page.get_by_label("Search").fill("")
    expect(page.locator("tbody tr")).to_have_count(5)
    page.get_by_label("Status").select_option("done_with_errors")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("2 failed")
    page.get_by_label("Status").select_option("")
    expect(page.locator("tbody tr")).to_have_count(5)
    page.get_by_label("Search").blur()
    screenshot(page, "studies")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def test_other_hospital_sees_not_found_and_no_data(page: Any) -> None:
    from playwright.sync_api import expect

    from backend.studies.models import Study

    alice = make_user("alice", "St. Mary")
    make_user("bob", "General Hospital", role="clinician")
    study = Study.objects.create(hospital=alice.hospital, created_by=alice,
                                 name="Confidential St. Mary study", accession_number="SM-77")

    page.goto(f"/#/studies/{study.id}")
    # Not logged in: the log-in form, then back to the address asked for.
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill("x-Ray-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#account-hospital")).to_have_text("General Hospital")
    expect(page.locator("#account-role")).to_have_text("Clinician")
    expect(page.get_by_role("heading", name="Study not found")).to_be_visible()
    assert page.url.endswith(f"#/studies/{study.id}")
    body = page.locator("body").inner_text()
    assert "Confidential" not in body and "SM-77" not in body

    page.get_by_role("link", name="Back to your studies").click()
    expect(page.get_by_text("No studies yet.")).to_be_visible()
    assert "Confidential" not in page.locator("body").inner_text()


def seed_flagged_study(user: Any, xrays: list[Path]) -> tuple[Any, Any]:
    """A finished study with flagged and failed images, and a queued one (no worker needed)."""
    import hashlib

    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from backend.studies.models import Image, Result, Study

    def add_image(study: Study, path: Path, **fields: Any) -> Image:
        data = path.read_bytes()
        stored = default_storage.save(f"studies/{study.id}/images/{path.stem}", ContentFile(data))
        return Image.objects.create(
            study=study, file=stored, original_name=path.name, size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(), format="jpeg", width=224, height=224,
            **fields,
        )

    finished = Study.objects.create(hospital=user.hospital, created_by=user, name="Flagged batch",
                                     status="done_with_errors")
    adult = add_image(finished, xrays[3], status="done", flags=["adult_patient"])
    knee = add_image(finished, xrays[0], status="done", flags=["non_chest:knee"])
    add_image(finished, xrays[1], status="failed", error="Could not read the image: truncated")
    for image, label, score in [(adult, "pneumonia", 0.91), (knee, "normal", 0.08)]:
        Result.objects.create(
            image=image, label=label, score=score, threshold=0.5,
            probabilities={"normal": 1 - score, "pneumonia": score},
            model_name="pneumo-binary", model_version="1.0.0", bbox=[0.2, 0.3, 0.6, 0.8],
        )
    waiting = Study.objects.create(hospital=user.hospital, created_by=user, name="Waiting batch",
                                   status="queued")
    add_image(waiting, xrays[2], status="queued")
    return finished, waiting


def test_flags_retry_and_cancel(page: Any, xray_paths: list[Path]) -> None:
    from playwright.sync_api import expect

    carol = make_user("carol", "Kids Clinic", role="clinician")
    finished, waiting = seed_flagged_study(carol, xray_paths)

    page.goto("/")
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill("x-Ray-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("tbody tr")).to_have_count(2)

    # Warnings are shown on the affected images, and can be filtered on.
    page.goto(f"/#/studies/{finished.id}")
    flags = page.locator("#image-grid .flag")
    expect(flags).to_have_text(["⚠ Adult patient", "⚠ Not a chest X-ray (knee)"])
    expect(page.locator("#image-grid li[data-status='failed']")).to_contain_text("truncated")
    page.get_by_label("Flagged only").check()
    expect(page.locator("#image-grid > li")).to_have_count(2)
    page.locator("#image-grid li.flagged a").first.click()
    expect(page.get_by_role("dialog")).to_contain_text("Adult patient")
    expect(page.get_by_label("Heatmap overlay")).to_be_disabled()  # this result has no heatmap
    expect(page.locator("#viewer-bbox")).to_be_visible()
    page.keyboard.press("Escape")
    page.get_by_label("Flagged only").uncheck()

    # Retry failed puts the failed image back in the queue.
    page.get_by_role("button", name="Retry failed").click()
    expect(page.locator("#toast")).to_have_text("Failed images queued again.")
    expect(page.locator("#image-grid li[data-status='failed']")).to_have_count(0)
    expect(page.get_by_role("button", name="Retry failed")).to_be_hidden()

    # Cancel stops a study that is still queued (after the confirmation).
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"/#/studies/{waiting.id}")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".title-row .badge")).to_have_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()


def test_closed_sign_up_is_not_offered(page: Any, settings: Any) -> None:
    """Production settings close sign-up: the web app says who adds hospitals instead."""
    from playwright.sync_api import expect

    settings.SIGNUP_ENABLED = False
    page.goto("/#/login")
    expect(page.get_by_text("New hospitals are added by the operator")).to_be_visible()
    expect(page.get_by_role("link", name="Create an account")).to_have_count(0)
    page.goto("/#/signup")
    expect(page.get_by_role("alert")).to_contain_text("Sign-up is closed")
    expect(page.get_by_role("button", name="Create account")).to_have_count(0)


def test_large_folder_goes_in_parts_with_a_failed_part_retried(page: Any) -> None:
    """101 files: two requests to one study (the second fails once and is sent again), one
    progress bar, then the study is closed and opens with every file accepted."""
    from playwright.sync_api import expect

    from backend.studies.models import Image, Study
    from tests.backend.conftest import png_bytes

    sign_up(page, "dr.parts", "Parts Hospital")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(f"{request.method} {request.url}")
            if "/api/studies/" in request.url and request.method == "POST" else None)
    failed_once: list[str] = []

    def flaky(route: Any) -> None:
        if not failed_once:  # the connection drops on the first try of the second part
            failed_once.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r".*/api/studies/[0-9a-f-]{36}/files/$"), flaky)
    page.get_by_role("link", name="New upload").first.click()
    page.get_by_label("Study name").fill("Whole ward folder")
    page.set_input_files("#pick-files", files=[
        {"name": f"cxr-{i:03d}.png", "mimeType": "image/png", "buffer": png_bytes(seed=i)}
        for i in range(101)
    ])
    expect(page.locator("#file-list > li")).to_have_count(101)
    page.get_by_role("button", name="Upload and analyse").click()

    page.wait_for_url(re.compile(r"#/studies/[0-9a-f-]{36}$"), timeout=60_000)
    study_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("#upload-report")).to_contain_text("101 files accepted")
    # Nothing was rejected and nothing failed: the absent parts of the report leave no text.
    report_text = page.locator("#upload-report").inner_text()
    assert "null" not in report_text and "undefined" not in report_text, report_text
    assert failed_once, "the second part was never sent"
    posts = [r for r in requests if study_id in r or r.endswith("/api/studies/")]
    assert sum(r.endswith("/api/studies/") for r in posts) == 1  # one study
    assert sum(r.endswith("/files/") for r in posts) == 2  # the second part, sent twice
    assert sum(r.endswith("/close/") for r in posts) == 1
    study = Study.objects.get(id=study_id)
    assert not study.receiving and study.name == "Whole ward folder"
    assert Image.objects.filter(study=study).count() == 101
