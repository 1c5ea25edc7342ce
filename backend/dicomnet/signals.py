"""When a study that came in over DICOM finishes, its results are sent back (after commit).

A signal rather than a call in the studies app: the studies code stays unaware of DICOM.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from backend.studies.models import Study

FINISHED = (Study.Status.DONE, Study.Status.DONE_WITH_ERRORS, Study.Status.FAILED,
            Study.Status.CANCELLED)


@receiver(post_save, sender=Study, dispatch_uid="dicomnet-study-finished")
def _study_saved(sender: type[Study], instance: Study, created: bool, **kwargs: Any) -> None:
    fields = kwargs.get("update_fields")
    if created or instance.status not in FINISHED or (fields and "status" not in fields):
        return
    from .models import ReceivedStudy

    if not ReceivedStudy.objects.filter(study_id=instance.id).exists():
        return
    from .services import study_outputs_enqueue

    study_id = instance.id
    transaction.on_commit(lambda: study_outputs_enqueue(study_id=study_id))
