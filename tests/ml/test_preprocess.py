"""ml.preprocess: decoding of JPEG/PNG/DICOM, rejection of bad input, tensor conversion."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ml.preprocess import (
    DICOM_METADATA_KEYS,
    MAX_PIXELS,
    WORKING_COPY_SIDE,
    ImageDecodeError,
    decode_image,
    needs_working_copy,
    preprocess,
    resize_pixels,
    sniff_format,
    to_model_tensor,
    working_copy_jpeg,
)
from support import dicom_header
from tests.conftest import full_size_jpeg

DICOM_FILES = [
    "cr-chest-pa-jpeg-baseline.dcm",
    "cr-chest-pa-jpeg-baseline-monochrome1.dcm",
    "cr-chest-pa-monochrome1-j2k-lossy.dcm",
    "cr-chest-pa-monochrome1-jpegls-nearlossless.dcm",
    "cr-chest-monochrome1-raw-no-meta.dcm",
    "dx-chest-implicit-vr-uncompressed.dcm",
    "cr-hip-monochrome2-jpeg-lossless.dcm",
    "cr-hip-monochrome2-rle.dcm",
    "cr-extremity-monochrome1-j2k-lossless.dcm",
    "cr-hip-jpeg-extended-undecodable.dcm",
]
UNDECODABLE = {"cr-hip-jpeg-extended-undecodable.dcm"}
SPEC = {"input_size": 64, "mean": [0.5], "std": [0.25], "channels": 1}
SPEC192 = {"input_size": 192, "mean": [0.5], "std": [0.25], "channels": 1}


def _bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.float64), (h, 1)).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# Pillow formats
# ------------------------------------------------------------------------------------------


def test_png_8bit_gray_exact_scaling() -> None:
    arr = _gradient()
    dec = decode_image(_bytes(Image.fromarray(arr), "PNG"))
    assert dec.format == "png"
    assert dec.pixels.dtype == np.float32 and dec.pixels.shape == (40, 60)
    np.testing.assert_allclose(dec.pixels, arr / 255.0, atol=1e-6)
    assert dec.metadata == {}


def test_png_16bit_is_stretched_to_unit_range() -> None:
    arr = (np.tile(np.linspace(100, 4000, 50), (30, 1))).astype(np.uint16)  # 12-bit data
    dec = decode_image(_bytes(Image.fromarray(arr), "PNG"))
    assert dec.pixels.min() == pytest.approx(0.0)
    assert dec.pixels.max() == pytest.approx(1.0)
    # monotonic left->right like the input
    assert np.all(np.diff(dec.pixels[0]) >= 0)


def test_rgb_jpeg_becomes_grayscale() -> None:
    rgb = np.stack([_gradient()] * 3, axis=-1)
    dec = decode_image(_bytes(Image.fromarray(rgb, "RGB"), "JPEG"))
    assert dec.format == "jpeg" and dec.pixels.ndim == 2
    assert np.abs(dec.pixels - _gradient() / 255.0).mean() < 0.02


def test_format_is_sniffed_from_bytes_not_name(tmp_path: Path) -> None:
    p = tmp_path / "actually_png.jpeg"
    p.write_bytes(_bytes(Image.fromarray(_gradient()), "PNG"))
    assert decode_image(p).format == "png"
    assert decode_image(str(p)).format == "png"


def test_real_kermany_jpeg(kermany_dir: Path) -> None:
    f = sorted((kermany_dir / "NORMAL").glob("*.jpeg"))[0]
    dec = decode_image(f)
    assert dec.format == "jpeg" and dec.pixels.shape == (224, 224)
    assert 0.0 <= dec.pixels.min() < dec.pixels.max() <= 1.0


def test_jpeg_luma_decode_equals_full_colour_decode_then_luma(kermany_dir: Path) -> None:
    """The luma-only JPEG decode (draft mode) gives the pixels the models were trained on."""
    files = sorted((kermany_dir / "PNEUMONIA").glob("*.jpeg"))[:20]
    files += sorted((kermany_dir / "NORMAL").glob("*.jpeg"))[:20]
    for f in files:
        full = np.asarray(Image.open(f).convert("RGB").convert("L"), dtype=np.float32) / 255.0
        assert np.array_equal(decode_image(f).pixels, full), f.name
    # A coloured photo of a film: the luma plane and RGB -> L differ by rounding only.
    g = _gradient()
    colour = np.stack([g, g // 2 + 60, 255 - g], axis=-1).astype(np.uint8)
    data = _bytes(Image.fromarray(colour, "RGB"), "JPEG")
    full = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
    assert np.abs(decode_image(data).pixels - full).max() <= 2 / 255 + 1e-6


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is not an image at all" * 10, "unrecognised"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "JPEG"),
    ],
)
def test_invalid_inputs_raise_clear_errors(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_png_raises() -> None:
    good = _bytes(Image.fromarray(_gradient(200, 200)), "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(good[: len(good) // 2])


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        decode_image(tmp_path / "nope.png")


def test_image_decode_error_is_value_error() -> None:
    assert issubclass(ImageDecodeError, ValueError)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height (a decompression bomb header)."""
    png = bytearray(_bytes(Image.fromarray(np.zeros((1, 1), np.uint8)), "PNG"))
    ihdr = 8  # signature
    struct.pack_into(">II", png, ihdr + 8, width, height)
    crc = zlib.crc32(bytes(png[ihdr + 4 : ihdr + 8 + 13])) & 0xFFFFFFFF
    struct.pack_into(">I", png, ihdr + 8 + 13, crc)
    return bytes(png)


