"""The ten real radiographs in shared/data/dicom: each accepted and shown correctly, or
rejected with a clear reason; out-of-population images are flagged, never silently scored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from backend.studies.ingest import population_flags
from backend.studies.models import Image
from tests.conftest import DICOM_DIR, full_size_jpeg

pytestmark = pytest.mark.django_db

EXPECTED_FLAGS = {
    "cr-chest-pa-jpeg-baseline.dcm": ["adult_patient"],
    "cr-chest-pa-jpeg-baseline-monochrome1.dcm": ["adult_patient"],
    "cr-chest-pa-monochrome1-j2k-lossy.dcm": [],
    "cr-chest-pa-monochrome1-jpegls-nearlossless.dcm": [],
    "cr-chest-monochrome1-raw-no-meta.dcm": [],
    "dx-chest-implicit-vr-uncompressed.dcm": ["body_part_unknown", "adult_patient"],
    "cr-hip-monochrome2-jpeg-lossless.dcm": ["non_chest:hip"],
    "cr-hip-monochrome2-rle.dcm": ["non_chest:hip"],
    "cr-extremity-monochrome1-j2k-lossless.dcm": ["non_chest:extremity"],
}
UNDECODABLE = "cr-hip-jpeg-extended-undecodable.dcm"


@pytest.fixture(autouse=True)
def _no_broker(no_broker: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return no_broker


@pytest.fixture(scope="module")
def dicom_files() -> list[Path]:
    files = sorted(DICOM_DIR.glob("*.dcm"))
    if len(files) != 10:
        pytest.skip(f"the ten DICOM test files are not at {DICOM_DIR}")
    return files


def upload(api: Any, paths: list[Path]) -> dict[str, Any]:
    parts = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    response = api.post("/api/studies/", {"files": parts, "name": "dicom edge cases"},
                        format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def test_every_real_dicom_is_accepted_or_rejected_and_flagged(
    api: Any, dicom_files: list[Path]
) -> None:
    uploaded = upload(api, dicom_files)
    accepted = {a["original_name"]: a for a in uploaded["accepted"]}
    assert set(accepted) == set(EXPECTED_FLAGS)
    (rejection,) = uploaded["rejected"]
    assert rejection["name"] == UNDECODABLE
    assert "cannot decode DICOM pixel data" in rejection["reason"]
    assert "JPEG Extended" in rejection["reason"]
    assert all(a["format"] == "dicom" and a["status"] == "queued" for a in accepted.values())
    # Out-of-population images are flagged, visibly, in what the API returns.
    detail = api.get(f"/api/studies/{uploaded['study']['id']}/").json()
    flags = {image["original_name"]: image["flags"] for image in detail["images"]}
    assert flags == EXPECTED_FLAGS


def test_only_the_allow_listed_dicom_attributes_are_stored(
    api: Any, dicom_files: list[Path]
) -> None:
    upload(api, [p for p in dicom_files if p.name == "cr-chest-pa-jpeg-baseline.dcm"])
    image = Image.objects.get(original_name="cr-chest-pa-jpeg-baseline.dcm")
    assert image.modality == "CR"
    assert image.view_position == "PA"
    assert image.body_part == "CHEST"
    assert image.patient_age == "62"
    assert image.patient_sex == "M"
    assert image.study_instance_uid.startswith("1.2.276.0.7230010")
    assert image.sop_instance_uid.startswith("1.2.276.0.7230010")
    dicom_columns = {f.name for f in Image._meta.get_fields()} - {
        "id", "study", "file", "original_name", "sha256", "size_bytes", "format", "width",
        "height", "status", "error", "attempts", "flags", "notes", "created_at", "started_at",
        "finished_at", "result", "working_file",
        "received_instance", "dicom_outputs",  # relations from backend.dicomnet
    }
    assert dicom_columns == {"study_instance_uid", "sop_instance_uid", "dicom_accession_number",
                             "view_position", "modality", "body_part", "patient_age",
                             "patient_sex"}


def preview(api: Any, uploaded: dict[str, Any], name: str) -> np.ndarray:
    image_id = next(a["id"] for a in uploaded["accepted"] if a["original_name"] == name)
    response = api.get(f"/api/images/{image_id}/preview/")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    png = b"".join(response.streaming_content)
    return np.asarray(PILImage.open(io.BytesIO(png)), dtype=np.float32) / 255


def test_monochrome1_preview_is_shown_inverted(api: Any, dicom_files: list[Path]) -> None:
    # The two files hold identical pixel bytes; only PhotometricInterpretation differs. In
    # MONOCHROME1 low values are white, so the correct rendering is the negative of the
    # MONOCHROME2 one (bone bright in both conventions once decoded).
    pair = [p for p in dicom_files if p.name.startswith("cr-chest-pa-jpeg-baseline")]
    uploaded = upload(api, pair)
    mono2 = preview(api, uploaded, "cr-chest-pa-jpeg-baseline.dcm")
    mono1 = preview(api, uploaded, "cr-chest-pa-jpeg-baseline-monochrome1.dcm")
    assert mono2.shape == mono1.shape == (1024, 1024)
    assert np.corrcoef(mono2.ravel(), mono1.ravel())[0, 1] < -0.95
    assert np.abs((1 - mono2) - mono1).mean() < 0.02


def test_preview_of_large_dicom_is_downscaled_png_cached_in_storage(
    api: Any, dicom_files: list[Path]
) -> None:
    uploaded = upload(api, [p for p in dicom_files
                            if p.name == "cr-hip-monochrome2-jpeg-lossless.dcm"])
    from django.core.files.storage import default_storage

    from backend.studies.previews import PREVIEW_MAX_SIDE, preview_path

    pixels = preview(api, uploaded, "cr-hip-monochrome2-jpeg-lossless.dcm")
    assert max(pixels.shape) == PREVIEW_MAX_SIDE
    assert pixels.std() > 0.05  # an actual picture, not a blank frame
    image = Image.objects.get(original_name="cr-hip-monochrome2-jpeg-lossless.dcm")
    assert default_storage.exists(preview_path(image))


@pytest.mark.parametrize("fields, flags", [
    ({"body_part": "CHEST", "patient_age": "007Y"}, []),
    ({"body_part": "chest", "patient_age": "019Y"}, ["adult_patient"]),
    ({"patient_age": "81"}, ["adult_patient"]),
    ({"patient_age": "018M"}, []),
    ({"patient_age": "garbage"}, []),
    ({"body_part": "SKULL", "view_position": "LL"}, ["non_chest:skull", "lateral_view"]),
    ({"modality": "CT"}, ["unexpected_modality:ct"]),
])
def test_population_flags(fields: dict[str, str], flags: list[str]) -> None:
    assert population_flags(fields) == flags


def test_dicom_without_body_part_is_flagged_but_a_plain_jpeg_is_not() -> None:
    assert population_flags({}, fmt="dicom") == ["body_part_unknown"]
    assert population_flags({}, fmt="jpeg") == []


J2K = "cr-chest-pa-monochrome1-j2k-lossy.dcm"


def test_dicom_upload_stores_a_small_working_copy_without_dicom_attributes(
    api: Any, dicom_files: list[Path]
) -> None:
    from ml.preprocess import WORKING_COPY_SIDE, decode_image

    upload(api, [p for p in dicom_files if p.name == J2K])
    image = Image.objects.get(original_name=J2K)
    assert image.working_file.name.startswith(f"studies/{image.study_id}/working/")
    with image.working_file.open("rb") as handle:
        data = handle.read()
    copy = decode_image(data)
    assert copy.format == "jpeg" and min(copy.pixels.shape) == WORKING_COPY_SIDE
    assert copy.pixels.shape[0] / copy.pixels.shape[1] == pytest.approx(1955 / 1841, rel=0.01)
    # Pixels only: none of the DICOM's identifiers travel into the copy.
    assert b"DICM" not in data and image.sop_instance_uid.encode() not in data
    with image.file.open("rb") as handle:  # the original is kept as it came
        assert handle.read()[128:132] == b"DICM"


def test_small_jpeg_gets_no_working_copy_and_copies_can_be_turned_off(
    api: Any, dicom_files: list[Path], settings: Any, kermany_images: dict[str, list[Path]]
) -> None:
    upload(api, [kermany_images["normal"][0]])
    assert not Image.objects.get(original_name=kermany_images["normal"][0].name).working_file
    settings.WORKING_COPIES = False
    upload(api, [p for p in dicom_files if p.name == J2K])
    assert not Image.objects.get(original_name=J2K).working_file


def test_storage_failure_on_a_working_copy_leaves_no_file_and_no_study(
    user: Any, dicom_files: list[Path], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.files.storage import default_storage

    from backend.studies import services
    from backend.studies.models import Study

    real_save = default_storage.save
    saved: list[str] = []

    def save(name: str, content: Any, **kwargs: Any) -> str:
        if "/working/" in name and any("/working/" in n for n in saved):  # the second: full
            raise OSError(28, "No space left on device")
        stored = real_save(name, content, **kwargs)
        saved.append(stored)
        return stored

    monkeypatch.setattr(default_storage, "save", save)
    uploads = [SimpleUploadedFile(p.name, p.read_bytes()) for p in dicom_files
               if p.name in (J2K, "cr-hip-monochrome2-rle.dcm")]
    with pytest.raises(OSError, match="No space left"):
        services.study_create(user=user, uploads=uploads)
    assert len(saved) == 3  # original, its copy, the second original
    assert not any(default_storage.exists(name) for name in saved)
    assert not Study.objects.exists()


def test_full_size_jpeg_keeps_its_stored_size_and_gets_a_working_copy(
    api: Any, kermany_images: dict[str, list[Path]]
) -> None:
    from ml.preprocess import WORKING_COPY_SIDE, decode_image

    big = full_size_jpeg(kermany_images["pneumonia"][0])
    response = api.post("/api/studies/", {"files": [SimpleUploadedFile("big.jpg", big)]},
                        format="multipart")
    assert response.status_code == 201, response.content
    image = Image.objects.get(original_name="big.jpg")
    assert (image.width, image.height) == (1800, 1500)  # not the reduced decode's size
    with image.working_file.open("rb") as handle:
        assert decode_image(handle.read()).pixels.shape == (WORKING_COPY_SIDE, 614)
