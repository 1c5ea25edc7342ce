"""Writes of the DICOM network side: configuration, received instances, studies closing,
result objects and their delivery."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydicom.dataset import Dataset

from backend.accounts.models import User
from backend.audit.services import audit_record
from backend.studies.models import Image, Result, Study

from . import objects
from .models import CallingAeTitle, DicomConfig, DicomOutput, ReceivedInstance, ReceivedStudy

logger = logging.getLogger(__name__)

CLOSE_TASK = "dicomnet.close_received_study"
DELIVER_TASK = "dicomnet.deliver_study_outputs"
# The action of main's hospital settings (AuditEvent.Action.SETTINGS_CHANGED there).
CONFIG_UPDATED = "hospital.settings_changed"


class DicomConfigError(ValueError):
    """A configuration the API refuses; the message is user-facing."""


# --- Configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int


def dicom_config_update(
    *, user: User, calling_ae_titles: list[str], destination: Destination | None,
    dicomweb_url: str = "", request: Any = None,
) -> DicomConfig:
    """Replace the hospital's DICOM configuration; audited with the before and after."""
    hospital = user.hospital
    titles = sorted({t.strip() for t in calling_ae_titles})
    with transaction.atomic():
        config, _ = DicomConfig.objects.select_for_update().get_or_create(hospital=hospital)
        before = dicom_config_as_dict(config)
        taken = sorted(CallingAeTitle.objects.filter(ae_title__in=titles)
                       .exclude(hospital=hospital).values_list("ae_title", flat=True))
        if taken:
            # The calling AE title is what names the hospital: it cannot name two.
            raise DicomConfigError(f"AE title(s) already used by another hospital: "
                                   f"{', '.join(taken)}")
        CallingAeTitle.objects.filter(hospital=hospital).exclude(ae_title__in=titles).delete()
        for title in titles:
            CallingAeTitle.objects.get_or_create(ae_title=title, hospital=hospital)
        config.destination_ae_title = destination.ae_title if destination else ""
        config.destination_host = destination.host if destination else ""
        config.destination_port = destination.port if destination else None
        config.dicomweb_url = dicomweb_url or ""
        config.save()
        after = dicom_config_as_dict(config)
        audit_record(action=CONFIG_UPDATED, user=user, request=request,
                     object_type="hospital", object_id=hospital.id,
                     detail={"settings": "dicom", "before": before, "after": after})
        if after["destination"] != before["destination"] or (
                after["dicomweb_url"] != before["dicomweb_url"]):
            # Results that found no destination (or a wrong one) go to the new one.
            waiting = list(DicomOutput.objects.filter(image__study__hospital=hospital)
                           .exclude(state=DicomOutput.State.SENT)
                           .order_by().values_list("image__study_id", flat=True).distinct())
            transaction.on_commit(lambda: [study_outputs_enqueue(study_id=study_id)
                                           for study_id in waiting])
    return config


def dicom_config_as_dict(config: DicomConfig) -> dict[str, Any]:
    return {
        "calling_ae_titles": sorted(CallingAeTitle.objects.filter(hospital_id=config.hospital_id)
                                    .values_list("ae_title", flat=True)),
        "destination": ({"ae_title": config.destination_ae_title,
                         "host": config.destination_host, "port": config.destination_port}
                        if config.has_destination else None),
        "dicomweb_url": config.dicomweb_url or None,
    }


# --- Receiving ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    stored: bool  # False: a repeat of an instance we have, or one of our own objects
    reason: str = ""


def instance_receive(*, hospital_id: int, calling_ae_title: str, dataset: Dataset,
                     encoded: bytes) -> Received:
    """Store one C-STORE'd instance of a hospital, grouped by its StudyInstanceUID.

    Nothing is decoded here (the listener must answer fast): the file is written as received
    and the study is closed, decoded and classified after DICOM_STUDY_QUIET_S of quiet.
    Re-sent SOP Instance UIDs and objects we made ourselves are acknowledged, not stored.
    """
    study_uid = str(dataset.StudyInstanceUID)
    sop_uid = str(dataset.SOPInstanceUID)
    if (str(dataset.get("Manufacturer", "")) == objects.MANUFACTURER
            or DicomOutput.objects.filter(sop_instance_uid=sop_uid).exists()):
        return Received(stored=False, reason="one of our own result objects")
    now = timezone.now()
    received, _ = ReceivedStudy.objects.get_or_create(
        hospital_id=hospital_id, study_instance_uid=study_uid,
        defaults={"last_received_at": now, "calling_ae_title": calling_ae_title},
    )
    if ReceivedInstance.objects.filter(received_study=received, sop_instance_uid=sop_uid).exists():
        return Received(stored=False, reason="already received")
    name = default_storage.save(
        f"dicom-in/{received.id}/{hashlib.sha256(sop_uid.encode()).hexdigest()[:32]}.dcm",
        ContentFile(encoded))
    try:
        with transaction.atomic():
            ReceivedInstance.objects.create(
                received_study=received, sop_instance_uid=sop_uid,
                sop_class_uid=str(dataset.SOPClassUID), file=name, size_bytes=len(encoded))
            ReceivedStudy.objects.filter(id=received.id).update(last_received_at=now)
    except IntegrityError:  # the same instance on two associations at once
        default_storage.delete(name)
        return Received(stored=False, reason="already received")
    return Received(stored=True)


