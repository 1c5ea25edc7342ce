"""End to end with real software: storescu (the modality) sends the shared DICOM files to the
listener, a real Celery worker classifies them, and the SRs and heatmaps land in a real
Orthanc (the PACS), in the source studies; Orthanc down: delivery retries and completes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.backend.dicomnet.conftest import Listener, Orthanc, echo, store, wait_until
from tests.conftest import client_for
from tests.worker.conftest import launch_worker, stop_worker, wait_ready

pytestmark = pytest.mark.django_db(transaction=True)
MODALITY = "TESTMODALITY"


@pytest.fixture
def worker(db_name: str, tiny_checkpoint: Path, tmp_path: Path,
           clean_redis: None) -> Iterator[subprocess.Popen]:
    log = tmp_path / "worker.log"
    process = launch_worker(log, db_name=db_name, checkpoint=tiny_checkpoint,
                            DICOM_DELIVERY_BACKOFF_S="1", DICOM_NETWORK_TIMEOUT_S="5")
    wait_ready(log)
    yield process
    stop_worker(process)
    print(log.read_text()[-4000:])


@pytest.fixture
def configured(user: Any, orthanc: Orthanc) -> Any:
    response = client_for(user).put("/api/hospital/dicom/", {
        "calling_ae_titles": [MODALITY],
        "destination": {"ae_title": orthanc.ae_title, "host": "127.0.0.1",
                        "port": orthanc.dicom_port},
        "dicomweb_url": None}, format="json")
    assert response.status_code == 200, response.content
    return user


def expected_outputs() -> tuple[int, int]:
    """SRs: one per finished image; heatmaps: one per classified image (from our DB)."""
    from backend.dicomnet.services import image_findings
    from backend.studies.models import Image

    images = list(Image.objects.filter(status__in=Image.FINAL_STATUSES).select_related("result"))
    return len(images), sum(1 for i in images if image_findings(i).analysed)


def pacs_counts(orthanc: Orthanc) -> dict[str, int]:
    counts = {"SR": 0, "OT": 0}
    for series in orthanc.series_by_modality():
        if series["modality"] in counts:
            counts[series["modality"]] += series["instances"]
    return counts


def all_studies_finished() -> bool:
    from backend.dicomnet.models import ReceivedInstance
    from backend.studies.models import Image

    return (not ReceivedInstance.objects.filter(ingested=False).exists()
            and Image.objects.exists()
            and not Image.objects.exclude(status__in=Image.FINAL_STATUSES).exists())


def test_results_of_received_studies_land_in_the_source_studies_once(
        configured: Any, listener: Listener, worker: Any, orthanc: Orthanc,
        dicom_files: list[Path]) -> None:
    from backend.dicomnet.models import DicomOutput, ReceivedInstance
    from backend.studies.models import Image

    assert echo(listener.port, "STRANGER").returncode != 0  # refused at association
    sent = store(listener.port, MODALITY, dicom_files)
    assert sent.returncode == 0, sent.stderr.decode()[-2000:]
    wait_until(all_studies_finished, timeout=180)
    srs, heatmaps = expected_outputs()
    headers = [pydicom.dcmread(f, force=True, stop_before_pixels=True) for f in dicom_files]
    assert srs == len({str(h.SOPInstanceUID) for h in headers})  # every received image
    wait_until(lambda: pacs_counts(orthanc) == {"SR": srs, "OT": heatmaps}, timeout=120)
    # In the source studies, in series of their own.
    source_studies = {str(h.StudyInstanceUID) for h in headers}
    ours = [s for s in orthanc.series_by_modality() if s["modality"] in ("SR", "OT")]
    assert {s["study_uid"] for s in ours} <= source_studies
    assert not ({s["series_uid"] for s in ours}
                & {str(h.get("SeriesInstanceUID", "")) for h in headers})
    # Recorded as sent once the association is released (just after Orthanc has them).
    wait_until(lambda: DicomOutput.objects.filter(state="sent").count() == srs + heatmaps,
               timeout=30)
    # The delivery state is in the API.
    image = Image.objects.filter(dicom_outputs__kind="sr").first()
    body = client_for(configured).get(f"/api/studies/{image.study_id}/").json()
    assert body["dicom_delivery"]["state"] == "sent"
    assert any(i["dicom_delivery"] and i["dicom_delivery"]["sr"]["state"] == "sent"
               for i in body["images"])

    # Sending the same files again classifies nothing twice and duplicates nothing.
    images_before = Image.objects.count()
    answered = listener.resends_answered()
    again = store(listener.port, MODALITY, dicom_files)
    assert again.returncode == 0
    wait_until(lambda: listener.resends_answered() >= answered + len(dicom_files), timeout=30)
    assert not ReceivedInstance.objects.filter(ingested=False).exists()  # nothing new to ingest
    assert Image.objects.count() == images_before
    assert pacs_counts(orthanc) == {"SR": srs, "OT": heatmaps}


def test_delivery_retries_while_the_pacs_is_down_and_completes_when_it_returns(
        configured: Any, listener: Listener, worker: Any, orthanc: Orthanc,
        dicom_files: list[Path]) -> None:
    from backend.dicomnet.models import DicomOutput

    orthanc.stop()
    source = next(f for f in dicom_files if f.name.startswith("dx-chest"))
    sent = store(listener.port, MODALITY, [source])
    assert sent.returncode == 0, sent.stderr
    # Attempts fail (nothing listens on the PACS port) and the objects stay pending.
    wait_until(lambda: DicomOutput.objects.filter(state="pending", attempts__gte=2).exists(),
               timeout=180)
    assert not DicomOutput.objects.filter(state="sent").exists()
    orthanc.start()
    wait_until(lambda: pacs_counts(orthanc)["SR"] == 1, timeout=120)
    wait_until(lambda: not DicomOutput.objects.exclude(state="sent").exists(), timeout=30)


def test_results_go_by_stow_rs_to_a_dicomweb_url(user: Any, orthanc: Orthanc, listener: Listener,
                                                 worker: Any, dicom_files: list[Path]) -> None:
    from tests.backend.dicomnet.conftest import DICOMWEB_PLUGIN

    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
    response = client_for(user).put("/api/hospital/dicom/", {
        "calling_ae_titles": [MODALITY], "destination": None,
        "dicomweb_url": orthanc.dicomweb_url}, format="json")
    assert response.status_code == 200, response.content
    source = next(f for f in dicom_files if f.name.startswith("dx-chest"))
    assert store(listener.port, MODALITY, [source]).returncode == 0
    wait_until(lambda: pacs_counts(orthanc)["SR"] == 1, timeout=180)
    from backend.dicomnet.models import DicomOutput

    wait_until(lambda: DicomOutput.objects.filter(state="sent").exists(), timeout=30)
    assert DicomOutput.objects.first().destination == orthanc.dicomweb_url
