"""Removing patient data: a study with every file made for it, studies past the retention
period, and files in storage that no row refers to.

Everything a study stores lives under ``studies/<study id>/`` (originals, working copies,
previews, heatmaps). A deletion removes the rows in one transaction and, once it has
committed, the files: the names the rows held, then whatever else is left under the study's
folder (a preview rendered meanwhile). A file that cannot be deleted then, or one a worker
writes after the rows are gone, is left to the orphan sweep, which deletes files that no row
refers to once they are older than ORPHAN_FILE_GRACE_S (an upload stores its files before its
rows commit, so younger files may still be on their way to a row).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from django.core.files.storage import default_storage
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from backend.accounts.models import User
from backend.audit.models import AuditEvent
from backend.audit.services import audit_record

from .models import Image, Result, Study

logger = logging.getLogger(__name__)

STUDIES_ROOT = "studies"


def study_folder(study_id: UUID | str) -> str:
    return f"{STUDIES_ROOT}/{study_id}"


def storage_walk(folder: str) -> Iterator[str]:
    """Every file name under `folder` in the default storage (filesystem or S3 alike)."""
    try:
        dirs, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in files:
        yield f"{folder}/{name}"
    for sub in dirs:
        yield from storage_walk(f"{folder}/{sub}")


def _delete_files(names: list[str], *, folder: str) -> int:
    """Delete the named files, then anything else left under the study's folder."""
    deleted = 0
    for name in [*names, *storage_walk(folder)]:
        try:
            if default_storage.exists(name):
                default_storage.delete(name)
                deleted += 1
        except Exception:  # the orphan sweep retries later; the rows are already gone
            logger.exception("Could not delete a file of a deleted study under %s", folder)
    _prune_empty_folders(folder)
    return deleted


def _prune_empty_folders(folder: str) -> None:
    """Remove the folder's empty directories on a filesystem storage (object stores have
    none)."""
    try:
        root = Path(default_storage.path(folder))
    except NotImplementedError:
        return
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()  # only succeeds when empty
    with contextlib.suppress(OSError):
        root.rmdir()


def study_file_names(*, study_id: UUID) -> list[str]:
    """Storage names the study's rows refer to."""
    names: list[str] = []
    for file, working in Image.objects.filter(study_id=study_id).values_list(
        "file", "working_file"
    ):
        names += [n for n in (file, working) if n]
    names += [n for n in Result.objects.filter(image__study_id=study_id)
              .values_list("heatmap", flat=True) if n]
    return names


def study_delete(*, study_id: UUID, user: User | None, reason: str,
                 request: HttpRequest | None = None) -> int:
    """Delete a study, its images and results, and (after commit) all of its files.

    Audited as `study.deleted` (who, why, how many images; no file names). Returns the
    number of images deleted.
    """
    with transaction.atomic():
        study = Study.objects.select_for_update().select_related("hospital").get(id=study_id)
        names = study_file_names(study_id=study.id)
        images = study.images.count()
        hospital = study.hospital
        study.delete()
        audit_record(action=AuditEvent.Action.STUDY_DELETED, user=user, hospital=hospital,
                     request=request, object_type="study", object_id=study_id,
                     detail={"reason": reason, "images": images})
        folder = study_folder(study_id)
        transaction.on_commit(lambda: _delete_files(names, folder=folder))
    return images


def studies_purge_expired(*, retention_days: int, batch: int = 100) -> int:
    """Delete the studies uploaded more than `retention_days` ago (0 = keep everything)."""
    if retention_days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=retention_days)
    deleted = 0
    while True:
        ids = list(Study.objects.filter(created_at__lt=cutoff).order_by("created_at")
                   .values_list("id", flat=True)[:batch])
        if not ids:
            return deleted
        for study_id in ids:
            try:
                study_delete(study_id=study_id, user=None, reason="retention")
            except Study.DoesNotExist:  # deleted meanwhile by someone else
                continue
            deleted += 1


@dataclass
class OrphanSweep:
    files_deleted: int = 0
    files_kept_young: int = 0


def storage_sweep_orphans(*, grace_s: float, dry_run: bool = False) -> OrphanSweep:
    """Delete files under studies/ that no row refers to and that are older than `grace_s`.

    Works a study folder at a time, so memory holds one study's names. Folders whose name is
    not a study id are left alone (not ours to judge).
    """
    outcome = OrphanSweep()
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    try:
        folders, _ = default_storage.listdir(STUDIES_ROOT)
    except FileNotFoundError:
        return outcome
    for folder in folders:
        try:
            study_id = uuid.UUID(folder)
        except ValueError:
            continue
        referenced = set(study_file_names(study_id=study_id))
        referenced |= {f"{study_folder(study_id)}/previews/{image_id}.png"
                       for image_id in Image.objects.filter(study_id=study_id)
                       .values_list("id", flat=True)}
        for name in storage_walk(study_folder(study_id)):
            if name in referenced:
                continue
            if default_storage.get_modified_time(name) > cutoff:
                outcome.files_kept_young += 1
                continue
            if not dry_run:
                default_storage.delete(name)
            outcome.files_deleted += 1
        if not dry_run:
            _prune_empty_folders(study_folder(study_id))
    if outcome.files_deleted and not dry_run:
        audit_record(action=AuditEvent.Action.STORAGE_ORPHANS_DELETED,
                     object_type="storage", detail={"files": outcome.files_deleted})
    return outcome
