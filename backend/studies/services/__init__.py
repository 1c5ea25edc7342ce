"""Writes for studies, images and results, by concern:

- `uploads`: upload ingestion (decode, check, store) and `study_create`;
- `lifecycle`: study status, cancel and retry, sending images and webhooks to the workers;
- `processing`: what the inference workers write (claims, results as plain records, failures,
  the sweep).

Every public name is importable from `backend.studies.services`.
"""

from .lifecycle import (
    FINISHED_STATUSES,
    StudyStateError,
    derive_study_status,
    images_send,
    study_cancel,
    study_enqueue,
    study_refresh_status,
    study_retry,
    webhook_enqueue,
)
from .processing import (
    ClaimedChunk,
    ClaimedImage,
    ResultRecord,
    SweepOutcome,
    chunk_claim,
    heatmap_save,
    heatmaps_delete,
    images_fail_many,
    images_requeue_stuck,
    results_record_many,
)
from .uploads import StoredFiles, StudyCreateOutcome, study_create

__all__ = [
    "FINISHED_STATUSES", "ClaimedChunk", "ClaimedImage", "ResultRecord", "StoredFiles",
    "StudyCreateOutcome", "StudyStateError", "SweepOutcome", "chunk_claim",
    "derive_study_status", "heatmap_save", "heatmaps_delete", "images_fail_many",
    "images_requeue_stuck", "images_send", "results_record_many", "study_cancel",
    "study_create", "study_enqueue", "study_refresh_status", "study_retry", "webhook_enqueue",
]
