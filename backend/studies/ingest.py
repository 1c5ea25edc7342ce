"""Checks of uploaded files before anything is stored, and the fields a decode fills in.

The web process never decodes an image: an upload checks what costs nothing (size, empty
files, the leading bytes, duplicates) and expands ZIP archives one entry at a time under
explicit caps (see docs/api.md). The content is decoded once, in the worker that classifies
the image, inside a sandboxed child process (ml.sandbox); `image_details` turns that decode
into the Image's fields.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ml.decode import sniff_format

# DICOM keyword -> Image model field; nothing else from the header is kept.
DICOM_FIELDS = {
    "StudyInstanceUID": "study_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "AccessionNumber": "dicom_accession_number",
    "ViewPosition": "view_position",
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "PatientAge": "patient_age",
    "PatientSex": "patient_sex",
}
FIELD_LENGTHS = {"view_position": 16, "modality": 16, "patient_age": 8, "patient_sex": 8}

# What a file name promises, by extension; the content decides (see ``name_note``).
EXTENSION_FORMATS = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".png": "png",
    ".dcm": "dicom", ".dicom": "dicom", ".dic": "dicom",
}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Archive members that are never images: macOS resource forks and folder metadata.
IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
ADULT_AGE_YEARS = 18


@dataclass(frozen=True)
class ScreenedFile:
    """A file that passed the checks an upload makes without decoding anything."""

    name: str
    data: bytes
    sha256: str
    format: str  # from the leading bytes; the worker's decode confirms it
    size: int = 0

@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int
    max_total_bytes: int
    max_ratio: int
    max_entry_bytes: int


def _age_in_years(age: str) -> float | None:
    """DICOM Age String ('062Y', '018M', '003W', '010D') or a bare number of years ('62')."""
    age = age.strip().upper()
    if age.isdigit():
        return float(age)
    if len(age) >= 2 and age[:-1].isdigit():
        per_year = {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}.get(age[-1])
        if per_year:
            return int(age[:-1]) / per_year
    return None


def population_flags(fields: dict[str, str], *, fmt: str = "") -> list[str]:
    """Warnings for images outside the population the shipped models were validated on.

    The shipped models were trained and validated on paediatric frontal chest radiographs
    (Kermany et al.), so any other body part, an adult patient or a lateral view is flagged:
    the result is still computed but must be shown with the warning.
    """
    flags: list[str] = []
    body_part = fields.get("body_part", "").strip().upper()
    if body_part and body_part != "CHEST":
        flags.append(f"non_chest:{body_part.lower()}")
    elif not body_part and fmt == "dicom":
        flags.append("body_part_unknown")
    modality = fields.get("modality", "").strip().upper()
    if modality and modality not in {"CR", "DX", "DR"}:
        flags.append(f"unexpected_modality:{modality.lower()}")
    age = _age_in_years(fields.get("patient_age", ""))
    if age is not None and age > ADULT_AGE_YEARS:
        flags.append("adult_patient")
    view = fields.get("view_position", "").strip().upper()
    if view in {"LL", "RL", "LAT", "LATERAL"}:
        flags.append("lateral_view")
    return flags


def name_note(name: str, fmt: str) -> str | None:
    """Files are accepted by content; a name promising another format is noted, not refused."""
    ext = posixpath.splitext(name.lower())[1]
    promised = EXTENSION_FORMATS.get(ext)
    if promised and promised != fmt:
        return f"content is {fmt.upper()} although the name ends in {ext}; read as {fmt.upper()}"
    return None


def is_zip(name: str, head: bytes) -> bool:
    """By content (the first bytes), whatever the name says."""
    return head.startswith(ZIP_MAGIC)


def screen_file(name: str, data: bytes, *, max_bytes: int) -> ScreenedFile | Rejection:
    """What an upload checks without decoding: size, emptiness and the leading bytes.

    Decoding (the one check of the content) runs later in a worker's sandbox
    (ml.sandbox): a file refused there gets the status `rejected` with the reason.
    """
    if not data:
        return Rejection(name, "The file is empty.")
    if len(data) > max_bytes:
        return Rejection(name, f"The file is larger than the limit of {max_bytes} bytes.")
    fmt = sniff_format(data)
    if fmt is None:
        return Rejection(name, "unrecognised file format: expected a JPEG, PNG or DICOM image")
    return ScreenedFile(name=name, data=data, sha256=hashlib.sha256(data).hexdigest(),
                        format=fmt, size=len(data))


def image_details(name: str, *, fmt: str, height: int, width: int,
                  metadata: dict[str, str]) -> dict[str, Any]:
    """The Image fields a decode fills in: format, size, DICOM fields, flags and notes."""
    fields = {
        model_field: str(metadata.get(keyword, "")).strip()[
            : FIELD_LENGTHS.get(model_field, 64)
        ]
        for keyword, model_field in DICOM_FIELDS.items()
        if str(metadata.get(keyword, "")).strip()
    }
    note = name_note(name, fmt)
    return {"format": fmt, "width": int(width), "height": int(height), **fields,
            "flags": population_flags(fields, fmt=fmt), "notes": [note] if note else []}


def _unsafe_entry_name(name: str) -> str | None:
    """Why an archive member name is refused (path traversal, absolute path), or None."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return "absolute path in archive"
    if ".." in normalised.split("/"):
        return "path traversal ('..') in archive"
    if "\x00" in normalised:
        return "invalid character in archive member name"
    return None


