"""Reads of the DICOM network side."""

from __future__ import annotations

from typing import Any

from backend.accounts.models import Hospital
from backend.studies.models import Image, Study

from .models import CallingAeTitle, DicomConfig, DicomOutput


def hospital_for_calling_ae(ae_title: str) -> Hospital | None:
    """The hospital a calling AE title belongs to, or None (the association is rejected)."""
    row = CallingAeTitle.objects.select_related("hospital").filter(
        ae_title=ae_title.strip()).first()
    return row.hospital if row else None


def dicom_config_get(*, hospital: Hospital) -> DicomConfig:
    return DicomConfig.objects.filter(hospital=hospital).first() or DicomConfig(hospital=hospital)


def image_delivery(image: Image) -> dict[str, Any] | None:
    """Delivery state of the image's SR and heatmap, or None when none was made."""
    prefetched = "dicom_outputs" in getattr(image, "_prefetched_objects_cache", {})
    if not prefetched and (image.format != "dicom" or image.status not in Image.FINAL_STATUSES):
        return None  # nothing can have been made: no query (e.g. the images of an upload)
    outputs = list(image.dicom_outputs.all())  # prefetched by the study's image list
    if not outputs:
        return None
    return {o.kind: {"state": o.state, "sop_instance_uid": o.sop_instance_uid,
                     "attempts": o.attempts, "error": o.error,
                     "sent_at": o.sent_at.isoformat() if o.sent_at else None}
            for o in outputs}


def study_delivery(study: Study) -> dict[str, Any] | None:
    """Counts of the study's result objects per delivery state; None for a study that did not
    come in over DICOM and has no results to deliver."""
    states = list(DicomOutput.objects.filter(image__study=study).values_list("state", flat=True))
    if not states and not hasattr(study, "received"):
        return None
    counts = {state: states.count(state) for state in DicomOutput.State.values}
    if not states:
        overall = "waiting"
    elif counts["failed"]:
        overall = "failed"
    elif counts["pending"]:
        overall = "pending"
    else:
        overall = "sent"
    return {"state": overall, **counts, "total": len(states)}
