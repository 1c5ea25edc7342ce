"""PHI lifecycle with a real worker: the retention task deletes studies past
STUDY_RETENTION_DAYS with their files; the orphan sweep deletes files no row refers to."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone

from backend.audit.models import AuditEvent
from backend.studies import dispatch
from backend.studies.models import Study
from tests.conftest import wait_for
from tests.worker.conftest import running_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
QUEUE = "phi-test"


def age(name: str, *, hours: float) -> None:
    """Make a stored file look `hours` old."""
    path = default_storage.path(name)
    past = time.time() - hours * 3600
    os.utime(path, (past, past))


def put(name: str, *, hours_old: float) -> str:
    saved = default_storage.save(name, ContentFile(b"patient pixels"))
    age(saved, hours=hours_old)
    return saved


@pytest.fixture
def phi_worker(db_name: str, broker: str, tiny_checkpoint: Path,
               tmp_path: Path) -> Any:
    """A default-queue worker with retention on (7 days) and a one-hour orphan grace."""
    log = tmp_path / "phi-worker.log"
    with running_worker(log, log_tail=3000, db_name=db_name, checkpoint=tiny_checkpoint,
                        redis_url=broker, queues=QUEUE, name="phi",
                        STUDY_RETENTION_DAYS="7", ORPHAN_FILE_GRACE_S="3600") as process:
        wait_for(lambda: b" ready." in log.read_bytes(), timeout=90, interval=0.2)
        yield process


@pytest.fixture
def make_study(user: Any) -> Callable[..., Study]:
    """A study with stored image files (status as given), without the upload path."""
    from backend.studies.models import Image

    def build(statuses: list[str]) -> Study:
        study = Study.objects.create(hospital=user.hospital, created_by=user)
        for i, status in enumerate(statuses):
            image = Image(study=study, original_name=f"img-{i}.png", sha256=f"{i:064d}",
                          size_bytes=3, format="png", status=status)
            image.file.save("x", ContentFile(b"png"), save=False)
            image.save()
        return study

    return build


def run_task(name: str) -> None:
    from backend.config.celery import app

    app.send_task(name, queue=QUEUE)


def test_the_retention_task_deletes_expired_studies_and_their_files(
    phi_worker: Any, make_study: Callable[..., Study],
) -> None:
    old, recent = make_study(["done", "failed"]), make_study(["done"])
    Study.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=8))
    old_files = [i.file.name for i in old.images.all()]
    assert all(default_storage.exists(n) for n in old_files)
    run_task(dispatch.PURGE_EXPIRED_TASK)
    wait_for(lambda: not Study.objects.filter(id=old.id).exists(), timeout=60)
    wait_for(lambda: not any(default_storage.exists(n) for n in old_files), timeout=30)
    assert Study.objects.filter(id=recent.id).exists()
    assert default_storage.exists(recent.images.get().file.name)
    event = AuditEvent.objects.get(action="study.deleted")
    assert event.object_id == str(old.id) and event.username == ""
    assert event.detail == {"reason": "retention", "images": 2}


def test_the_orphan_sweep_task_deletes_old_unreferenced_files_only(
    phi_worker: Any, make_study: Callable[..., Study],
) -> None:
    study = make_study(["done"])
    referenced = study.images.get().file.name
    age(referenced, hours=48)
    gone_study = "00000000-0000-4000-8000-00000000dead"
    orphans = [put(f"studies/{study.id}/images/leftover", hours_old=48),
               put(f"studies/{gone_study}/images/a", hours_old=48),
               put(f"studies/{gone_study}/heatmaps/b.jpg", hours_old=30)]
    young = put(f"studies/{gone_study}/images/in-flight-upload", hours_old=0.1)
    foreign = put("studies/not-a-study/readme.txt", hours_old=100)
    run_task(dispatch.SWEEP_ORPHANS_TASK)
    wait_for(lambda: not any(default_storage.exists(n) for n in orphans), timeout=60)
    assert default_storage.exists(referenced)
    assert default_storage.exists(young) and default_storage.exists(foreign)
    wait_for(lambda: AuditEvent.objects.filter(action="storage.orphans_deleted").exists(),
             timeout=10)
    default_storage.delete(young)
    default_storage.delete(foreign)


def test_the_orphan_sweep_command_counts_then_deletes(
    make_study: Callable[..., Study], settings: Any, tmp_path: Path,
) -> None:
    settings.MEDIA_ROOT = tmp_path  # this storage holds only this test's files
    study = make_study(["done"])
    orphan = put(f"studies/{study.id}/previews/deleted-image.png", hours_old=3)
    out = StringIO()
    call_command("sweep_orphan_files", "--grace-hours", "2", "--dry-run", stdout=out)
    assert "would delete 1; 0 younger" in out.getvalue() and default_storage.exists(orphan)
    call_command("sweep_orphan_files", "--grace-hours", "2", stdout=StringIO())
    assert not default_storage.exists(orphan)
    assert default_storage.exists(study.images.get().file.name)
