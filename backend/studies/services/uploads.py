"""Upload ingestion: each uploaded file (or ZIP member) decoded, checked and stored, then one
new study with its images, queued for inference once the transaction commits."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from uuid import UUID

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from backend.accounts.models import User
from backend.config.sizing import upload_decode_threads

from ..ingest import InspectedFile, Rejection, ZipLimits, expand_zip, inspect_file, is_zip
from ..models import Image, Study, image_storage_name, working_copy_storage_name
from . import lifecycle


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


@dataclass
class StoredFiles:
    """Storage names of one accepted upload: the original and its working copy, if any."""

    original: str
    working: str = ""

    def delete(self) -> None:
        for name in (self.original, self.working):
            if name:
                default_storage.delete(name)


def _inspected(
    candidates: Iterable[tuple[str, bytes] | Rejection],
) -> Iterator[InspectedFile | Rejection]:
    """Each candidate inspected (decoded and checked), in order, several files at a time.

    Decoding is the cost of an upload (a compressed DICOM: 100-700 ms) and the decoders
    release the GIL, so UPLOAD_DECODE_THREADS files are decoded at once; at most twice that
    many are held in memory.
    """
    threads = upload_decode_threads(settings.UPLOAD_DECODE_THREADS)

    def inspect(name: str, data: bytes) -> InspectedFile | Rejection:
        return inspect_file(name, data, max_bytes=settings.MAX_UPLOAD_FILE_BYTES,
                            working_copies=settings.WORKING_COPIES)

    window: deque[Future[InspectedFile | Rejection] | Rejection] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload-decode") as pool:
        try:
            for candidate in candidates:
                window.append(candidate if isinstance(candidate, Rejection)
                              else pool.submit(inspect, *candidate))
                while len(window) > 2 * threads:
                    yield _outcome(window.popleft())
            while window:
                yield _outcome(window.popleft())
        finally:
            for pending in window:  # the request failed: do not decode the rest
                if isinstance(pending, Future):
                    pending.cancel()


def _outcome(item: Future[InspectedFile | Rejection] | Rejection) -> InspectedFile | Rejection:
    return item if isinstance(item, Rejection) else item.result()


def _inspect_and_store(
    uploads: Iterable[UploadedFile], *, study_id: UUID, stored: list[StoredFiles]
) -> tuple[list[tuple[InspectedFile, StoredFiles]], list[Rejection]]:
    """Decode every candidate and store each valid one at once, so memory holds one file.

    Every file written is appended to `stored` at once, so the caller can remove them all if
    a later one fails.
    """
    accepted: list[tuple[InspectedFile, StoredFiles]] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for outcome in _inspected(_candidates(uploads)):
        if not isinstance(outcome, Rejection) and len(accepted) >= settings.MAX_FILES_PER_STUDY:
            outcome = Rejection(outcome.name, "A study holds at most "
                                              f"{settings.MAX_FILES_PER_STUDY} files.")
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
        elif outcome.sha256 in seen:
            rejected.append(Rejection(outcome.name, "Duplicate of another file in this study "
                                                    "(same SHA-256)."))
        else:
            seen.add(outcome.sha256)
            files = StoredFiles(original=default_storage.save(
                image_storage_name(study_id), ContentFile(outcome.data)))
            stored.append(files)
            if outcome.working_copy:
                files.working = default_storage.save(
                    working_copy_storage_name(study_id), ContentFile(outcome.working_copy))
            accepted.append((_without_data(outcome), files))
    return accepted, rejected


def _without_data(item: InspectedFile) -> InspectedFile:
    """The inspection minus the file bytes (already stored), so they can be freed."""
    return replace(item, data=b"", working_copy=b"", size=len(item.data))


def study_create(
    *,
    user: User,
    uploads: Sequence[UploadedFile],
    name: str = "",
    accession_number: str = "",
    priority: str = Study.Priority.ROUTINE,
) -> StudyCreateOutcome:
    """Store the valid files of an upload as a new study and queue them for inference.

    Invalid files are reported and never prevent their valid neighbours from being stored.
    """
    if len(uploads) > settings.MAX_FILES_PER_STUDY:
        return StudyCreateOutcome(
            study=None,
            rejected=[Rejection("*", f"A study holds at most {settings.MAX_FILES_PER_STUDY} "
                                     f"files; {len(uploads)} were sent.")],
        )
    study_id = uuid.uuid4()
    stored: list[StoredFiles] = []
    try:
        inspected, rejected = _inspect_and_store(uploads, study_id=study_id, stored=stored)
        if not inspected:
            return StudyCreateOutcome(study=None, rejected=rejected)
        with transaction.atomic():
            study = Study.objects.create(
                id=study_id, hospital=user.hospital, created_by=user, name=name,
                accession_number=accession_number, priority=priority,
            )
            images = Image.objects.bulk_create([
                Image(
                    study=study, file=files.original, working_file=files.working,
                    original_name=item.name[:500], sha256=item.sha256,
                    size_bytes=item.size, format=item.format,
                    width=item.width, height=item.height, flags=item.flags, notes=item.notes,
                    **item.fields,
                )
                for item, files in inspected
            ])
            transaction.on_commit(lambda: lifecycle.study_enqueue(study_id=study_id))
    except BaseException:
        for files in stored:
            files.delete()
        raise
    return StudyCreateOutcome(study=study, accepted=images, rejected=rejected)
