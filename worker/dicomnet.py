"""Celery tasks of the DICOM network side (default queue): they take IDs and call the services
of backend.dicomnet (which sends them by name)."""

from __future__ import annotations

import logging
import random

from celery import shared_task
from django.conf import settings

from .tasks import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)


@shared_task(name="dicomnet.close_received_study", bind=True, acks_late=True, max_retries=8)
def close_received_study(self, received_study_id: int) -> str | None:
    """Ingest a quiet received study's new instances and queue them for classification."""
    from backend.dicomnet import services

    try:
        study = services.received_study_close(received_study_id=received_study_id)
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=min(60.0, 2.0**self.request.retries)) from exc
    return str(study.id) if study else None


def delivery_backoff_s(retries: int) -> float:
    """DICOM_DELIVERY_BACKOFF_S doubling per attempt, at most 10 min, jittered; always below
    the Redis visibility timeout (a longer ETA would be handed to a second worker)."""
    cap = min(600.0, settings.CELERY_VISIBILITY_TIMEOUT * 0.75)
    return min(cap, settings.DICOM_DELIVERY_BACKOFF_S * 2.0**retries) * random.uniform(0.75, 1.0)


@shared_task(name="dicomnet.deliver_study_outputs", bind=True, acks_late=True,
             max_retries=None)
def deliver_study_outputs(self, study_id: str) -> dict[str, int]:
    """Send a finished received study's SRs and heatmaps; retried while the destination is
    unreachable, up to DICOM_DELIVERY_MAX_RETRIES, then its objects are marked failed."""
    from backend.dicomnet import services
    from backend.dicomnet.delivery import DestinationUnreachable

    try:
        return services.study_outputs_deliver(study_id=study_id)
    except (DestinationUnreachable, *TRANSIENT_ERRORS) as exc:
        final = self.request.retries >= settings.DICOM_DELIVERY_MAX_RETRIES
        try:
            services.study_outputs_mark_unreachable(study_id=study_id, error=str(exc),
                                                    final=final)
        except Exception:
            logger.exception("Could not record the failed delivery of study %s", study_id)
        if final:
            logger.error("Giving up the DICOM delivery of study %s: %s", study_id, exc)
            return {"sent": 0, "failed": -1}
        countdown = delivery_backoff_s(self.request.retries)
        logger.warning("DICOM delivery of study %s failed (%s); retry in %.0f s", study_id,
                       exc, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
