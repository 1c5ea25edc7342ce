"""The hospital's DICOM configuration, the SR / SC downloads and the FHIR bundle, through the
API; the objects are checked with dciodvfy (dicom3tools) and fhir.resources."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from django.core.files.base import ContentFile

from backend.studies.models import Image, Result, Study
from support import DICOM_DIR
from tests.conftest import client_for, make_user

CONFIG = {"calling_ae_titles": ["CR_ROOM_1", "PACS"],
          "destination": {"ae_title": "ORTHANC", "host": "pacs.local", "port": 4242},
          "dicomweb_url": None}


def test_admin_configures_dicom_and_the_change_is_audited(api: Any, user: Any) -> None:
    from backend.audit.models import AuditEvent

    assert api.get("/api/hospital/dicom/").json() == {
        "calling_ae_titles": [], "destination": None, "dicomweb_url": None}
    response = api.put("/api/hospital/dicom/", CONFIG, format="json")
    assert response.status_code == 200, response.content
    assert api.get("/api/hospital/dicom/").json() == CONFIG
    event = AuditEvent.objects.get(action="hospital.settings_changed")
    assert event.detail["settings"] == "dicom"
    assert event.user == user
    assert event.detail["after"]["calling_ae_titles"] == ["CR_ROOM_1", "PACS"]
    assert event.detail["before"]["destination"] is None


def test_clinicians_cannot_read_or_change_the_dicom_configuration(db: None) -> None:
    clinician = client_for(make_user("carol", "St. Mary", role="clinician"))
    assert clinician.get("/api/hospital/dicom/").status_code == 403
    assert clinician.put("/api/hospital/dicom/", CONFIG, format="json").status_code == 403


def test_an_ae_title_cannot_name_two_hospitals(api: Any, other_api: Any) -> None:
    assert api.put("/api/hospital/dicom/", CONFIG, format="json").status_code == 200
    response = other_api.put("/api/hospital/dicom/", {**CONFIG, "destination": None},
                             format="json")
    assert response.status_code == 400
    assert "CR_ROOM_1" in str(response.json())


@pytest.mark.parametrize("bad", [
    {**CONFIG, "calling_ae_titles": ["A" * 17]},
    {**CONFIG, "calling_ae_titles": ["BACK\\SLASH"]},
    {**CONFIG, "destination": {"ae_title": "X", "host": "h", "port": 70000}},
    {**CONFIG, "dicomweb_url": "not a url"},
])
def test_invalid_configurations_are_refused_with_a_reason(api: Any, bad: dict) -> None:
    response = api.put("/api/hospital/dicom/", bad, format="json")
    assert response.status_code == 400
    assert response.json()


@pytest.fixture
def dicom_study(user: Any) -> Study:
    """A finished study of two real DICOM images: one classified, one out of scope."""
    study = Study.objects.create(hospital=user.hospital, created_by=user, name="cxr")
    files = [DICOM_DIR / "dx-chest-implicit-vr-uncompressed.dcm",
             DICOM_DIR / "cr-hip-monochrome2-rle.dcm"]
    for i, path in enumerate(files):
        if not path.exists():
            pytest.skip(f"{path} not found")
        header = pydicom.dcmread(path, stop_before_pixels=True)
        image = Image(study=study, original_name=path.name, sha256=f"{i:064d}",
                      size_bytes=path.stat().st_size, format="dicom", width=64, height=64,
                      status="done", study_instance_uid=str(header.StudyInstanceUID),
                      sop_instance_uid=str(header.SOPInstanceUID))
        image.file.save("x", ContentFile(path.read_bytes()), save=False)
        image.save()
        result = Result(image=image, label="pneumonia" if i == 0 else "out_of_scope",
                        probabilities={"normal": 0.1, "pneumonia": 0.9}, score=0.9,
                        threshold=0.758, etiology_probabilities={"bacterial": 0.7, "viral": 0.2,
                                                                 "normal": 0.1},
                        model_name="pneumonet-binary", model_version="1.2.0")
        if i == 0:
            import numpy as np

            from ml.cam import levels_png

            heat = np.zeros((64, 64), np.uint8)
            heat[16:40, 20:44] = 230
            result.heatmap.save("heatmap.png", ContentFile(levels_png(heat)), save=False)
        result.save()
    from backend.studies.services import study_refresh_status

    study_refresh_status(study_id=study.id)
    return study


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    binary = shutil.which("dciodvfy")
    if not binary:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    out = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_sr_download_is_a_valid_tid1500_report_in_the_source_study(
        api: Any, dicom_study: Study, tmp_path: Path) -> None:
    image = dicom_study.images.get(original_name__startswith="dx-")
    response = api.get(f"/api/images/{image.id}/sr.dcm")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    data = b"".join(response.streaming_content) if response.streaming else response.content
    assert dciodvfy_errors(data, tmp_path) == []
    sr = pydicom.dcmread(io.BytesIO(data))
    source = pydicom.dcmread(DICOM_DIR / "dx-chest-implicit-vr-uncompressed.dcm",
                             stop_before_pixels=True)
    assert sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    text = str(sr)
    for expected in ("Pneumonia", "Present", "Calibrated probability of pneumonia",
                     "Decision threshold for pneumonia", "Probability of bacterial pneumonia",
                     "Algorithm Name", "pneumonet-binary", "1.2.0",
                     str(source.SOPInstanceUID)):
        assert expected in text, expected
    # Deterministic: the same image gives the same UIDs (a re-send never duplicates).
    again = pydicom.dcmread(io.BytesIO(api.get(f"/api/images/{image.id}/sr.dcm").content))
    assert again.SOPInstanceUID == sr.SOPInstanceUID


def test_out_of_scope_image_gets_an_sr_saying_why_and_no_heatmap(
        api: Any, dicom_study: Study, tmp_path: Path) -> None:
    image = dicom_study.images.get(original_name__startswith="cr-hip")
    Result.objects.filter(image=image).update(label="")
    if hasattr(Result, "scope"):  # the scope gate's fields, where present
        Result.objects.filter(image=image).update(scope="out_of_scope",
                                                  scope_reason="not_chest_radiograph")
    response = api.get(f"/api/images/{image.id}/sr.dcm")
    assert response.status_code == 200
    assert dciodvfy_errors(response.content, tmp_path) == []
    text = str(pydicom.dcmread(io.BytesIO(response.content)))
    assert "Reason the image was not analysed" in text
    assert "Calibrated probability" not in text
    assert api.get(f"/api/images/{image.id}/sc.dcm").status_code == 404


def test_heatmap_sc_is_valid_marked_not_for_diagnosis_and_in_the_source_study(
        api: Any, dicom_study: Study, tmp_path: Path) -> None:
    image = dicom_study.images.get(original_name__startswith="dx-")
    response = api.get(f"/api/images/{image.id}/sc.dcm")
    assert response.status_code == 200
    assert dciodvfy_errors(response.content, tmp_path) == []
    sc = pydicom.dcmread(io.BytesIO(response.content))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == image.study_instance_uid
    assert sc.PhotometricInterpretation == "RGB"
    pixels = sc.pixel_array
    # Colour where the heat is, grey elsewhere: the map is over the radiograph.
    assert (pixels[..., 0].astype(int) - pixels[..., 2].astype(int)).max() > 60


def test_other_hospitals_cannot_download_the_objects(other_api: Any, dicom_study: Study) -> None:
    image = dicom_study.images.first()
    assert other_api.get(f"/api/images/{image.id}/sr.dcm").status_code == 404
    assert other_api.get(f"/api/studies/{dicom_study.id}/fhir/").status_code == 404


def test_fhir_bundle_is_valid_r4_with_a_report_and_an_observation_per_image(
        api: Any, dicom_study: Study) -> None:
    from fhir.resources.R4B.bundle import Bundle

    response = api.get(f"/api/studies/{dicom_study.id}/fhir/")
    assert response.status_code == 200
    bundle = Bundle.model_validate(response.json())
    kinds = [entry.resource.__resource_type__ for entry in bundle.entry]
    assert kinds.count("DiagnosticReport") == 1
    assert kinds.count("Observation") == 2
    assert kinds.count("Device") == 1
    report = bundle.entry[0].resource
    assert report.status == "final"
    assert len(report.result) == 2
    observations = [e.resource for e in bundle.entry
                    if e.resource.__resource_type__ == "Observation"]
    analysed = [o for o in observations if o.valueCodeableConcept is not None]
    assert analysed[0].valueCodeableConcept.coding[0].code == "52101004"  # present
    assert analysed[0].device.reference.startswith("urn:uuid:")