def test_decompression_bomb_png_refused_before_decoding() -> None:
    data = _png_with_header_size(20_000, 20_000)  # 400 MP claimed
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data)
    assert time.perf_counter() - t0 < 1.0  # rejected from the header, nothing was decoded


def test_decompression_bomb_dicom_refused_before_decoding(tmp_path: Path) -> None:
    ds = dicom_header(60_000, 60_000, bits_allocated=8, bits_stored=8)
    ds.PixelData = b"\x00" * 16
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(path)
    assert MAX_PIXELS < 60_000 * 60_000


# ------------------------------------------------------------------------------------------
# DICOM (real files)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DICOM_FILES)
def test_every_dicom_decodes_or_raises_clear_error(dicom_dir: Path, name: str) -> None:
    path = dicom_dir / name
    assert path.is_file(), f"missing test file {path}"
    if name in UNDECODABLE:
        with pytest.raises(ImageDecodeError) as exc:
            decode_image(path)
        msg = str(exc.value)
        assert "cannot decode DICOM pixel data" in msg and "JPEG Extended" in msg
        return
    dec = decode_image(path.read_bytes())  # bytes, as uploaded
    assert dec.format == "dicom"
    assert dec.pixels.dtype == np.float32 and dec.pixels.ndim == 2
    assert dec.pixels.min() >= 0.0 and dec.pixels.max() <= 1.0
    assert dec.pixels.std() > 0.05, "decoded image is (nearly) constant"
    assert set(dec.metadata) <= set(DICOM_METADATA_KEYS)
    assert "Modality" in dec.metadata


def test_dicom_metadata_has_no_phi(dicom_dir: Path) -> None:
    dec = decode_image(dicom_dir / "cr-chest-pa-jpeg-baseline.dcm")
    assert dec.metadata["Modality"] == "CR"
    assert dec.metadata["ViewPosition"] == "PA"
    assert dec.metadata["BodyPartExamined"] == "CHEST"
    assert "StudyInstanceUID" in dec.metadata and "SOPInstanceUID" in dec.metadata
    assert not any("Name" in k or k == "PatientID" for k in dec.metadata)


def test_dicom_without_file_meta_is_read(dicom_dir: Path) -> None:
    data = (dicom_dir / "cr-chest-monochrome1-raw-no-meta.dcm").read_bytes()
    assert data[128:132] != b"DICM"  # really has no preamble
    assert sniff_format(data) == "dicom"
    assert decode_image(data).pixels.shape == (440, 440)


def test_monochrome1_copy_is_inverted(dicom_dir: Path) -> None:
    """The two baseline files carry *identical* pixel data and differ only in
    PhotometricInterpretation (checked below). Correct MONOCHROME1 handling must therefore
    produce the negative of the MONOCHROME2 rendering: the MONOCHROME1 tensor equals the
    tensor of the inverted MONOCHROME2 pixels (and not the MONOCHROME2 tensor itself)."""
    import pydicom

    m2_path = dicom_dir / "cr-chest-pa-jpeg-baseline.dcm"
    m1_path = dicom_dir / "cr-chest-pa-jpeg-baseline-monochrome1.dcm"
    m2_ds, m1_ds = pydicom.dcmread(m2_path), pydicom.dcmread(m1_path)
    assert m1_ds.PhotometricInterpretation == "MONOCHROME1"
    assert np.array_equal(m1_ds.pixel_array, m2_ds.pixel_array)

    m2 = decode_image(m2_path).pixels
    t_m1 = preprocess(m1_path, SPEC)
    t_m2_inverted = to_model_tensor(1.0 - m2, 64, [0.5], [0.25])
    assert torch.allclose(t_m1, t_m2_inverted, atol=1e-4)
    assert not torch.allclose(t_m1, preprocess(m2_path, SPEC), atol=0.1)


