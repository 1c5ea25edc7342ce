"""Per-hospital webhook: a signed JSON summary POSTed when a study finishes.

The body is signed with HMAC-SHA256 under the hospital's ``webhook_secret``; the signature is
sent as ``X-PneumoScan-Signature: sha256=<hex>``. ``deliver`` raises ``WebhookDeliveryError``
on a failure worth retrying (network error, timeout, 429 or 5xx), which the Celery task
``worker.tasks.deliver_webhook`` retries with exponential backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from typing import Any
from uuid import UUID

import requests
from django.utils import timezone

from .models import Image, Study
from .selectors import with_progress

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-PneumoScan-Signature"
EVENT = "study.finished"
TIMEOUT_S = 10


class WebhookDeliveryError(Exception):
    """A delivery that failed in a way worth retrying."""


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(body, secret), signature or "")


def build_payload(study: Study) -> dict[str, Any]:
    images = study.images.select_related("result").order_by("created_at", "original_name")
    progress = with_progress(Study.objects.filter(id=study.id)).get()
    return {
        "event": EVENT,
        "sent_at": timezone.now().isoformat(),
        "study": {
            "id": str(study.id),
            "name": study.name,
            "accession_number": study.accession_number,
            "priority": study.priority,
            "status": study.status,
            "created_at": study.created_at.isoformat(),
            "finished_at": study.finished_at.isoformat() if study.finished_at else None,
            "progress": {"total": progress.n_total, "done": progress.n_done,
                         "failed": progress.n_failed, "rejected": progress.n_rejected,
                         "pneumonia": progress.n_pneumonia,
                         "out_of_scope": progress.n_out_of_scope,
                         "not_analysed": progress.n_not_analysed},
        },
        "images": [_image_summary(image) for image in images],
    }


def _image_summary(image: Image) -> dict[str, Any]:
    result = getattr(image, "result", None)
    return {
        "id": str(image.id),
        "status": image.status,
        "sop_instance_uid": image.sop_instance_uid,
        "label": (result.label or None) if result else None,
        "score": result.score if result else None,
        "scope": result.scope if result else None,
        "scope_reason": (result.scope_reason or None) if result else None,
        "threshold": result.threshold if result else None,
        "flags": image.flags,
        "error": image.error,
    }


def deliver(study_id: UUID | str, *, timeout: float = TIMEOUT_S) -> bool:
    """POST the study's summary to its hospital's webhook; False when there is none to send.

    Raises WebhookDeliveryError for failures worth retrying. Other 4xx answers are final: the
    receiver refused the request, and resending the same body would not change that.
    """
    study = Study.objects.select_related("hospital").filter(id=study_id).first()
    if study is None or not study.hospital.webhook_url:
        return False
    body = json.dumps(build_payload(study), separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "PneumoScan-Webhook/1",
        "X-PneumoScan-Event": EVENT,
        "X-PneumoScan-Delivery": uuid.uuid4().hex,
    }
    if study.hospital.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, study.hospital.webhook_secret)
    else:
        logger.warning("Hospital %s has a webhook without a secret: sent unsigned",
                       study.hospital_id)
    try:
        response = requests.post(study.hospital.webhook_url, data=body, headers=headers,
                                 timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise WebhookDeliveryError(f"webhook for study {study_id}: {exc}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise WebhookDeliveryError(
            f"webhook for study {study_id}: HTTP {response.status_code}"
        )
    if not 200 <= response.status_code < 300:
        logger.error("Webhook for study %s refused with HTTP %s; not retried",
                     study_id, response.status_code)
        return False
    return True
