"""Inspection of uploaded files before anything is stored.

Every file is decoded once with the model's own decoder, so that what the web accepts is
exactly what a worker can read; anything else is rejected with a reason the user can act on.
ZIP archives are expanded here, one entry at a time, under explicit caps (see docs/api.md).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ml.decode import (
    WORKING_COPY_SIDE,
    ImageDecodeError,
    decode_image,
    needs_working_copy,
    working_copy_jpeg,
)

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
class InspectedFile:
    name: str
    data: bytes
    sha256: str
    format: str
    width: int
    height: int
    fields: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    size: int = 0
    working_copy: bytes = b""  # ml.decode.working_copy_jpeg, when the original is costly

    def __post_init__(self) -> None:
        if self.data and not self.size:
            object.__setattr__(self, "size", len(self.data))


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


def inspect_file(name: str, data: bytes, *, max_bytes: int,
                 working_copies: bool = True) -> InspectedFile | Rejection:
    if not data:
        return Rejection(name, "The file is empty.")
    if len(data) > max_bytes:
        return Rejection(name, f"The file is larger than the limit of {max_bytes} bytes.")
    try:
        # Large JPEGs at reduced scale when a working copy is all the pixels are needed for.
        decoded = decode_image(data, reduce_to=WORKING_COPY_SIDE if working_copies else None)
    except ImageDecodeError as exc:
        return Rejection(name, str(exc))
    except Exception as exc:  # a decoder bug must reject one file, never fail the request
        return Rejection(name, f"could not read the image ({exc.__class__.__name__})")
    fields = {
        model_field: str(decoded.metadata.get(keyword, "")).strip()[
            : FIELD_LENGTHS.get(model_field, 64)
        ]
        for keyword, model_field in DICOM_FIELDS.items()
        if str(decoded.metadata.get(keyword, "")).strip()
    }
    height, width = decoded.shape
    note = name_note(name, decoded.format)
    # Decoded here anyway (to validate): the workers get a small copy instead of decoding the
    # original once more.
    working_copy = (working_copy_jpeg(decoded.pixels)
                    if working_copies and needs_working_copy(decoded.format, height, width)
                    else b"")
    return InspectedFile(
        name=name,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=decoded.format,
        width=int(width),
        height=int(height),
        fields=fields,
        flags=population_flags(fields, fmt=decoded.format),
        notes=[note] if note else [],
        working_copy=working_copy,
    )


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
    "InspectedFile", "Rejection", "ZipLimits", "expand_zip", "inspect_file", "is_zip",
    "name_note", "population_flags",
]