def test_true_monochrome1_copy_gives_the_monochrome2_tensor(dicom_dir: Path) -> None:
    """A MONOCHROME1 copy whose stored values really are inverted (as a modality that writes
    MONOCHROME1 stores them) must give the same model input as the MONOCHROME2 original."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    m2_path = dicom_dir / "cr-chest-pa-jpeg-baseline.dcm"
    ds = pydicom.dcmread(m2_path)
    stored = ds.pixel_array
    top = (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (top - stored.astype(np.int32)).astype(stored.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    m1_tensor = preprocess(buffer.getvalue(), SPEC)
    assert decode_image(buffer.getvalue()).format == "dicom"
    assert torch.allclose(m1_tensor, preprocess(m2_path, SPEC), atol=1e-3)


def test_same_image_different_codecs_same_tensor(dicom_dir: Path) -> None:
    """JPEG 2000 lossy vs JPEG-LS near-lossless of one MONOCHROME1 image, and JPEG lossless
    vs RLE of one hip image, must give (nearly) the same model input."""
    a = preprocess(dicom_dir / "cr-chest-pa-monochrome1-j2k-lossy.dcm", SPEC)
    b = preprocess(dicom_dir / "cr-chest-pa-monochrome1-jpegls-nearlossless.dcm", SPEC)
    assert (a - b).abs().mean() < 0.02 * 4  # < 2% of the [0,1] range (std 0.25)
    c = decode_image(dicom_dir / "cr-hip-monochrome2-jpeg-lossless.dcm").pixels
    d = decode_image(dicom_dir / "cr-hip-monochrome2-rle.dcm").pixels
    assert np.array_equal(c, d)


def test_monochrome1_chest_looks_like_a_chest(dicom_dir: Path) -> None:
    """After inversion, the lung fields (central band, upper-middle rows) are darker than the
    mediastinum/spine (central column) — as in every MONOCHROME2 chest radiograph."""
    for name in ("cr-chest-pa-monochrome1-j2k-lossy.dcm", "cr-chest-pa-jpeg-baseline.dcm"):
        px = resize_pixels(decode_image(dicom_dir / name).pixels, 64).numpy()
        lungs = np.concatenate([px[16:40, 12:24].ravel(), px[16:40, 40:52].ravel()]).mean()
        spine = px[16:48, 29:35].mean()
        assert lungs < spine, name


# ------------------------------------------------------------------------------------------
# Tensors
# ------------------------------------------------------------------------------------------


def test_to_model_tensor_shapes_and_normalisation() -> None:
    px = np.full((100, 80), 0.5, dtype=np.float32)
    t = to_model_tensor(px, 32, [0.5], [0.25])
    assert t.shape == (1, 32, 32) and t.dtype == torch.float32
    assert torch.allclose(t, torch.zeros_like(t), atol=1e-6)
    t3 = to_model_tensor(px, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], channels=3)
    assert t3.shape == (3, 32, 32)
    assert not torch.allclose(t3[0], t3[2])


def test_resize_is_antialiased() -> None:
    """A 1-pixel checkerboard shrunk 8x must average to flat grey, not alias."""
    board = (np.indices((256, 256)).sum(0) % 2).astype(np.float32)
    small = resize_pixels(board, 32)
    assert abs(float(small.mean()) - 0.5) < 0.01
    assert float(small.std()) < 0.05


def test_preprocess_equals_decode_then_tensor(kermany_dir: Path) -> None:
    f = sorted((kermany_dir / "PNEUMONIA").glob("*.jpeg"))[0]
    a = preprocess(f, SPEC)
    b = to_model_tensor(decode_image(f.read_bytes()).pixels, 64, [0.5], [0.25])
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# Working copies (decoded once at upload, read by the workers)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "shape", "needed"), [
    ("dicom", (440, 440), True),      # pydicom is slow at any size
    ("jpeg", (224, 224), False),      # the Kermany JPEGs: cheap to decode again
    ("png", (1024, 1024), False),     # not over twice the working side
    ("jpeg", (1025, 2000), True),
    ("png", (1600, 2000), True),
])
def test_working_copy_only_where_decoding_the_original_costs_more(
    fmt: str, shape: tuple[int, int], needed: bool
) -> None:
    assert needs_working_copy(fmt, *shape) is needed


def test_working_copy_keeps_the_aspect_with_the_working_side_on_the_shorter_side() -> None:
    rng = np.random.default_rng(0)
    big = rng.random((1500, 1800), dtype=np.float32)
    copy = decode_image(working_copy_jpeg(big))
    assert copy.format == "jpeg"
    assert copy.pixels.shape == (WORKING_COPY_SIDE, round(1800 * WORKING_COPY_SIDE / 1500))
    small = rng.random((300, 200), dtype=np.float32)
    assert decode_image(working_copy_jpeg(small)).pixels.shape == (300, 200)  # never enlarged


def test_working_copy_is_within_about_a_grey_level_of_the_pixels_it_was_made_from(
    kermany_dir: Path,
) -> None:
    f = sorted((kermany_dir / "NORMAL").glob("*.jpeg"))[3]
    pixels = decode_image(f.read_bytes()).pixels  # 224 px: kept at its size, only re-encoded
    copy = decode_image(working_copy_jpeg(pixels)).pixels
    diff = np.abs(copy - pixels)
    assert float(diff.mean()) < 1.5 / 255
    assert float(np.percentile(diff, 99)) < 6 / 255


def test_model_input_from_the_working_copy_matches_the_original_for_real_dicoms(
    dicom_dir: Path,
) -> None:
    """What the worker feeds the model from the copy against what the full original gives."""
    checked = 0
    for path in sorted(dicom_dir.glob("*.dcm")):
        try:
            pixels = decode_image(path.read_bytes()).pixels
        except ImageDecodeError:
            continue  # the undecodable one is rejected at upload and gets no copy
        copy = decode_image(working_copy_jpeg(pixels)).pixels
        assert min(copy.shape) == min(WORKING_COPY_SIDE, *pixels.shape)
        a, b = preprocess(pixels, SPEC192), preprocess(copy, SPEC192)
        # In normalised units (std 0.25): a mean difference of a few thousandths.
        assert float((a - b).abs().mean()) < 0.01, path.name
        checked += 1
    assert checked == 9


def _full_size_jpeg(kermany_dir: Path, **save: Any) -> bytes:
    return full_size_jpeg(sorted((kermany_dir / "PNEUMONIA").glob("*.jpeg"))[5], **save)


def test_large_jpeg_is_decoded_at_reduced_scale_for_a_working_copy(kermany_dir: Path) -> None:
    data = _full_size_jpeg(kermany_dir)
    full = decode_image(data)
    reduced = decode_image(data, reduce_to=WORKING_COPY_SIDE)
    assert full.pixels.shape == (1500, 1800)
    assert reduced.pixels.shape == (750, 900)  # libjpeg's 1/2: both sides still >= 512
    assert reduced.shape == full.shape == (1500, 1800)  # the stored size is reported
    # The same picture: the mean of each 2x2 block of the full decode, within a grey level.
    blocks = full.pixels.reshape(750, 2, 900, 2).mean(axis=(1, 3))
    assert float(np.abs(blocks - reduced.pixels).mean()) < 1 / 255


def test_small_jpeg_and_png_are_decoded_in_full_whatever_reduce_to_says(
    kermany_dir: Path,
) -> None:
    f = sorted((kermany_dir / "NORMAL").glob("*.jpeg"))[0]
    small = decode_image(f.read_bytes(), reduce_to=WORKING_COPY_SIDE)  # 224: not over 2 x 512
    assert np.array_equal(small.pixels, decode_image(f.read_bytes()).pixels)
    png = _bytes(Image.fromarray(np.zeros((1500, 1800), np.uint8)), "PNG")
    assert decode_image(png, reduce_to=WORKING_COPY_SIDE).pixels.shape == (1500, 1800)


def test_truncated_large_jpeg_is_refused_at_reduced_scale_too(kermany_dir: Path) -> None:
    data = _full_size_jpeg(kermany_dir)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], reduce_to=WORKING_COPY_SIDE)


def test_reduced_decode_reports_the_size_after_exif_rotation(kermany_dir: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = _full_size_jpeg(kermany_dir, exif=exif.tobytes())
    full = decode_image(data)
    reduced = decode_image(data, reduce_to=WORKING_COPY_SIDE)
    assert full.pixels.shape == (1800, 1500)  # upright, as the user saw it
    assert reduced.shape == (1800, 1500) and reduced.pixels.shape == (900, 750)
