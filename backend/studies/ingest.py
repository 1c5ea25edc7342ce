"""Inspection of uploaded files before anything is stored.

Every file is decoded once with the model's own decoder, so that what the web accepts is
exactly what a worker can read; anything else is rejected with a reason the user can act on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ml.preprocess import ImageDecodeError, decode_image

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


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str


def population_flags(fields: dict[str, str]) -> list[str]:
    """Warnings for images outside the population the shipped models were validated on."""
    flags: list[str] = []
    body_part = fields.get("body_part", "").strip().upper()
    if body_part and body_part != "CHEST":
        flags.append(f"non_chest:{body_part.lower()}")
    age = fields.get("patient_age", "").strip().upper()
    if age[:-1].isdigit() and age.endswith("Y") and int(age[:-1]) > 18:
        flags.append("adult_patient")
    view = fields.get("view_position", "").strip().upper()
    if view in {"LL", "RL", "LAT", "LATERAL"}:
        flags.append("lateral_view")
    return flags


def inspect_file(name: str, data: bytes, *, max_bytes: int) -> InspectedFile | Rejection:
    if not data:
        return Rejection(name, "The file is empty.")
    if len(data) > max_bytes:
        return Rejection(name, f"The file is larger than the limit of {max_bytes} bytes.")
    try:
        decoded = decode_image(data)
    except ImageDecodeError as exc:
        return Rejection(name, str(exc))
    fields = {
        model_field: str(decoded.metadata.get(keyword, ""))[:64]
        for keyword, model_field in DICOM_FIELDS.items()
        if decoded.metadata.get(keyword)
    }
    height, width = decoded.pixels.shape[:2]
    return InspectedFile(
        name=name,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=decoded.format,
        width=int(width),
        height=int(height),
        fields=fields,
        flags=population_flags(fields),
    )