def received_studies_due(*, quiet_s: float, now: Any = None) -> list[int]:
    """Received studies with instances not yet ingested and quiet for `quiet_s`, whose close
    task was not sent since their last instance (or long ago: its message may be lost)."""
    now = now or timezone.now()
    quiet_since = now - timedelta(seconds=quiet_s)
    resend_before = now - timedelta(seconds=max(60.0, 4 * quiet_s))
    rows = (ReceivedStudy.objects.filter(instances__ingested=False,
                                         last_received_at__lte=quiet_since)
            .distinct().values_list("id", "close_sent_at", "last_received_at"))
    return [pk for pk, sent, last in rows
            if sent is None or sent < last or sent < resend_before]


def received_study_close_send(*, received_study_id: int) -> None:
    """Send the close task of a quiet study (the listener's sweeper calls this)."""
    from backend.config.celery import app

    ReceivedStudy.objects.filter(id=received_study_id).update(close_sent_at=timezone.now())
    app.send_task(CLOSE_TASK, args=[received_study_id], queue="default")


def _header(data: bytes) -> Dataset | None:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:  # garbage: reported by the decoder's message instead
        return None


def received_study_close(*, received_study_id: int) -> Study | None:
    """Ingest a quiet study's new instances into its Study (created on first close), then
    classify them like an uploaded study.

    The instances are decoded before any lock is taken, so the listener can go on storing
    instances of the same study meanwhile; the images are then created in one short
    transaction for the instances still not ingested (a concurrent close of the same study
    decodes in vain but creates nothing twice). An instance the decoder refuses becomes a
    failed image with the decoder's reason, so it still gets a report saying it was not
    analysed.
    """
    from backend.studies.services import study_enqueue, study_refresh_status

    pending = list(ReceivedInstance.objects.filter(received_study_id=received_study_id,
                                                   ingested=False).order_by("received_at", "id"))
    if not pending:
        return ReceivedStudy.objects.get(id=received_study_id).study
    prepared = [_prepare(instance) for instance in pending]
    used: set[str] = set()
    try:
        with transaction.atomic():
            received = (ReceivedStudy.objects.select_for_update().select_related("hospital")
                        .get(id=received_study_id))
            still = set(received.instances.filter(id__in=[i.id for i in pending],
                                                  ingested=False).values_list("id", flat=True))
            if not still:
                return received.study
            study = received.study or _study_for(received, prepared[0].header)
            existing = set(study.images.values_list("sha256", flat=True))
            for item in prepared:
                if item.instance.id not in still:
                    continue
                image = None
                if item.sha256 in existing:  # the same bytes under another SOP Instance UID
                    item.instance.error = ("Identical to another instance of this study; "
                                           "not classified twice.")
                else:
                    existing.add(item.sha256)
                    image = Image.objects.create(study=study, **item.image_fields)
                    used.add(item.working)
                item.instance.ingested = True
                item.instance.image = image
                item.instance.save(update_fields=["ingested", "image", "error"])
            if study.finished_at is not None:  # new images: the study runs again
                study.finished_at = None
                study.save(update_fields=["finished_at"])
            study_id = study.id
            transaction.on_commit(lambda: study_enqueue(study_id=study_id))
    finally:
        for item in prepared:  # working copies of instances another close took, or none
            if item.working and item.working not in used:
                default_storage.delete(item.working)
    study_refresh_status(study_id=study_id)
    return study


@dataclass
class _Prepared:
    instance: ReceivedInstance
    sha256: str
    header: Dataset
    image_fields: dict[str, Any]
    working: str = ""


