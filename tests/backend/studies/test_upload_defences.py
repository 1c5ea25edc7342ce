"""Upload limits and defences, each exercised with a real crafted file."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from backend.studies.models import Image, Study

from .conftest import jpeg_bytes, png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(no_broker: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return no_broker


def upload(api: Any, *files: tuple[str, bytes], **fields: str) -> Any:
    parts = [SimpleUploadedFile(name, data) for name, data in files]
    return api.post("/api/studies/", {"files": parts, **fields}, format="multipart")


def reasons(response: Any) -> dict[str, str]:
    return {r["name"]: r["reason"] for r in response.json()["rejected"]}


def accepted_names(response: Any) -> list[str]:
    return sorted(a["original_name"] for a in response.json()["accepted"])


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]],
             compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 1 KB PNG whose header declares 10 gigapixels (8-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # a few rows; the rest would follow
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def jpeg_bomb() -> bytes:
    """A small valid JPEG whose SOF header is patched to claim 60000 x 60000 pixels."""
    data = bytearray(jpeg_bytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60_000, 60_000)
    return bytes(data)


def test_file_over_the_size_limit_is_rejected_and_its_neighbour_kept(
    api: Any, settings: Any
) -> None:
    settings.MAX_UPLOAD_FILE_BYTES = 5_000
    big = png_bytes((200, 200), seed=1)
    assert len(big) > 5_000
    response = upload(api, ("big.png", big), ("small.png", png_bytes(seed=2)))
    assert response.status_code == 201
    assert "limit" in reasons(response)["big.png"]
    assert accepted_names(response) == ["small.png"]


def test_more_files_than_a_study_may_hold_is_refused(api: Any, settings: Any) -> None:
    settings.MAX_FILES_PER_STUDY = 2
    response = upload(api, *[(f"{i}.png", png_bytes(seed=i)) for i in range(3)])
    assert response.status_code == 400
    assert "at most 2 files" in response.json()["rejected"][0]["reason"]
    assert Study.objects.count() == 0


def test_zip_members_beyond_the_study_limit_are_rejected_individually(
    api: Any, settings: Any
) -> None:
    settings.MAX_FILES_PER_STUDY = 2
    archive = make_zip([(f"{i}.png", png_bytes(seed=i)) for i in range(3)])
    response = upload(api, ("batch.zip", archive))
    assert response.status_code == 201
    assert accepted_names(response) == ["batch.zip/0.png", "batch.zip/1.png"]
    assert "at most 2 files" in reasons(response)["batch.zip/2.png"]


@pytest.mark.parametrize("name, bomb", [("bomb.png", png_bomb), ("bomb.jpg", jpeg_bomb)])
def test_decompression_bomb_image_is_rejected_from_its_header(
    api: Any, name: str, bomb: Any
) -> None:
    data = bomb()
    assert len(data) < 100_000
    response = upload(api, (name, data), ("ok.png", png_bytes()))
    assert response.status_code == 201
    assert "too large" in reasons(response)[name]
    assert accepted_names(response) == ["ok.png"]


def test_zip_bomb_with_extreme_compression_ratio_is_rejected(api: Any) -> None:
    archive = make_zip([("zeros.png", b"\x00" * 4_000_000), ("real.png", png_bytes())])
    assert len(archive) < 50_000
    response = upload(api, ("bomb.zip", archive))
    assert "compression ratio" in reasons(response)["bomb.zip/zeros.png"]
    assert accepted_names(response) == ["bomb.zip/real.png"]


def test_zip_whose_total_expanded_size_exceeds_the_cap_is_rejected(
    api: Any, settings: Any
) -> None:
    settings.MAX_ZIP_UNCOMPRESSED_BYTES = 20_000
    # Compressible (2:1, far below the ratio cap) so the archive itself is under 20 000 bytes.
    entries = [(f"{i}.dcm", bytes(range(256)) * 20 + b"\x00" * 5_000) for i in range(3)]
    archive = make_zip(entries)
    assert len(archive) < 20_000 < sum(len(d) for _, d in entries)
    response = upload(api, ("large.zip", archive))
    assert response.status_code == 400
    assert "would expand to" in reasons(response)["large.zip"]


def test_zip_with_too_many_entries_is_rejected(api: Any, settings: Any) -> None:
    settings.MAX_ZIP_ENTRIES = 2
    archive = make_zip([(f"{i}.png", png_bytes(seed=i)) for i in range(3)])
    response = upload(api, ("many.zip", archive))
    assert response.status_code == 400
    assert "holds 3 files; the limit is 2" in reasons(response)["many.zip"]


def test_zip_member_lying_about_its_size_is_not_expanded_past_it(api: Any) -> None:
    real = png_bytes((100, 100), seed=5)
    archive = bytearray(make_zip([("liar.png", real)]))
    # Central directory entry: uncompressed size at offset 24 claims 100 bytes.
    central = archive.index(b"PK\x01\x02")
    struct.pack_into("<I", archive, central + 24, 100)
    response = upload(api, ("liar.zip", bytes(archive)))
    assert response.status_code == 400
    assert "cannot extract" in reasons(response)["liar.zip/liar.png"]


@pytest.mark.parametrize("member", ["../../etc/evil.png", "/abs/evil.png", "a/../../evil.png",
                                    "..\\windows\\evil.png", "C:/evil.png"])
def test_zip_member_with_path_traversal_or_absolute_path_is_refused(
    api: Any, member: str
) -> None:
    info = zipfile.ZipInfo(member)
    archive = make_zip([(info, png_bytes(seed=1)), ("safe/ok.png", png_bytes(seed=2))])
    response = upload(api, ("evil.zip", archive))
    assert response.status_code == 201
    rejected = reasons(response)
    assert len(rejected) == 1
    (reason,) = rejected.values()
    assert "path" in reason
    assert accepted_names(response) == ["evil.zip/safe/ok.png"]
    stored = Image.objects.get().file.name
    assert ".." not in stored and stored.startswith("studies/")


def test_zip_with_nested_folders_ignores_macos_metadata_and_directories(api: Any) -> None:
    archive = make_zip([
        ("patient/", b""),
        ("patient/day1/a.png", png_bytes(seed=1)),
        ("patient/day2/b.jpg", jpeg_bytes(seed=2)),
        ("__MACOSX/patient/day1/._a.png", b"\x00\x05\x16\x07 resource fork"),
        ("patient/.DS_Store", b"Bud1 junk"),
    ])
    response = upload(api, ("export.zip", archive))
    assert response.status_code == 201, response.content
    assert accepted_names(response) == ["export.zip/patient/day1/a.png",
                                        "export.zip/patient/day2/b.jpg"]
    assert response.json()["rejected"] == []


def test_nested_zip_and_corrupt_zip_are_rejected_with_reasons(api: Any) -> None:
    inner = make_zip([("a.png", png_bytes(seed=1))])
    outer = make_zip([("inner.zip", inner), ("b.png", png_bytes(seed=2))],
                     compression=zipfile.ZIP_STORED)
    corrupt = make_zip([("c.png", png_bytes(seed=3))])[:-30]
    response = upload(api, ("outer.zip", outer), ("corrupt.zip", corrupt))
    rejected = reasons(response)
    assert "nested archives" in rejected["outer.zip/inner.zip"]
    assert "not a readable ZIP" in rejected["corrupt.zip"]
    assert accepted_names(response) == ["outer.zip/b.png"]


def test_png_content_named_dcm_is_accepted_by_content_with_a_note(api: Any) -> None:
    response = upload(api, ("scan.dcm", png_bytes()))
    assert response.status_code == 201
    (image,) = response.json()["accepted"]
    assert image["format"] == "png"
    assert image["notes"] == ["content is PNG although the name ends in .dcm; read as PNG"]
    assert Image.objects.get().notes == image["notes"]


def test_text_named_png_and_empty_file_are_rejected(api: Any) -> None:
    response = upload(api, ("fake.png", b"just some text\n" * 10), ("empty.dcm", b""),
                      ("ok.png", png_bytes()))
    rejected = reasons(response)
    assert "unrecognised file format" in rejected["fake.png"]
    assert "empty" in rejected["empty.dcm"].lower()
    assert accepted_names(response) == ["ok.png"]


def test_duplicate_files_in_one_study_are_stored_once(api: Any) -> None:
    same = png_bytes(seed=7)
    archive = make_zip([("copy-in-zip.png", same)])
    response = upload(api, ("a.png", same), ("b.png", same), ("dup.zip", archive))
    assert accepted_names(response) == ["a.png"]
    rejected = reasons(response)
    assert set(rejected) == {"b.png", "dup.zip/copy-in-zip.png"}
    assert all("Duplicate" in r for r in rejected.values())
    assert Image.objects.count() == 1


def test_sixteen_bit_png_is_accepted(api: Any) -> None:
    response = upload(api, ("deep.png", png_bytes((80, 60), mode="I;16")))
    assert response.status_code == 201, response.content
    assert response.json()["accepted"][0]["width"] == 80


def test_upload_without_files_or_with_bad_priority_is_400(api: Any) -> None:
    assert api.post("/api/studies/", {"name": "x"}, format="multipart").status_code == 400
    response = upload(api, ("ok.png", png_bytes()), priority="whenever")
    assert response.status_code == 400
    assert "priority" in response.json()
    assert Study.objects.count() == 0


def test_name_accession_and_priority_are_stored(api: Any) -> None:
    response = upload(api, ("ok.png", png_bytes()), name="Ward 3", accession_number="ACC-9",
                      priority="urgent")
    study = Study.objects.get(id=response.json()["study"]["id"])
    assert (study.name, study.accession_number, study.priority) == ("Ward 3", "ACC-9", "urgent")


def test_rejected_upload_leaves_no_file_in_storage(api: Any, settings: Any) -> None:
    from pathlib import Path

    before = set(Path(settings.MEDIA_ROOT).rglob("*")) if Path(settings.MEDIA_ROOT).exists() \
        else set()
    response = upload(api, ("bad.png", b"nope" * 10))
    assert response.status_code == 400
    after = set(Path(settings.MEDIA_ROOT).rglob("*")) if Path(settings.MEDIA_ROOT).exists() \
        else set()
    assert {p for p in after - before if p.is_file()} == set()


def test_request_over_the_request_size_limit_is_refused_with_413(
    api: Any, settings: Any
) -> None:
    settings.MAX_UPLOAD_REQUEST_BYTES = 10_000
    response = upload(api, ("a.png", png_bytes((200, 200), seed=1)),
                      ("b.png", png_bytes(seed=2)))
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["detail"]
    assert Study.objects.count() == 0


def test_upload_decoded_several_files_at_once_gives_the_outcome_of_one_at_a_time(
    api: Any, settings: Any
) -> None:
    files = [(f"ok-{i}.png", png_bytes(seed=i)) for i in range(6)]
    files[2] = ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    files.append(("again.png", files[0][1]))  # a duplicate, found after parallel decoding
    files.append(("photo.jpg", jpeg_bytes()))
    outcomes = []
    for threads in (1, 4):
        settings.UPLOAD_DECODE_THREADS = threads
        response = upload(api, *files)
        assert response.status_code == 201
        body = response.json()
        outcomes.append(([a["original_name"] for a in body["accepted"]],
                         [(r["name"], r["reason"]) for r in body["rejected"]]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == ["ok-0.png", "ok-1.png", "ok-3.png", "ok-4.png", "ok-5.png",
                              "photo.jpg"]  # in upload order
    assert outcomes[1][1] == [
        ("broken.png", "corrupt or truncated PNG image: its data cannot be read as PNG"),
        ("again.png", "Duplicate of another file in this study (same SHA-256)."),
    ]


def test_parallel_decoding_holds_a_bounded_number_of_files(settings: Any) -> None:
    from backend.studies.services.uploads import _inspected

    settings.UPLOAD_DECODE_THREADS = 2
    pulled = 0

    def candidates() -> Any:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield f"f{i}.png", png_bytes(seed=i)

    outcomes = _inspected(candidates())
    first = next(outcomes)
    assert first.name == "f0.png"
    assert pulled <= 2 * 2 + 1  # not the whole upload in memory
    assert [o.name for o in outcomes] == [f"f{i}.png" for i in range(1, 50)]


@pytest.mark.parametrize(("configured", "cores", "threads"), [(0, 2, 2), (0, 16, 4), (3, 16, 3),
                                                              (0, 1, 1)])
def test_upload_decode_threads_default_to_the_cores_up_to_four(
    configured: int, cores: int, threads: int
) -> None:
    from backend.config.sizing import upload_decode_threads

    assert upload_decode_threads(configured, cores=cores) == threads
