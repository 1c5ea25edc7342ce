"""Ingest: an upload only stores; the worker decodes each image once, in its sandbox.

The ten real radiographs in shared/data/dicom: each classified and shown correctly, or
rejected with a clear reason; out-of-population images are flagged, never silently scored.
Crafted files (a codestream larger than its DICOM, decompression bombs, a file that needs more
memory or time than the sandbox allows) are rejected alone. The worker's pipeline runs in this
process with the tiny model (tests/worker/conftest.py, `runtime`).
"""

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
from support import dicom_bytes, dicom_header
from tests.conftest import DICOM_DIR, full_size_jpeg

pytestmark = pytest.mark.django_db(transaction=True)

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
def _in_process(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing goes to a broker: `upload` runs the worker's chunk in this process."""
    from backend.config.celery import app

    monkeypatch.setattr(app, "send_task", lambda *args, **kwargs: None)


def process(study_id: str, **tokens: Any) -> Any:
    from worker.inference import run_chunk
    from worker.runtime import process_runtime

    ids = [str(i) for i in Image.objects.filter(study_id=study_id).values_list("id", flat=True)]
    return run_chunk(process_runtime(), ids, **tokens)


@pytest.fixture(scope="module")
def dicom_files() -> list[Path]:
    files = sorted(DICOM_DIR.glob("*.dcm"))
    if len(files) != 10:
        pytest.skip(f"the ten DICOM test files are not at {DICOM_DIR}")
    return files


def upload(api: Any, paths: list[Path] | list[tuple[str, bytes]]) -> dict[str, Any]:
    """Upload, then run the worker's chunk on the study's images (as a worker would)."""
    parts = [SimpleUploadedFile(p.name, p.read_bytes()) if isinstance(p, Path)
             else SimpleUploadedFile(*p) for p in paths]
    response = api.post("/api/studies/", {"files": parts, "name": "dicom edge cases"},
                        format="multipart")
    assert response.status_code == 201, response.content
    uploaded = response.json()
    process(uploaded["study"]["id"])
    return uploaded


def test_every_real_dicom_is_accepted_or_rejected_and_flagged(
    api: Any, dicom_files: list[Path]
) -> None:
    uploaded = upload(api, dicom_files)
    # The upload stores everything that looks like a DICOM: nothing is decoded in the request.
    accepted = {a["original_name"]: a for a in uploaded["accepted"]}
    assert set(accepted) == {*EXPECTED_FLAGS, UNDECODABLE}
    assert uploaded["rejected"] == []
    assert all(a["format"] == "dicom" and a["status"] == "queued" and a["width"] is None
               for a in accepted.values())
    # The worker's decode rejects the undecodable one, with the reason, on the image and in
    # the study; out-of-population images are flagged, visibly, in what the API returns.
    detail = api.get(f"/api/studies/{uploaded['study']['id']}/").json()
    assert detail["status"] == "done_with_errors"
    assert detail["progress"]["rejected"] == 1 and detail["progress"]["done"] == 9
    images = {image["original_name"]: image for image in detail["images"]}
    rejected = images.pop(UNDECODABLE)
    assert rejected["status"] == "rejected"
    assert "cannot decode DICOM pixel data" in rejected["error"]
    assert "JPEG Extended" in rejected["error"]
    assert {name: image["flags"] for name, image in images.items()} == EXPECTED_FLAGS
    assert all(image["status"] == "done" and image["width"] > 0 for image in images.values())


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
        "finished_at", "result", "working_file", "sent_at", "claimed_by",
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
    from worker.runtime import process_runtime

    process_runtime().close_sandbox()  # its children were started with the old setting
    upload(api, [p for p in dicom_files if p.name == J2K])
    assert not Image.objects.get(original_name=J2K).working_file
    process_runtime().close_sandbox()


def test_a_full_disk_while_storing_a_working_copy_is_retried_not_failed(
    api: Any, dicom_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.files.storage import default_storage

    from worker.tasks import is_transient

    response = api.post("/api/studies/", {"files": [SimpleUploadedFile(
        J2K, (DICOM_DIR / J2K).read_bytes())]}, format="multipart")
    study_id = response.json()["study"]["id"]
    real_save = default_storage.save
    full = True

    def save(name: str, content: Any, **kwargs: Any) -> str:
        if full and "/working/" in name:
            raise OSError(28, "No space left on device")
        return real_save(name, content, **kwargs)

    monkeypatch.setattr(default_storage, "save", save)
    with pytest.raises(OSError, match="No space left") as caught:
        process(study_id, token="task:0")
    assert is_transient(caught.value)  # the task retries it with backoff
    image = Image.objects.get(study_id=study_id)
    assert image.status == "processing" and image.attempts == 0
    full = False
    # The retry re-claims what its previous try held: no attempt counted (no worker was lost).
    process(study_id, token="task:1", earlier_tokens=["task:0"])
    image.refresh_from_db()
    assert image.status == "done" and image.attempts == 0


def test_full_size_jpeg_keeps_its_stored_size_and_gets_a_working_copy(
    api: Any, kermany_images: dict[str, list[Path]]
) -> None:
    from ml.preprocess import WORKING_COPY_SIDE, decode_image

    big = full_size_jpeg(kermany_images["pneumonia"][0])
    upload(api, [("big.jpg", big)])
    image = Image.objects.get(original_name="big.jpg")
    assert (image.width, image.height) == (1800, 1500)  # not the reduced decode's size
    with image.working_file.open("rb") as handle:
        assert decode_image(handle.read()).pixels.shape == (WORKING_COPY_SIDE, 614)


def dicom_with_codestream(syntax: Any) -> bytes:
    """A valid 512 x 512 DICOM whose pixel data is compressed with `syntax`."""
    ds = dicom_header(512, 512)
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    rng = np.random.default_rng(0)
    ds.PixelData = rng.integers(0, 4095, (512, 512)).astype(np.uint16).tobytes()
    ds.compress(syntax)
    return dicom_bytes(ds)


def claiming_60000(data: bytes, syntax_name: str) -> bytes:
    """The same file with its codestream header patched to declare 60000 x 60000 pixels."""
    import struct

    patched = bytearray(data)
    if syntax_name == "j2k":
        siz = patched.index(b"\xff\x4f\xff\x51")
        struct.pack_into(">II", patched, siz + 8, 60_000, 60_000)  # Xsiz, Ysiz
    else:
        sof = patched.index(b"\xff\xf7")  # JPEG-LS SOF55
        struct.pack_into(">HH", patched, sof + 5, 60_000, 60_000)
    return bytes(patched)


@pytest.mark.parametrize("kind", ["j2k", "jls"])
def test_codestream_claiming_60000_pixels_inside_a_512_dicom_is_rejected_before_decoding(
    api: Any, kind: str
) -> None:
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    good = dicom_with_codestream(JPEG2000Lossless if kind == "j2k" else JPEGLSLossless)
    bad = claiming_60000(good, kind)
    uploaded = upload(api, [("good.dcm", good), ("crafted.dcm", bad)])
    assert {a["original_name"] for a in uploaded["accepted"]} == {"good.dcm", "crafted.dcm"}
    crafted = Image.objects.get(original_name="crafted.dcm")
    assert crafted.status == "rejected"
    assert "declares 60000x60000 pixels but the DICOM header 512x512" in crafted.error
    good_image = Image.objects.get(original_name="good.dcm")
    assert good_image.status == "done" and (good_image.width, good_image.height) == (512, 512)


def test_an_image_over_the_decoders_memory_limit_is_rejected_alone(
    api: Any, settings: Any
) -> None:
    from worker.runtime import process_runtime

    settings.DECODE_MEMORY_LIMIT_MB = 64
    process_runtime().close_sandbox()
    big = io.BytesIO()
    PILImage.new("I;16", (7000, 7000)).save(big, format="PNG")  # 49 MP: below MAX_PIXELS
    small = io.BytesIO()
    PILImage.new("L", (64, 64), 128).save(small, format="PNG")
    upload(api, [("huge.png", big.getvalue()), ("small.png", small.getvalue())])
    process_runtime().close_sandbox()
    huge = Image.objects.get(original_name="huge.png")
    assert huge.status == "rejected"
    assert "more memory than the limit of 64 MB" in huge.error
    assert Image.objects.get(original_name="small.png").status == "done"


def test_an_image_over_the_decoders_time_limit_is_rejected_and_the_next_decodes(
    api: Any, settings: Any, dicom_files: list[Path]
) -> None:
    from worker.runtime import process_runtime

    settings.DECODE_TIME_LIMIT_S = 0.001
    process_runtime().close_sandbox()
    upload(api, [p for p in dicom_files if p.name == J2K])
    image = Image.objects.get(original_name=J2K)
    assert image.status == "rejected" and "took longer than the limit" in image.error
    process_runtime().close_sandbox()
    settings.DECODE_TIME_LIMIT_S = 60
    response = api.post("/api/studies/", {"files": [SimpleUploadedFile(
        "again.dcm", (DICOM_DIR / J2K).read_bytes())]}, format="multipart")
    process(response.json()["study"]["id"])
    assert Image.objects.get(original_name="again.dcm").status == "done"
    process_runtime().close_sandbox()


@pytest.mark.parametrize("name", ["bomb.png", "bomb.jpg"])
def test_decompression_bomb_image_is_rejected_from_its_header(api: Any, name: str) -> None:
    from tests.backend.studies.test_upload_defences import jpeg_bomb, png_bomb

    data = png_bomb() if name.endswith(".png") else jpeg_bomb()
    assert len(data) < 100_000
    ok = io.BytesIO()
    PILImage.new("L", (64, 64), 90).save(ok, format="PNG")
    upload(api, [(name, data), ("ok.png", ok.getvalue())])
    bomb = Image.objects.get(original_name=name)
    assert bomb.status == "rejected" and "too large" in bomb.error
    assert Image.objects.get(original_name="ok.png").status == "done"


def test_png_named_dcm_gets_a_note_and_a_sixteen_bit_png_its_size(api: Any) -> None:
    scan, deep = io.BytesIO(), io.BytesIO()
    PILImage.new("L", (64, 64), 90).save(scan, format="PNG")
    PILImage.fromarray(np.arange(80 * 60, dtype=np.uint16).reshape(60, 80) * 13).save(
        deep, format="PNG")
    upload(api, [("scan.dcm", scan.getvalue()), ("deep.png", deep.getvalue())])
    scan_image = Image.objects.get(original_name="scan.dcm")
    assert scan_image.notes == ["content is PNG although the name ends in .dcm; read as PNG"]
    deep_image = Image.objects.get(original_name="deep.png")
    assert deep_image.status == "done" and (deep_image.width, deep_image.height) == (80, 60)
