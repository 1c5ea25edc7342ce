"""worker.inference and worker.tasks in this process: batching, idempotency, failures, sweep."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.worker.conftest import small_pngs, study_state, upload_files

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Tasks this process sends (kept here instead of going to Redis)."""
    from backend.config.celery import app

    calls: list[dict] = []
    monkeypatch.setattr(app, "send_task",
                        lambda name, args=None, **kw: calls.append({"name": name, "args": args,
                                                                    **kw}))
    return calls


def test_chunk_records_one_result_per_image_with_heatmap(
    runtime: Any, api: Any, sent: list[dict]
) -> None:
    from backend.studies.models import Result
    from worker.inference import run_chunk

    study = upload_files(api, small_pngs(5))
    ids = [i for call in sent for i in call["args"][0]]
    assert len(ids) == 5
    report = run_chunk(runtime, ids)
    assert (report.done, report.failed, report.skipped) == (5, 0, 0)
    state = study_state(study["id"])
    assert state["status"] == "done" and state["results"] == 5
    result = Result.objects.filter(image__study_id=study["id"]).first()
    assert result.model_name == "tiny-test"
    with result.heatmap.open("rb") as fh:
        assert fh.read(4) == b"\x89PNG"  # a compressed heatmap for the viewer's overlay
    assert result.inference_ms and result.inference_ms > 0


def test_start_up_objects_are_frozen_out_of_the_collector_and_new_garbage_is_collected(
    runtime: Any,
) -> None:
    import gc
    import weakref


    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    runtime.models()
    # Django, torch and the models: full collections no longer walk them.
    assert gc.get_freeze_count() > 10_000

    class Node:
        cycle: Any

    garbage = Node()
    garbage.cycle = garbage  # reference cycle: only the collector can free it
    freed = weakref.ref(garbage)
    del garbage
    gc.collect()
    assert freed() is None


