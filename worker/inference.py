"""Batched inference for one chunk of images: decoding, forward passes and writes overlap.

A chunk (one task, `INFERENCE_CHUNK_SIZE` images) is processed in batches of
`INFERENCE_BATCH_SIZE` images as a pipeline:

1. claim (one transaction, set-based): unfinished images become `processing`; finished ones
   are skipped;
2. read + decode + preprocess on a thread pool, one batch ahead of the model: while batch k is
   in the forward pass, batch k+1 is being decoded. Each image is decoded once, here, in a
   sandboxed child process (ml/sandbox.py: memory and time limits), which also yields its
   format, size, DICOM fields and a small working copy (stored, for retries and previews);
   an image refused by its content gets the status `rejected` with the decoder's reason;
3. per batch, one forward pass of the binary model that yields the probabilities and the CAM
   heatmaps together (plain CAM from the same features; see ml/cam.py), then the etiology
   model's pass; on CUDA with mixed precision and pinned memory when the worker has a GPU,
   otherwise on the CPU;
4. the batch's heatmaps are resized in one operation (`ml.cam.heatmap_levels`), then each is
   encoded as a small palette PNG (`ml.cam.levels_png`: ~4 kB, ~0.2 ms) and written to storage
   on the thread pool while the etiology pass and the next batch run (the viewer lays it over
   the radiograph);
5. each batch's results and failures are stored in one transaction (`results_record_many`)
   by the process's recorder thread while the next batch is in the forward pass: results
   appear batch by batch (the first ones ~0.3 s after a study starts, not after its whole
   chunk), the forward thread never waits for the database, and a task that dies or times out
   keeps the batches already stored; a repeat of the chunk claims only the rest. A result is
   stored with its heatmap or not at all: the heatmaps of batches not stored are deleted.

The models, the thread pool and the recorder belong to the process's `WorkerRuntime`
(worker/runtime.py), created after the fork and passed in; nothing here runs at import time
or keeps state between chunks. The worker hands its results to the processing service as
plain records (`ResultRecord`), never as ORM rows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import numpy as np
import torch
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import close_old_connections

from backend.studies import services
from backend.studies.services import ClaimedImage, DecodeRecord, ResultRecord
from ml.cam import heatmap_levels, levels_png
from ml.checkpoint import CheckpointError
from ml.decode import WORKING_COPY_SIDE, ImageDecodeError, decode_image
from ml.predictor import Prediction
from ml.sandbox import DecodeRefused

from .runtime import Models, WorkerRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkReport:
    done: int
    failed: int
    skipped: int
    seconds: float
    stages: dict[str, float] | None = None  # seconds per step: claim, prepare, forward, ...
    rejected: int = 0  # refused by their content when decoded


@dataclass
class _Prepared:
    image: ClaimedImage
    binary_x: torch.Tensor
    etiology_x: torch.Tensor | None
    decoded: DecodeRecord | None = None  # what the first decode found, to store


@dataclass(frozen=True)
class _Unusable:
    reason: str
    rejected: bool  # refused by its content (status `rejected`), else `failed`


def _read_pixels(image: ClaimedImage, runtime: WorkerRuntime,
                 models: Models) -> tuple[np.ndarray, DecodeRecord | None]:
    """The image's model-ready pixels, and what its first decode found (None after that).

    An image decoded before (a retry) with a working copy that serves the models is read from
    that copy, our own small JPEG (~1 ms). Otherwise the original is decoded once, in the
    sandbox (ml/sandbox.py): untrusted bytes never reach a decoder in this process. The first
    decode also yields the format, size and DICOM fields, and a working copy to store.
    """
    if image.working_file and image.decoded and models.max_input_size <= WORKING_COPY_SIDE:
        try:
            with default_storage.open(image.working_file, "rb") as handle:
                return decode_image(handle.read()).pixels, None
        except (ImageDecodeError, FileNotFoundError) as exc:
            logger.warning("Working copy of image %s unreadable (%s); reading the original",
                           image.id, exc)
    with default_storage.open(image.file, "rb") as handle:
        data = handle.read()
    found = runtime.decode_sandbox(models).inspect(data)
    assert found.pixels is not None
    if image.decoded:
        return found.pixels, None
    working = (services.working_copy_save(image=image, jpeg=found.working_copy)
               if found.working_copy and not image.working_file else "")
    return found.pixels, DecodeRecord(format=found.format, height=found.height,
                                      width=found.width, metadata=found.metadata,
                                      working_file=working)


def _prepare(image: ClaimedImage, runtime: WorkerRuntime,
             models: Models) -> _Prepared | _Unusable:
    """Read, decode and preprocess one image, or why it cannot be used.

    Storage errors other than a missing file propagate: they are transient (the task retries
    them with backoff).
    """
    try:
        pixels, decoded = _read_pixels(image, runtime, models)
    except DecodeRefused as exc:
        return _Unusable(f"Could not read the image: {exc}", rejected=True)
    except FileNotFoundError:
        return _Unusable("Could not read the image: the stored file is missing.",
                         rejected=False)
    return _Prepared(image, *models.inputs(pixels), decoded)


def _render(item: _Prepared, pred: Prediction, heat: np.ndarray | None,
            models: Models) -> ResultRecord:
    """The image's result from the binary model, its heatmap written to storage (thread pool).

    The etiology fields and the inference time are filled in once the batch is through
    (`_Rendering.completed`).
    """
    scope = pred.scope
    return ResultRecord(
        image_id=item.image.id, label=pred.label, probabilities=pred.probabilities,
        score=pred.score, threshold=pred.threshold, model_name=models.binary.name,
        model_version=models.binary.version,
        bbox=list(pred.bbox) if pred.bbox else None,
        # A multi-head model answers the etiology and the scope in the same pass.
        etiology_label=pred.etiology.label if pred.etiology else "",
        etiology_probabilities=dict(pred.etiology.probabilities) if pred.etiology else {},
        in_scope=scope.in_scope if scope else True,
        scope_reason=(scope.reason or "") if scope else "",
        scope_source=scope.source if scope else "",
        in_scope_probability=scope.p_in_scope if scope else None,
        heatmap=(services.heatmap_save(image=item.image, png=levels_png(heat))
                 if heat is not None else ""),
    )


class _Stages:
    """Wall time per pipeline step, summed over the chunk (logged, and used by the bench)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._mark
        self._mark = now


