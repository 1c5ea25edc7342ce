"""Per-image exports of a study (CSV and JSON share one row layout)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from .models import Image, Study

COLUMNS = [
    "study_id", "study_name", "study_accession_number", "image_id", "file_name", "status",
    "label", "pneumonia_probability", "threshold", "etiology_label", "etiology_probabilities",
    "model_name", "model_version", "scope", "scope_reason", "flags", "notes",
    "study_instance_uid", "sop_instance_uid", "dicom_accession_number", "error",
]
# Spreadsheet formula injection: a cell starting with one of these is made inert.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def image_row(study: Study, image: Image) -> dict[str, Any]:
    result = getattr(image, "result", None)
    return {
        "study_id": str(study.id),
        "study_name": study.name,
        "study_accession_number": study.accession_number,
        "image_id": str(image.id),
        "file_name": image.original_name,
        "status": image.status,
        "label": (result.label or None) if result else None,
        "pneumonia_probability": result.score if result else None,
        "threshold": result.threshold if result else None,
        "etiology_label": (result.etiology_label or None) if result else None,
        "etiology_probabilities": result.etiology_probabilities if result else {},
        "model_name": result.model_name if result else None,
        "model_version": result.model_version if result else None,
        "scope": result.scope if result else None,
        "scope_reason": (result.scope_reason or None) if result else None,
        "flags": list(image.flags or []),
        "notes": list(image.notes or []),
        "study_instance_uid": image.study_instance_uid,
        "sop_instance_uid": image.sop_instance_uid,
        "dicom_accession_number": image.dicom_accession_number,
        "error": image.error,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ";".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in sorted(value.items()))
    if isinstance(value, list):
        value = ";".join(str(v) for v in value)
    text = str(value)
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


def to_csv(study: Study, images: Iterable[Image]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for image in images:
        row = image_row(study, image)
        writer.writerow([_cell(row[c]) for c in COLUMNS])
    return out.getvalue()


def to_json(study: Study, images: Iterable[Image]) -> str:
    return json.dumps(
        {"study_id": str(study.id), "images": [image_row(study, i) for i in images]},
        indent=2,
    )
