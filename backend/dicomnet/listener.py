"""The DICOM listener (pynetdicom): C-ECHO, and C-STORE of CR, DX and secondary capture.

The calling AE title names the hospital (`CallingAeTitle`); any other caller is rejected at
association (A-ASSOCIATE-RJ, "calling AE title not recognised"). A C-STORE is written to
storage as received and answered at once; nothing is decoded here. A sweeper thread closes
studies quiet for DICOM_STUDY_QUIET_S by sending a task to the `default` queue, which ingests
them (decoding, like an upload) and queues them for classification.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from . import selectors, services

logger = logging.getLogger(__name__)

# Every transfer syntax the upload decoder reads (ml.preprocess.decode_image).
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
    JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
    RLELossless,
]
IMAGE_STORAGE = [
    ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage,
]
# Accepted and discarded: a PACS that routes what it receives back to us (our own reports
# included) gets a success and no loop; reports are never ingested.
SR_STORAGE = [ComprehensiveSRStorage, EnhancedSRStorage, BasicTextSRStorage]
REPORT_CLASSES = {str(uid) for uid in SR_STORAGE}

# C-STORE statuses (PS3.4 B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210


class HospitalAE(AE):
    """An AE whose allowed calling AE titles are read from the database at each association.

    pynetdicom accepts any caller when the list is empty; a list with an impossible title keeps
    every caller out while no hospital has configured one.
    """

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        try:
            from .models import CallingAeTitle

            titles = list(CallingAeTitle.objects.values_list("ae_title", flat=True))
        except Exception:
            logger.exception("Could not read the allowed calling AE titles")
            titles = []
        finally:
            close_old_connections()
        return titles or ["\x00nobody"]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        pass  # the list lives in the database


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def handle_store(event: Any) -> int | Dataset:
    """Store one instance and answer; never raises (pynetdicom would answer 0xC211)."""
    calling = event.assoc.requestor.ae_title.strip()
    try:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
    except Exception as exc:
        logger.warning("Undecodable C-STORE from %s: %s", calling, exc)
        return _status(CANNOT_UNDERSTAND, "cannot decode the data set")
    if str(event.request.AffectedSOPClassUID) in REPORT_CLASSES:
        return SUCCESS
    missing = [k for k in ("StudyInstanceUID", "SOPInstanceUID") if not dataset.get(k)]
    if missing:
        return _status(DATASET_MISMATCH, f"missing {', '.join(missing)}")
    if "SOPClassUID" not in dataset:
        dataset.SOPClassUID = event.request.AffectedSOPClassUID
    try:
        hospital = selectors.hospital_for_calling_ae(calling)
        if hospital is None:  # its title was removed while the association was open
            return _status(OUT_OF_RESOURCES, "calling AE title no longer allowed")
        received = services.instance_receive(
            hospital_id=hospital.id, calling_ae_title=calling, dataset=dataset,
            encoded=event.encoded_dataset())
    except Exception:
        logger.exception("Could not store an instance from %s", calling)
        close_old_connections()
        return _status(OUT_OF_RESOURCES, "could not store the instance")
    if not received.stored:
        logger.info("Instance %s from %s not stored: %s", dataset.SOPInstanceUID, calling,
                    received.reason)
    return SUCCESS


def _close_connections(event: Any) -> None:
    # Each association runs in its own thread with its own database connection.
    connections.close_all()


class Sweeper(threading.Thread):
    """Sends the close task of each study quiet for DICOM_STUDY_QUIET_S (state in the database,
    so a restarted listener picks up where the last one stopped)."""

    def __init__(self, quiet_s: float) -> None:
        super().__init__(name="dicom-sweeper", daemon=True)
        self.quiet_s = quiet_s
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(0.2, min(2.0, self.quiet_s / 3))
        while not self.stopped.wait(interval):
            try:
                for received_id in services.received_studies_due(quiet_s=self.quiet_s):
                    services.received_study_close_send(received_study_id=received_id)
            except Exception:
                logger.exception("DICOM sweeper: could not close quiet studies")
            finally:
                close_old_connections()


def build_ae() -> HospitalAE:
    ae = HospitalAE(ae_title=settings.DICOM_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT_S
    ae.add_supported_context(Verification)
    for sop_class in IMAGE_STORAGE:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    for sop_class in SR_STORAGE:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                             DeflatedExplicitVRLittleEndian])
    return ae


HANDLERS = [
    (evt.EVT_C_STORE, handle_store),
    (evt.EVT_RELEASED, _close_connections),
    (evt.EVT_ABORTED, _close_connections),
]


def serve(bind: str, port: int, quiet_s: float) -> None:
    """Listen until interrupted."""
    sweeper = Sweeper(quiet_s)
    sweeper.start()
    ae = build_ae()
    try:
        ae.start_server((bind, port), block=True, evt_handlers=HANDLERS)
    finally:
        sweeper.stopped.set()
        ae.shutdown()