def _study_for(received: ReceivedStudy, header: Dataset) -> Study:
    study = Study.objects.create(
        hospital=received.hospital,
        name=(str(header.get("StudyDescription", "")) or
              f"DICOM from {received.calling_ae_title}")[:200],
        accession_number=str(header.get("AccessionNumber", ""))[:64],
    )
    received.study = study
    received.save(update_fields=["study"])
    return study


def _prepare(instance: ReceivedInstance) -> _Prepared:
    """Check one received instance as an upload is, without decoding it (no database
    writes): the inference worker that classifies it decodes it once, in its sandbox, and
    fills in its size and the rest of its fields; a file it refuses becomes `rejected`."""
    from backend.studies.ingest import DICOM_FIELDS, FIELD_LENGTHS, Rejection, screen_file

    with instance.file.open("rb") as handle:
        data = handle.read()
    sha256 = hashlib.sha256(data).hexdigest()
    header = _header(data) or Dataset()
    name = f"{instance.sop_instance_uid}.dcm"
    common = {"file": instance.file.name, "original_name": name, "sha256": sha256,
              "size_bytes": len(data),
              **{field: str(header.get(keyword, "")).strip()[: FIELD_LENGTHS.get(field, 64)]
                 for keyword, field in DICOM_FIELDS.items()}}
    common["sop_instance_uid"] = instance.sop_instance_uid[:64]
    screened = screen_file(name, data, max_bytes=settings.MAX_UPLOAD_FILE_BYTES)
    if isinstance(screened, Rejection):
        instance.error = screened.reason
        return _Prepared(instance, sha256, header, {
            **common, "format": "dicom", "status": Image.Status.REJECTED,
            "error": screened.reason[:2000], "finished_at": timezone.now(),
        })
    return _Prepared(instance, sha256, header, {**common, "format": screened.format})


# --- Results out --------------------------------------------------------------------------------


def model_identity_fallback() -> tuple[str, str]:
    """Model name and version for an image with no result (it failed before inference)."""
    latest = Result.objects.order_by("-created_at").values_list("model_name", "model_version")
    return latest.first() or ("pneumoscan", "unknown")


def image_findings(image: Image) -> objects.Findings:
    """The image's result as plain values; fields of the scope gate read defensively."""
    result = getattr(image, "result", None) if _has_result(image) else None
    if result is None:
        name, version = model_identity_fallback()
        # A failed image that has no size was never decoded: the decoder refused it.
        reason = {"failed": "undecodable" if image.width is None else "failed",
                  "rejected": "undecodable",
                  "cancelled": "cancelled"}.get(image.status, "failed")
        return objects.Findings(model_name=name, model_version=version,
                                not_analysed_reason=reason)
    # Out of scope: the label is withheld ("enforce"), or kept with a warning ("warn").
    out_of_scope = (getattr(result, "scope", "") or "in_scope") == "out_of_scope"
    reason = (getattr(result, "scope_reason", "") or "out_of_scope") if out_of_scope else ""
    if result.label not in ("normal", "pneumonia") or result.score is None:
        return objects.Findings(
            model_name=result.model_name, model_version=result.model_version,
            not_analysed_reason=reason or "out_of_scope")
    return objects.Findings(
        model_name=result.model_name, model_version=result.model_version,
        pneumonia=result.label == "pneumonia", probability=float(result.score),
        threshold=float(result.threshold),
        etiology={k: float(v) for k, v in (result.etiology_probabilities or {}).items()},
        scope_reason=reason,
    )


def _has_result(image: Image) -> bool:
    try:
        image.result  # noqa: B018
    except Result.DoesNotExist:
        return False
    return True


def image_source_header(image: Image) -> Dataset:
    """The source instance's header (patient, study, series, SOP), without the pixels."""
    with image.file.open("rb") as handle:
        header = _header(handle.read())
    if header is None or "SOPInstanceUID" not in header or "StudyInstanceUID" not in header:
        raise ValueError("the source image has no readable DICOM header")
    if "SOPClassUID" not in header:
        header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR: files without meta lack it
    if "SeriesInstanceUID" not in header:
        header.SeriesInstanceUID = objects.derived_uid(str(header.StudyInstanceUID), "series")
    return header


def image_sr(image: Image) -> Dataset:
    return objects.build_sr(image_source_header(image), image_findings(image))


def image_heatmap_sc(image: Image) -> Dataset | None:
    """The heatmap image, or None for an image that was not classified."""
    findings = image_findings(image)
    if not findings.analysed or not image.result.heatmap:
        return None
    from ml.decode import decode_image

    with image.file.open("rb") as handle:
        radiograph = decode_image(handle.read()).pixels
    with image.result.heatmap.open("rb") as handle:
        heatmap_png = handle.read()
    return objects.build_heatmap_sc(image_source_header(image), findings,
                                    radiograph=radiograph, heatmap_png=heatmap_png)