def test_chunk_runs_as_a_pipeline_of_batches_with_the_results_of_one_batch(
    runtime: Any, api: Any, sent: list[dict], settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from backend.studies.models import Image, Result
    from worker import inference
    from worker.runtime import Models

    study = upload_files(api, small_pngs(7))
    ids = [i for call in sent for i in call["args"][0]]
    images = list(Image.objects.filter(study_id=study["id"]).order_by("id"))
    broken = images[4]  # claimed in id order: the second batch of three
    with broken.file.storage.open(broken.file.name, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    runtime.models()  # its warm-up pass is not part of the chunk
    batch_sizes: list[int] = []
    forward = Models.forward
    monkeypatch.setattr(Models, "forward", lambda models, predictor, x, with_cam, metadata=None: (
        batch_sizes.append(len(x)) or forward(models, predictor, x, with_cam)))

    settings.INFERENCE_BATCH_SIZE = 3
    report = inference.run_chunk(runtime, ids)
    assert (report.done, report.rejected, report.failed, report.skipped) == (6, 1, 0, 0)
    assert batch_sizes == [3, 2, 1]  # the corrupt image left its batch alone
    assert set(report.stages or {}) == {"claim", "prepare", "forward", "record"}
    pipelined = {r.image_id: (r.label, r.score, r.bbox) for r in Result.objects.all()}
    assert all(r.heatmap and r.inference_ms for r in Result.objects.all())
    assert Image.objects.get(id=broken.id).error.startswith("Could not read the image:")

    # The same chunk as a single batch gives the same results.
    Result.objects.all().delete()
    Image.objects.update(status="queued", attempts=0, error="", finished_at=None, width=None,
                         working_file="")
    batch_sizes.clear()
    settings.INFERENCE_BATCH_SIZE = 100
    inference.run_chunk(runtime, ids)
    assert batch_sizes == [6]
    single = {r.image_id: (r.label, r.score, r.bbox) for r in Result.objects.all()}
    assert single.keys() == pipelined.keys()
    for image_id, (label, score, bbox) in single.items():
        assert pipelined[image_id][0] == label
        assert pipelined[image_id][1] == pytest.approx(score, abs=1e-5)
        assert pipelined[image_id][2] == pytest.approx(bbox, abs=1e-5)


def test_storage_failure_keeps_stored_batches_and_leaves_no_half_batch(
    runtime: Any, api: Any, sent: list[dict], settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Results are stored batch by batch: when the store fails in the second batch, the first
    batch's results stay with their heatmaps, the second leaves neither rows nor files, and
    the retry classifies only what is left."""
    from django.core.files.storage import default_storage

    from backend.studies.models import Image, Result
    from worker import inference

    study = upload_files(api, small_pngs(5))
    ids = [i for call in sent for i in call["args"][0]]
    settings.INFERENCE_BATCH_SIZE = 2
    encode = inference.levels_png
    calls: list[int] = []

    def storage_goes_down(levels: Any) -> bytes:
        calls.append(1)
        if len(calls) > 3:  # the first batch and half of the second are written, then it fails
            raise ConnectionError("object store unreachable")
        return encode(levels)

    monkeypatch.setattr(inference, "levels_png", storage_goes_down)
    with pytest.raises(ConnectionError):
        inference.run_chunk(runtime, ids, token="task:0")
    first = list(Result.objects.select_related("image"))
    assert len(first) == 2
    assert all(r.heatmap and default_storage.exists(r.heatmap.name) for r in first)
    assert sorted(Image.objects.values_list("status", flat=True)) == (
        ["done"] * 2 + ["processing"] * 3)
    folder = f"studies/{study['id']}/heatmaps"
    assert sorted(default_storage.listdir(folder)[1]) == sorted(
        r.heatmap.name.rsplit("/", 1)[1] for r in first)  # the second batch's file went
    monkeypatch.undo()
    # The task's retry re-claims what its previous try held: no lost worker, no attempt.
    retry = inference.run_chunk(runtime, ids, token="task:1", earlier_tokens=["task:0"])
    assert (retry.done, retry.skipped) == (3, 2)  # only the rest is classified again
    assert set(Image.objects.values_list("attempts", flat=True)) == {0}
    assert Result.objects.count() == 5
    assert set(Image.objects.values_list("status", flat=True)) == {"done"}


def test_results_appear_batch_by_batch(
    runtime: Any, api: Any, sent: list[dict], settings: Any,
    monkeypatch: pytest.MonkeyPatch, batch_stored: threading.Event,
) -> None:
    """While the second batch is in the forward pass, the first batch is already stored."""
    from backend.studies.models import Result
    from worker import inference
    from worker.runtime import Models

    upload_files(api, small_pngs(4))
    ids = [i for call in sent for i in call["args"][0]]
    settings.INFERENCE_BATCH_SIZE = 2
    runtime.models()
    stored_at_forward: list[int] = []
    forward = Models.forward

    def watching(models: Any, predictor: Any, x: Any, with_cam: bool, **kw: Any) -> Any:
        if with_cam:  # the binary pass of each batch
            if stored_at_forward:  # the recorder stores the batch before, meanwhile
                batch_stored.wait(timeout=30)
            stored_at_forward.append(Result.objects.count())
        return forward(models, predictor, x, with_cam, **kw)

    monkeypatch.setattr(Models, "forward", watching)
    assert inference.run_chunk(runtime, ids).done == 4
    assert stored_at_forward == [0, 2]


def test_repeated_chunk_changes_nothing(runtime: Any, api: Any, sent: list[dict]) -> None:
    from backend.studies.models import Image, Result
    from worker.inference import run_chunk

    upload_files(api, small_pngs(4))
    ids = [i for call in sent for i in call["args"][0]]
    run_chunk(runtime, ids)
    before = list(Image.objects.order_by("id").values_list("id", "status", "attempts",
                                                          "finished_at"))
    report = run_chunk(runtime, ids)  # a redelivery of the same message
    assert (report.done, report.skipped) == (0, 4)
    assert Result.objects.count() == 4
    assert list(Image.objects.order_by("id").values_list("id", "status", "attempts",
                                                         "finished_at")) == before


def test_late_duplicate_result_is_dropped(runtime: Any, api: Any, sent: list[dict]) -> None:
    """Two deliveries racing: the second one's results and heatmaps are discarded."""
    from backend.studies import services
    from backend.studies.models import Image, Result
    from worker import inference

    upload_files(api, small_pngs(2))
    ids = [i for call in sent for i in call["args"][0]]
    models = runtime.models()
    claim = services.chunk_claim(image_ids=ids, max_attempts=5)
    prepared = [inference._prepare(im, runtime, models) for im in claim.images]
    preds = models.forward(models.binary,
                           __import__("torch").stack([p.binary_x for p in prepared]), True)
    late = [inference._render(p, q, inference.heatmap_levels(q.heatmap[None])[0], models)
            for p, q in zip(prepared, preds, strict=True)]
    # The other delivery finishes first (it claims them as a fresh delivery would).
    Image.objects.filter(id__in=ids).update(status="queued")
    inference.run_chunk(runtime, ids)
    first = {r.image_id: r.heatmap.name for r in Result.objects.all()}
    late_files = [r.heatmap for r in late]
    assert all(late_files)
    assert services.results_record_many(results=late) == 0
    assert Result.objects.count() == 2
    assert {r.image_id: r.heatmap.name for r in Result.objects.all()} == first
    storage = Result._meta.get_field("heatmap").storage
    assert not any(storage.exists(name) for name in late_files)
    assert set(Image.objects.values_list("status", flat=True)) == {"done"}


def test_corrupt_image_is_rejected_alone_with_a_reason(
    runtime: Any, api: Any, sent: list[dict]
) -> None:
    from backend.studies.models import Image
    from worker.inference import run_chunk

    study = upload_files(api, small_pngs(3))
    broken = Image.objects.filter(study_id=study["id"]).order_by("original_name").first()
    with broken.file.storage.open(broken.file.name, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # truncated after upload
    report = run_chunk(runtime, [i for call in sent for i in call["args"][0]])
    assert (report.done, report.rejected, report.failed) == (2, 1, 0)
    broken.refresh_from_db()
    assert broken.status == "rejected"  # refused by its content, with the decoder's reason
    assert broken.error.startswith("Could not read the image: corrupt or truncated PNG")
    assert study_state(study["id"])["status"] == "done_with_errors"


def _dicom_study(api: Any) -> tuple[dict, Any]:
    from backend.studies.models import Image
    from tests.conftest import DICOM_DIR

    path = DICOM_DIR / "cr-chest-pa-monochrome1-j2k-lossy.dcm"
    if not path.is_file():
        pytest.skip(f"DICOM test file not found: {path}")
    study = upload_files(api, [(path.name, path.read_bytes())])
    image = Image.objects.get(study_id=study["id"])
    assert not image.working_file and image.width is None  # the upload decodes nothing
    return study, image


def _decoded_once(runtime: Any, study: dict) -> Any:
    """Classify the study once (its first decode stores the working copy), then put its
    image back in the queue as a retry would."""
    from backend.studies.models import Image, Result
    from worker.inference import run_chunk

    image = Image.objects.get(study_id=study["id"])
    assert run_chunk(runtime, [str(image.id)]).done == 1
    image.refresh_from_db()
    assert image.working_file and image.width == 1841  # from the one decode
    Result.objects.filter(image=image).delete()
    Image.objects.filter(id=image.id).update(status="queued")
    return image


def test_dicom_is_read_from_its_working_copy(
    runtime: Any, api: Any, sent: list[dict]
) -> None:
    from worker.inference import run_chunk

    study, image = _dicom_study(api)
    image = _decoded_once(runtime, study)
    image.file.storage.delete(image.file.name)  # only the working copy can answer now
    report = run_chunk(runtime, [str(image.id)])
    assert (report.done, report.failed) == (1, 0)
    assert study_state(study["id"])["status"] == "done"


def test_unreadable_working_copy_falls_back_to_the_original(
    runtime: Any, api: Any, sent: list[dict]
) -> None:
    from worker.inference import run_chunk

    study, image = _dicom_study(api)
    image = _decoded_once(runtime, study)
    with image.working_file.storage.open(image.working_file.name, "wb") as fh:
        fh.write(b"\xff\xd8\xff" + b"\x00" * 32)  # a truncated JPEG
    assert run_chunk(runtime, [str(image.id)]).done == 1


def test_preparing_claimed_images_makes_no_database_query(
    runtime: Any, api: Any, sent: list[dict], django_assert_num_queries: Any
) -> None:
    """The pool threads read files only: a field left out of the claim would cost a query
    per image, on a thread-local connection that the retry after an outage never resets."""
    from backend.studies import services
    from worker import inference

    _dicom_study(api)
    upload_files(api, small_pngs(2))
    ids = [i for call in sent for i in call["args"][0]]
    models = runtime.models()
    claim = services.chunk_claim(image_ids=ids, max_attempts=5)
    assert len(claim.images) == 3
    runtime.decode_sandbox(models)  # its children started: not part of what is measured
    with django_assert_num_queries(0):
        prepared = [inference._prepare(image, runtime, models) for image in claim.images]
    assert all(isinstance(p, inference._Prepared) for p in prepared)


def test_model_larger_than_the_working_copy_reads_the_original(
    runtime: Any, api: Any, sent: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import inference

    study, image = _dicom_study(api)
    image = _decoded_once(runtime, study)
    monkeypatch.setattr(inference, "WORKING_COPY_SIDE", 32)  # below the model's 64 px input
    image.file.storage.delete(image.file.name)
    assert inference.run_chunk(runtime, [str(image.id)]).failed == 1
    image.refresh_from_db()
    assert image.error == "Could not read the image: the stored file is missing."


def test_image_claimed_too_often_is_failed_not_looped(
    runtime: Any, api: Any, sent: list[dict], settings: Any
) -> None:
    from backend.studies.models import Image
    from worker.inference import run_chunk

    settings.INFERENCE_MAX_ATTEMPTS = 3
    study = upload_files(api, small_pngs(2))
    poison = Image.objects.filter(study_id=study["id"]).first()
    # Lost twice before, and still `processing` under another task: a third loss.
    Image.objects.filter(id=poison.id).update(status="processing", attempts=2,
                                              claimed_by="dead-task:0")
    report = run_chunk(runtime, [i for call in sent for i in call["args"][0]],
                       token="task:0")
    assert (report.done, report.failed) == (1, 1)
    poison.refresh_from_db()
    assert poison.status == "failed" and "Gave up after 3 attempts" in poison.error


def test_a_retry_after_a_retry_that_failed_before_claiming_counts_no_attempt(
    runtime: Any, api: Any, sent: list[dict]
) -> None:
    """During a database outage the first retry can fail before it claims anything: the
    images are still held by the first try, and the second retry must recognise them."""
    from backend.studies.models import Image
    from worker.inference import run_chunk

    upload_files(api, small_pngs(2))
    ids = [i for call in sent for i in call["args"][0]]
    Image.objects.filter(id__in=ids).update(status="processing", claimed_by="task:0")
    report = run_chunk(runtime, ids, token="task:2", earlier_tokens=["task:0", "task:1"])
    assert report.done == 2
    assert set(Image.objects.filter(id__in=ids).values_list("attempts", flat=True)) == {0}


def test_an_image_lost_before_is_sent_again_alone_and_its_neighbours_processed(
    runtime: Any, api: Any, sent: list[dict]
) -> None:
    from backend.studies.models import Image
    from worker.inference import run_chunk

    study = upload_files(api, small_pngs(4))
    ids = [i for call in sent for i in call["args"][0]]
    sent.clear()
    suspect = Image.objects.filter(study_id=study["id"]).first()
    # Its worker died holding it (the message came back: same try, image still processing).
    Image.objects.filter(id=suspect.id).update(status="processing", claimed_by="task:0")
    report = run_chunk(runtime, ids, token="task:0")
    assert (report.done, report.failed, report.skipped) == (3, 0, 0)
    suspect.refresh_from_db()
    assert suspect.status == "queued" and suspect.attempts == 1
    assert [call["args"][0] for call in sent] == [[str(suspect.id)]]  # a chunk of its own
    alone = run_chunk(runtime, [str(suspect.id)], token="task2:0")
    assert alone.done == 1


def test_sweep_requeues_stuck_images_at_study_priority(
    api: Any, sent: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.utils import timezone

    from backend.studies import services
    from backend.studies.models import Image

    study = upload_files(api, small_pngs(3), priority="urgent")
    sent.clear()
    images = list(Image.objects.filter(study_id=study["id"]).order_by("id"))
    old = timezone.now() - timezone.timedelta(minutes=30)
    Image.objects.filter(id=images[0].id).update(status="processing", started_at=old)
    Image.objects.filter(id=images[1].id).update(status="processing",
                                                 started_at=timezone.now())  # still running
    outcome = services.images_requeue_stuck(processing_deadline_s=600, queued_deadline_s=10**6,
                                            inference_queue_empty=True)
    assert (outcome.stuck_processing, outcome.lost_queued) == (1, 0)
    assert [c["args"][0] for c in sent] == [[str(images[0].id)]]
    assert sent[0]["queue"] == "inference" and sent[0]["priority"] == 0
    requeued = Image.objects.get(id=images[0].id)
    assert requeued.status == "queued" and requeued.attempts == 1  # a lost worker counts
    # Queued images whose message was lost: requeued only when the queue is empty.
    Image.objects.filter(study_id=study["id"]).update(created_at=old, sent_at=old)
    sent.clear()
    outcome = services.images_requeue_stuck(processing_deadline_s=600, queued_deadline_s=60,
                                            inference_queue_empty=False)
    assert (outcome.stuck_processing, outcome.lost_queued, sent) == (0, 0, [])
    outcome = services.images_requeue_stuck(processing_deadline_s=600, queued_deadline_s=60,
                                            inference_queue_empty=True)
    assert outcome.lost_queued == 2


def test_task_soft_time_limit_ends_in_recorded_failure(
    runtime: Any, api: Any, sent: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from backend.studies.models import Image
    from worker import inference, tasks

    study = upload_files(api, small_pngs(2))
    ids = [i for call in sent for i in call["args"][0]]

    def slow(_runtime: Any, image_ids: list[str], **tokens: str) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(inference, "run_chunk", slow)
    tasks.infer_images.apply(args=[ids])
    assert set(Image.objects.values_list("status", flat=True)) == {"failed"}
    assert Image.objects.first().error.startswith("Timed out")
    assert study_state(study["id"])["status"] == "failed"


def test_soft_time_limit_mid_chunk_keeps_the_batches_stored(
    runtime: Any, api: Any, sent: list[dict], settings: Any,
    monkeypatch: pytest.MonkeyPatch, batch_stored: threading.Event,
) -> None:
    """The soft limit strikes in the second batch's forward pass: the first batch keeps its
    results and heatmaps, the rest fail as timed out, and no heatmap file is left over."""
    from celery.exceptions import SoftTimeLimitExceeded
    from django.core.files.storage import default_storage

    from backend.studies.models import Image, Result
    from worker import tasks
    from worker.runtime import Models

    study = upload_files(api, small_pngs(5))
    ids = [i for call in sent for i in call["args"][0]]
    settings.INFERENCE_BATCH_SIZE = 2
    runtime.models()
    forward = Models.forward
    passes: list[int] = []

    def limit_in_second_batch(models: Any, predictor: Any, x: Any, with_cam: bool,
                              **kw: Any) -> Any:
        passes.append(1)
        if len(passes) == 2:
            batch_stored.wait(timeout=30)  # the recorder stores the first batch meanwhile
            raise SoftTimeLimitExceeded()
        return forward(models, predictor, x, with_cam, **kw)

    monkeypatch.setattr(Models, "forward", limit_in_second_batch)
    tasks.infer_images.apply(args=[ids])
    statuses = sorted(Image.objects.values_list("status", flat=True))
    assert statuses == ["done"] * 2 + ["failed"] * 3
    assert all(e.startswith("Timed out") for e in
               Image.objects.filter(status="failed").values_list("error", flat=True))
    kept = list(Result.objects.all())
    assert len(kept) == 2 and all(default_storage.exists(r.heatmap.name) for r in kept)
    folder = f"studies/{study['id']}/heatmaps"
    assert len(default_storage.listdir(folder)[1]) == 2
    assert study_state(study["id"])["status"] == "done_with_errors"


def test_task_retries_transient_errors_then_records_failure(
    runtime: Any, api: Any, sent: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import Retry
    from django.db import OperationalError

    from backend.studies.models import Image
    from worker import inference, tasks

    upload_files(api, small_pngs(2))
    ids = [i for call in sent for i in call["args"][0]]

    def down(_runtime: Any, image_ids: list[str], **tokens: str) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(inference, "run_chunk", down)
    with pytest.raises(Retry):
        tasks.infer_images.apply(args=[ids], throw=True)
    assert set(Image.objects.values_list("status", flat=True)) == {"queued"}
    # The last allowed retry: the chunk ends in a recorded failure, not a loop.
    tasks.infer_images.apply(args=[ids], retries=tasks.MAX_RETRIES)
    assert set(Image.objects.values_list("status", flat=True)) == {"failed"}
    assert "retries" in Image.objects.first().error


def test_backoff_grows_and_is_capped() -> None:
    from worker.tasks import backoff_s

    assert 0.5 <= backoff_s(0) <= 1
    assert 4 <= backoff_s(3) <= 8
    assert backoff_s(20) <= 60


@pytest.mark.parametrize(("choice", "idle"), [("auto", True), ("normal", False), ("idle", True)])
def test_pool_threads_only_use_cpu_the_forward_pass_leaves_free(
    settings: Any, monkeypatch: pytest.MonkeyPatch, choice: str, idle: bool
) -> None:
    import os

    import torch

    from worker.runtime import WorkerRuntime

    settings.INFERENCE_IO_PRIORITY = choice
    runtime = WorkerRuntime()
    pool = runtime.io_pool(torch.device("cpu"))
    try:
        policy = pool.submit(os.sched_getscheduler, 0).result()
    finally:
        pool.shutdown()
    assert policy == (os.SCHED_IDLE if idle else os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the forward pass keeps its priority
    # With a GPU the CPU work feeds the device: "auto" keeps normal priority there.
    assert runtime.io_threads_idle(torch.device("cuda")) is (choice == "idle")
    # Beside other pool processes, idle threads would starve: "auto" keeps normal priority.
    runtime = WorkerRuntime(pool_processes=2)
    assert runtime.io_threads_idle(torch.device("cpu")) is (choice == "idle")


def test_recorder_reconnects_after_its_connection_broke(
    runtime: Any, api: Any, sent: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder thread's database connection dies (a database restart): that chunk fails
    with a database error, which the task retries, and the retry stores everything."""
    from django.db import InterfaceError, OperationalError, connection

    from backend.studies.models import Result
    from worker import inference

    # Persistent connections without health checks (the test settings close them after each
    # use, which would hide the broken one): only dropping it on the error saves the retry.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 600)
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", False)
    runtime.close_recorder_connection()
    upload_files(api, small_pngs(2))
    first = [i for call in sent for i in call["args"][0]]
    assert inference.run_chunk(runtime, first).done == 2
    # Behind Django's back, as a server restart would: Django still thinks it is open.
    runtime.recorder().submit(lambda: connection.connection.close()).result()
    sent.clear()
    upload_files(api, small_pngs(3, seed=1))
    second = [i for call in sent for i in call["args"][0]]
    with pytest.raises((InterfaceError, OperationalError)):
        inference.run_chunk(runtime, second, token="task:0")
    assert Result.objects.count() == 2
    # What the task's retry does: it re-claims its previous try's images.
    assert inference.run_chunk(runtime, second, token="task:1",
                               earlier_tokens=["task:0"]).done == 3
    assert Result.objects.count() == 5