@dataclass
class _Rendering:
    result: Future[ResultRecord]
    etiology: Prediction | None
    inference_ms: float

    def completed(self) -> ResultRecord:
        result = self.result.result()
        if self.etiology is not None:
            result.etiology_label = self.etiology.label
            result.etiology_probabilities = self.etiology.probabilities
        result.inference_ms = self.inference_ms
        return result


def _batch_results(
    models: Models, prepared: list[_Prepared], pool: ThreadPoolExecutor
) -> list[_Rendering]:
    """One batch through both models; heatmaps are rendered while the etiology pass runs."""
    forward_started = time.perf_counter()
    # DICOM attributes found by the first decode feed the scope gate's metadata rule.
    metadata = [p.decoded.metadata if p.decoded else None for p in prepared]
    preds = models.forward(models.binary, torch.stack([p.binary_x for p in prepared]),
                           with_cam=True, metadata=metadata)
    heats: list[np.ndarray | None] = [None] * len(preds)
    if all(pred.heatmap is not None for pred in preds):
        heats = list(heatmap_levels(np.stack([pred.heatmap for pred in preds])))
    rendering = [pool.submit(_render, item, pred, heat, models)
                 for item, pred, heat in zip(prepared, preds, heats, strict=True)]
    etios: list[Prediction | None] = [None] * len(prepared)
    if models.etiology is not None:
        etios = list(models.forward(models.etiology,
                                    torch.stack([p.etiology_x for p in prepared]),  # type: ignore[misc]
                                    with_cam=False))
    per_image_ms = (time.perf_counter() - forward_started) * 1000 / len(prepared)
    return [_Rendering(future, etio, per_image_ms)
            for future, etio in zip(rendering, etios, strict=True)]


def _record_batch(record: _Record, failures: dict[UUID, str], rejections: dict[UUID, str],
                  decoded: dict[UUID, DecodeRecord]) -> int:
    """Store one batch (recorder thread): its results once their heatmaps are written."""
    # This thread's connection outlives tasks: one broken by a database restart or outage is
    # replaced here (Django marks it on the error); the task's retry runs in another thread.
    close_old_connections()
    stored = [rendering.completed() for rendering in record.renderings]
    return services.results_record_many(results=stored, failures=failures,
                                        rejections=rejections, decoded=decoded,
                                        on_committed=record.mark_committed)


@dataclass
class _Record:
    """One batch handed to the recorder."""

    renderings: list[_Rendering]
    future: Future[int] = field(init=False)
    committed: bool = False  # its results are in the database (their heatmaps must stay)

    def mark_committed(self) -> None:
        self.committed = True


