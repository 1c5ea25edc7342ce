"""Upload ingestion: each uploaded file (or ZIP member) checked without decoding and stored,
then one study with its images, queued for the workers once the transaction commits.

Nothing is decoded here: the worker that classifies an image decodes it once, in its sandbox
(ml/sandbox.py), and a file refused by its content then gets the status `rejected`. A study
may be uploaded in parts: created `receiving`, appended to, then closed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from uuid import UUID

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from backend.accounts.models import User

from ..ingest import Rejection, ScreenedFile, ZipLimits, expand_zip, is_zip, screen_file
from ..models import Image, Study, image_storage_name
from . import lifecycle
from .lifecycle import StudyStateError


@dataclass
class StudyCreateOutcome:
    study: Study | None
    accepted: list[Image] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _zip_limits() -> ZipLimits:
    return ZipLimits(
        max_entries=settings.MAX_ZIP_ENTRIES,
        max_total_bytes=settings.MAX_ZIP_UNCOMPRESSED_BYTES,
        max_ratio=settings.MAX_ZIP_RATIO,
        max_entry_bytes=settings.MAX_UPLOAD_FILE_BYTES,
    )


def _candidates(uploads: Iterable[UploadedFile]) -> Iterator[tuple[str, bytes] | Rejection]:
    """Each uploaded file, or each member of an uploaded ZIP archive, one at a time."""
    limit = settings.MAX_UPLOAD_FILE_BYTES
    for upload in uploads:
        name = (upload.name or "unnamed")[:300]
        upload.seek(0)
        head = upload.read(4)
        upload.seek(0)
        if is_zip(name, head):
            if upload.size is not None and upload.size > settings.MAX_ZIP_UNCOMPRESSED_BYTES:
                yield Rejection(name, "The archive is larger than the limit of "
                                      f"{settings.MAX_ZIP_UNCOMPRESSED_BYTES} bytes.")
                continue
            # The archive is read in place (a temporary file for large uploads), never whole.
            yield from expand_zip(name, upload.file, limits=_zip_limits())
            continue
        if upload.size is not None and upload.size > limit:
            yield Rejection(name, f"The file is larger than the upload limit of {limit} bytes.")
            continue
        yield name, upload.read(limit + 1)


def _store_screened(
    uploads: Iterable[UploadedFile], *, study_id: UUID, seen: set[str], room: int,
    stored: list[str],
) -> tuple[list[tuple[ScreenedFile, str]], list[Rejection]]:
    """Screen every candidate (no decoding) and store each one that passes, one at a time.

    `seen` holds the SHA-256 of the files already in the study; `room` is how many more it
    may hold. Every stored name is appended to `stored` at once, so the caller can remove
    them if their rows are never committed.
    """
    accepted: list[tuple[ScreenedFile, str]] = []
    rejected: list[Rejection] = []
    for candidate in _candidates(uploads):
        outcome = (candidate if isinstance(candidate, Rejection)
                   else screen_file(*candidate, max_bytes=settings.MAX_UPLOAD_FILE_BYTES))
        if not isinstance(outcome, Rejection) and len(accepted) >= room:
            outcome = Rejection(outcome.name, "A study holds at most "
                                              f"{settings.MAX_FILES_PER_STUDY} files.")
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        elif outcome.sha256 in seen:
            rejected.append(Rejection(outcome.name, "Duplicate of another file in this study "
                                                    "(same SHA-256)."))
        else:
            seen.add(outcome.sha256)
            name = default_storage.save(image_storage_name(study_id), ContentFile(outcome.data))
            stored.append(name)
            accepted.append((replace(outcome, data=b""), name))  # the bytes can be freed
    return accepted, rejected


def _add_queued_images(study: Study, accepted: list[tuple[ScreenedFile, str]]) -> list[Image]:
    """The rows of the accepted files, queued for the workers once the transaction commits."""
    images = Image.objects.bulk_create([
        Image(study=study, file=name, original_name=item.name[:500], sha256=item.sha256,
              size_bytes=item.size, format=item.format)
        for item, name in accepted
    ])
    study_id = study.id
    transaction.on_commit(lambda: lifecycle.study_enqueue_safely(study_id=study_id), robust=True)
    return images


@dataclass
class _StoredFiles:
    names: list[str] = field(default_factory=list)
    committed: bool = False


@contextlib.contextmanager
def _until_committed() -> Iterator[_StoredFiles]:
    """The files a block stores (`names`), deleted on leaving it unless it set `committed`.

    Files are deleted only when their rows were never committed: once committed, an error in
    what follows (e.g. the broker is down) must never lose an accepted file.
    """
    stored = _StoredFiles()
    try:
        yield stored
    finally:
        if not stored.committed:
            for name in stored.names:
                # Best effort; the orphan sweep catches the rest.
                with contextlib.suppress(Exception):
                    default_storage.delete(name)


def study_create(
    *,
    user: User,
    uploads: Sequence[UploadedFile],
    name: str = "",
    accession_number: str = "",
    priority: str = Study.Priority.ROUTINE,
    receiving: bool = False,
) -> StudyCreateOutcome:
    """Store the files of an upload as a new study and queue them for the workers.

    Files are checked by size, leading bytes and duplicates, stored, and decoded later by the
    worker that classifies them. Invalid files never prevent their neighbours from being
    stored. With `receiving`, the study stays open for more parts (`study_append`) until
    `study_close`, and may start empty.
    """
    if len(uploads) > settings.MAX_FILES_PER_STUDY:
        return StudyCreateOutcome(
            study=None,
            rejected=[Rejection("*", f"A study holds at most {settings.MAX_FILES_PER_STUDY} "
                                     f"files; {len(uploads)} were sent.")],
        )
    study_id = uuid.uuid4()
    with _until_committed() as stored:
        accepted, rejected = _store_screened(uploads, study_id=study_id, seen=set(),
                                             room=settings.MAX_FILES_PER_STUDY,
                                             stored=stored.names)
        if not accepted and not receiving:
            return StudyCreateOutcome(study=None, rejected=rejected)
        with transaction.atomic():
            study = Study.objects.create(
                id=study_id, hospital=user.hospital, created_by=user, name=name,
                accession_number=accession_number, priority=priority, receiving=receiving,
            )
            images = _add_queued_images(study, accepted)
        stored.committed = True
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)


def study_append(*, study_id: UUID, uploads: Sequence[UploadedFile]) -> StudyCreateOutcome:
    """Add one more part of files to a study that is still receiving (an upload in parts)."""
    study = Study.objects.get(id=study_id)
    if not study.receiving:
        raise StudyStateError("This study is closed: create a study with receiving=true to "
                              "upload it in several parts.")
    existing = list(study.images.values_list("sha256", flat=True))
    room = max(0, settings.MAX_FILES_PER_STUDY - len(existing))
    with _until_committed() as stored:
        accepted, rejected = _store_screened(uploads, study_id=study_id, seen=set(existing),
                                             room=room, stored=stored.names)
        with transaction.atomic():
            study = Study.objects.select_for_update().get(id=study_id)
            if not study.receiving:  # closed while this part was being stored
                raise StudyStateError("This study was closed while the part was uploading.")
            images = _add_queued_images(study, accepted)
            Study.objects.filter(id=study_id).update(updated_at=timezone.now())
        stored.committed = True
    lifecycle.study_refresh_status(study_id=study_id)
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)
