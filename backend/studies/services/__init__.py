"""Writes for studies, images and results, by concern:

- `uploads`: upload ingestion (check without decoding, store), `study_create`, and uploads in
  parts (`study_append`, `study_close`);
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
    images_send_alone,
    study_cancel,
    study_close,
    study_enqueue,
    study_enqueue_safely,
    study_refresh_status,
    study_retry,
    webhook_enqueue,
)
from .processing import (
    ClaimedChunk,
    ClaimedImage,
    DecodeRecord,
    ResultRecord,
    SweepOutcome,
    chunk_claim,
    heatmap_save,
    heatmaps_delete,
    images_fail_many,
    images_requeue_stuck,
    results_record_many,
    studies_reconcile,
    working_copy_save,
)
from .uploads import StudyCreateOutcome, study_append, study_create

__all__ = [
    "FINISHED_STATUSES", "ClaimedChunk", "ClaimedImage", "DecodeRecord", "ResultRecord",
    "StudyCreateOutcome", "StudyStateError", "SweepOutcome", "chunk_claim",
    "derive_study_status", "heatmap_save", "heatmaps_delete", "images_fail_many",
    "images_requeue_stuck", "images_send", "images_send_alone", "results_record_many",
    "studies_reconcile", "study_append", "study_cancel", "study_close", "study_create",
    "study_enqueue", "study_enqueue_safely", "study_refresh_status", "study_retry",
    "webhook_enqueue", "working_copy_save",
]