def _raise_if_a_record_failed(records: list[_Record]) -> None:
    for record in records:
        if record.future.done():
            record.future.result()


def _abandon(records: list[_Record], pending: list[Future[Any]]) -> None:
    """After an error or the time limit: stop what has not started, let a batch being stored
    finish, and delete the heatmaps of every batch that was not stored."""
    futures = [record.future for record in records]
    for future in [*pending, *futures]:
        future.cancel()
    for future in futures:
        if not future.cancelled():
            with contextlib.suppress(BaseException):
                future.result()
    _discard_heatmaps([r for record in records if not record.committed
                       for r in record.renderings])


def _discard_heatmaps(renderings: list[_Rendering]) -> None:
    for rendering in renderings:
        future = rendering.result
        if future.done() and not future.cancelled() and future.exception() is None:
            with contextlib.suppress(Exception):  # best effort: storage may be down
                services.heatmaps_delete(names=[future.result().heatmap])


class ModelUnavailable(RuntimeError):
    """This process has no model: its chunks must go to another worker."""


def run_chunk(runtime: WorkerRuntime, image_ids: list[str], *, token: str = "",
              earlier_tokens: Sequence[str] = ()) -> ChunkReport:
    """Classify the unfinished images of a chunk; a repeat of a finished chunk does nothing.

    `token` names the task try that claims the images, `earlier_tokens` the tries before it
    (services.chunk_claim: only lost workers count as attempts). Raises ModelUnavailable
    when the models cannot be loaded: the images are left alone for another worker.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        models = runtime.models()
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        logger.error("No model: %s", exc)
        raise ModelUnavailable(str(exc)) from exc
    stages = _Stages()
    claim = services.chunk_claim(image_ids=image_ids,
                                 max_attempts=settings.INFERENCE_MAX_ATTEMPTS,
                                 token=token, earlier_tokens=earlier_tokens)
    stages.lap("claim")
    pool = runtime.io_pool(models.device)
    recorder = runtime.recorder()
    size = max(1, settings.INFERENCE_BATCH_SIZE)
    batches = [claim.images[i:i + size] for i in range(0, len(claim.images), size)]
    failed = rejected = 0
    pending: list[Future[Any]] = []
    records: list[_Record] = []

    def decode(batch: list[ClaimedImage]) -> list[Future[_Prepared | _Unusable]]:
        futures = [pool.submit(_prepare, image, runtime, models) for image in batch]
        pending.extend(futures)
        return futures

    try:
        decoding = decode(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            _raise_if_a_record_failed(records)  # e.g. the database is down: stop early
            outcomes = [future.result() for future in decoding]
            # One batch ahead: the pool decodes the next batch during this one's forward pass.
            decoding = decode(batches[index + 1]) if index + 1 < len(batches) else []
            prepared = []
            failures: dict[UUID, str] = {}
            rejections: dict[UUID, str] = {}
            for image, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, _Unusable):
                    (rejections if outcome.rejected else failures)[image.id] = outcome.reason
                else:
                    prepared.append(outcome)
            failed += len(failures)
            rejected += len(rejections)
            decoded = {p.image.id: p.decoded for p in prepared if p.decoded is not None}
            stages.lap("prepare")
            rendered = _batch_results(models, prepared, pool) if prepared else []
            pending.extend(r.result for r in rendered)
            record = _Record(rendered)
            records.append(record)
            record.future = recorder.submit(_record_batch, record, failures, rejections,
                                            decoded)
            stages.lap("forward")
        done = sum(record.future.result() for record in records)
        stages.lap("record")
    except BaseException:
        # An error or the time limit: the batches already stored stay (a retry claims only
        # the rest); nothing refers to the other heatmaps, so they go.
        _abandon(records, pending)
        raise
    skipped = (len(image_ids) - len(claim.images) - len(claim.given_up)
               - len(claim.set_aside))
    report = ChunkReport(done=done, failed=failed + len(claim.given_up),
                         skipped=skipped, seconds=time.perf_counter() - started,
                         stages=stages.seconds, rejected=rejected)
    runtime.trimmer.processed(len(image_ids))
    logger.info("Chunk of %d: %d done, %d failed, %d rejected, %d skipped in %.3f s, "
                "CPU %.3f s (%s)", len(image_ids), report.done, report.failed, report.rejected,
                report.skipped, report.seconds,
                time.process_time() - cpu_started,
                " ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.seconds.items()))
    return report