def dataset_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_outputs_enqueue(*, study_id: UUID) -> None:
    """Send a finished received study's results to its hospital (the delivery task)."""
    from backend.config.celery import app

    try:
        app.send_task(DELIVER_TASK, args=[str(study_id)], queue="default")
    except Exception:
        logger.exception("Could not queue the DICOM delivery of study %s", study_id)


# Objects built and sent per association: a heatmap is ~3 MB in memory, a study may be large.
DELIVERY_BATCH = 16


def study_outputs_deliver(*, study_id: UUID) -> dict[str, int]:
    """Build the results of the study's finished images and send those not yet sent.

    One SR per finished image and one heatmap per classified image, DELIVERY_BATCH objects per
    association. UIDs are deterministic, so a repeat (redelivered task, study closed again
    with new instances) sends nothing twice. Raises delivery.DestinationUnreachable when the
    destination is unreachable (the task retries; batches already sent stay sent).
    """
    study = Study.objects.get(id=study_id)
    config = DicomConfig.objects.filter(hospital_id=study.hospital_id).first()
    configured = config is not None and (config.has_destination or bool(config.dicomweb_url))
    images = (study.images.filter(status__in=Image.FINAL_STATUSES, format="dicom")
              .select_related("result").order_by("created_at", "id"))
    totals = {"sent": 0, "failed": 0}
    batch: list[tuple[DicomOutput, Dataset]] = []
    for image in images.iterator(chunk_size=100):
        for kind, build in ((DicomOutput.Kind.SR, image_sr),
                            (DicomOutput.Kind.SC, image_heatmap_sc)):
            made = _output_build(image, kind, build)
            if made is None:
                continue
            if not configured:
                DicomOutput.objects.filter(id=made[0].id).update(
                    error="No DICOM destination is configured for this hospital.")
                continue
            batch.append(made)
            if len(batch) >= DELIVERY_BATCH:
                _send_batch(config, batch, totals)
                batch = []
    if batch:
        _send_batch(config, batch, totals)
    return totals


def _output_build(image: Image, kind: str,
                  build: Any) -> tuple[DicomOutput, Dataset] | None:
    """The object to send (its output row made or updated), or None: sent already, nothing to
    make (no heatmap for an image not classified), or it cannot be made (recorded)."""
    output = DicomOutput.objects.filter(image=image, kind=kind).first()
    if output is not None and output.state == DicomOutput.State.SENT:
        return None
    try:
        dataset = build(image)
    except Exception as exc:  # a header we cannot use: say so on the image
        logger.exception("Could not build the %s of image %s", kind, image.id)
        DicomOutput.objects.update_or_create(
            image=image, kind=kind,
            defaults={"sop_instance_uid": f"invalid-{kind}-{image.id}"[:64],
                      "state": DicomOutput.State.FAILED,
                      "error": f"could not build: {exc}"[:2000]})
        return None
    if dataset is None:
        return None
    output, _ = DicomOutput.objects.update_or_create(
        image=image, kind=kind, defaults={"sop_instance_uid": str(dataset.SOPInstanceUID)})
    return output, dataset


def _send_batch(config: DicomConfig, batch: list[tuple[DicomOutput, Dataset]],
                totals: dict[str, int]) -> None:
    from . import delivery

    outcomes = delivery.send(config, [dataset for _, dataset in batch])
    now = timezone.now()
    for (output, _), outcome in zip(batch, outcomes, strict=True):
        key = "sent" if outcome.ok else "failed"
        totals[key] += 1
        DicomOutput.objects.filter(id=output.id).update(
            state=DicomOutput.State.SENT if outcome.ok else DicomOutput.State.FAILED,
            error=outcome.error[:2000], sent_at=now if outcome.ok else None,
            destination=outcome.destination, attempts=output.attempts + 1)


def study_outputs_mark_unreachable(*, study_id: UUID, error: str, final: bool) -> None:
    """Record a delivery attempt that could not reach the destination."""
    outputs = DicomOutput.objects.filter(image__study_id=study_id).exclude(
        state=DicomOutput.State.SENT)
    for output in outputs:
        DicomOutput.objects.filter(id=output.id).update(
            attempts=output.attempts + 1, error=error[:2000],
            state=DicomOutput.State.FAILED if final else DicomOutput.State.PENDING)