def _ignored(name: str) -> bool:
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return any(p in IGNORED_PARTS or p.startswith("._") for p in parts)


def expand_zip(
    name: str, source: bytes | IO[bytes], *, limits: ZipLimits
) -> Iterator[tuple[str, bytes] | Rejection]:
    """Yield (member name, bytes) for each file in the archive, or a Rejection per refusal.

    Caps are checked on the central directory first (entry count, declared total size,
    compression ratio) and enforced again while reading, since declared sizes can lie.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
        infos = [i for i in archive.infolist() if not i.is_dir() and not _ignored(i.filename)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        yield Rejection(name, f"not a readable ZIP archive: {exc}")
        return
    if len(infos) > limits.max_entries:
        yield Rejection(name, f"ZIP archive holds {len(infos)} files; the limit is "
                              f"{limits.max_entries}.")
        return
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        yield Rejection(name, f"ZIP archive would expand to {declared} bytes; the limit is "
                              f"{limits.max_total_bytes} (possible ZIP bomb).")
        return
    expanded = 0
    for info in infos:
        member = f"{name}/{info.filename}"
        unsafe = _unsafe_entry_name(info.filename)
        if unsafe:
            yield Rejection(member, f"refused: {unsafe}.")
            continue
        if info.flag_bits & 0x1:
            yield Rejection(member, "encrypted archive members are not supported.")
            continue
        if info.file_size > limits.max_entry_bytes:
            yield Rejection(member, f"The file is larger than the limit of "
                                    f"{limits.max_entry_bytes} bytes.")
            continue
        if info.file_size > max(info.compress_size, 1) * limits.max_ratio:
            yield Rejection(member, f"compression ratio above {limits.max_ratio}:1 "
                                    "(possible ZIP bomb).")
            continue
        try:
            with archive.open(info) as handle:
                content = handle.read(limits.max_entry_bytes + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError,
                EOFError, ValueError) as exc:
            yield Rejection(member, f"cannot extract from the archive: {exc}")
            continue
        expanded += len(content)
        if len(content) > limits.max_entry_bytes or expanded > limits.max_total_bytes:
            yield Rejection(member, "archive member expands beyond its declared size "
                                    "(possible ZIP bomb).")
            return
        if is_zip(info.filename, content):
            yield Rejection(member, "nested archives are not expanded; upload them directly.")
            continue
        yield member, content


__all__ = [
    "Rejection", "ScreenedFile", "ZipLimits", "expand_zip", "image_details", "is_zip",
    "name_note", "population_flags", "screen_file",
]
