"""Decoding radiographs without torch: JPEG, PNG and DICOM bytes to float32 grayscale pixels.

The web tier validates uploads and makes working copies with this module alone (Pillow,
pydicom, numpy), so a web process never loads torch. The model's tensor preparation, which
needs torch, is in ``ml.preprocess``; training and serving both start from ``decode_image``.
"""


from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse anything larger than this many pixels *before* decoding it. 50 MP is far above any
# radiograph (a 43x43 cm detector at 0.1 mm is ~18 MP) but well below what would exhaust a
# worker's memory once converted to float32.
MAX_PIXELS = 50_000_000

# Metadata we expose for DICOM. Deliberately a short allow-list: no patient name, id or birth
# date ever leaves this module, so callers cannot leak PHI by accident.
DICOM_METADATA_KEYS = (
    "StudyInstanceUID",
    "SOPInstanceUID",
    "AccessionNumber",
    "ViewPosition",
    "Modality",
    "PatientAge",
    "PatientSex",
    "BodyPartExamined",
)

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """The input is not an image we can safely decode; the message says why (user-facing)."""


@dataclass
class DecodedImage:
    """A decoded radiograph: float32 grayscale HxW in [0, 1] (white = dense/bone)."""

    pixels: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = ""
    # (height, width) of the stored image; larger than `pixels` when decoded at reduced scale.
    original_shape: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the image itself, whatever scale it was decoded at."""
        return self.original_shape or (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _read_source(source: str | Path | bytes | bytearray | memoryview) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"file not found: {path}")
        data = path.read_bytes()
    else:
        raise ImageDecodeError(f"unsupported input type {type(source).__name__}")
    if not data:
        raise ImageDecodeError("empty file: no image data")
    return data


def sniff_format(data: bytes) -> str | None:
    """Return "jpeg", "png" or "dicom" from the leading bytes, or None if unrecognised.

    We sniff instead of trusting file names/extensions because uploads are routinely misnamed
    (".dcm" JPEG exports, DICOMs without extension).
    """
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    # Old ACR-NEMA style / "raw" DICOM without the 128-byte preamble: starts directly with a
    # group 0x0008 (or 0x0002) element in little endian. Confirmed later by pydicom.
    if len(data) >= 8 and data[1] == 0x00 and data[0] in (0x02, 0x08) and data[3] == 0x00:
        return "dicom"
    return None


def _to_unit_range(arr: np.ndarray) -> np.ndarray:
    """Min-max stretch to [0, 1] in float32. Constant images become all zeros."""
    arr = arr.astype(np.float32, copy=False)
    lo = float(arr.min())
    hi = float(arr.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageDecodeError("image contains non-finite pixel values")
    if hi - lo < 1e-12:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32, copy=False)


def _decode_pillow(data: bytes, fmt: str, reduce_to: int | None = None) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and 2x that; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            # Check the header size before any pixel is decoded (Image.open is lazy).
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"image too large: {width}x{height} = {width * height} pixels "
                    f"(limit {MAX_PIXELS}); refusing to decode"
                )
            if width < 8 or height < 8:
                raise ImageDecodeError(f"image too small: {width}x{height}")
            scaled = (fmt == "jpeg" and reduce_to is not None
                      and _worth_a_smaller_copy(height, width, reduce_to))
            if fmt == "jpeg" and (scaled or img.mode in ("RGB", "YCbCr")):
                # Decode the luma plane only: libjpeg skips chroma upsampling and colour
                # conversion (~35 % faster). It is the same ITU-R 601 luma as convert("L")
                # below, identical on the Kermany JPEGs (tests/ml/test_preprocess.py). With
                # `reduce_to`, libjpeg also scales in the DCT domain (1/2, 1/4, 1/8) while
                # keeping both sides >= reduce_to: a 1800x1500 radiograph in ~5 ms, not ~19.
                # Every coefficient is still read, so damaged data is still refused.
                img.draft("L", (reduce_to, reduce_to) if scaled else (width, height))
            img.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large (decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        # Pillow's message names a Python object ("<_io.BytesIO object at 0x...>"): not for
        # a clinician's upload report.
        raise ImageDecodeError(f"corrupt or truncated {fmt.upper()} image: its data cannot "
                               f"be read as {fmt.upper()}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated {fmt.upper()} image: {exc}") from exc

    # Honour EXIF orientation so a phone photo of a film is upright as the user saw it.
    # A broken EXIF block must not reject an otherwise valid image.
    loaded_size = img.size
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    if img.size != loaded_size:  # turned by a quarter: the stored sides swap too
        width, height = height, width

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit-depth grayscale (16-bit PNG). Its usable range is rarely the full 0..65535
        # (12-bit detectors), so stretch min-max like we do for DICOM.
        arr = np.asarray(img)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("="))
        pixels = _to_unit_range(arr)
    else:
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            # Composite transparent images onto black (= radiolucent) rather than dropping alpha.
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, img)
        if mode != "L":
            # ITU-R 601 luma, the same conversion used for the (RGB) training JPEGs.
            img = img.convert("L")
        # 8-bit: fixed scaling, not min-max, so the training images keep their exposure.
        pixels = np.asarray(img, dtype=np.float32) / 255.0
    return DecodedImage(pixels=np.ascontiguousarray(pixels), metadata={}, format=fmt,
                        original_shape=(height, width))


def _decode_dicom(data: bytes) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    try:
        # force=True: accept files without the preamble / file meta (old ACR-NEMA style).
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageDecodeError(f"not a readable DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises many different types on garbage input
        raise ImageDecodeError(f"not a readable DICOM file: {exc}") from exc

    if "PixelData" not in ds:
        raise ImageDecodeError("DICOM file has no pixel data (not an image object)")

    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows <= 0 or cols <= 0:
        raise ImageDecodeError("DICOM file has no valid Rows/Columns")
    # Size check from the header, before decompressing anything.
    if rows * cols * max(frames, 1) > MAX_PIXELS:
        raise ImageDecodeError(
            f"DICOM image too large: {frames} frame(s) of {cols}x{rows} pixels "
            f"(limit {MAX_PIXELS}); refusing to decode"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()

    # Files without file meta have no transfer syntax; pydicom knows how it parsed the body
    # (implicit/explicit VR, endianness), so declare the matching uncompressed syntax.
    if not ds.file_meta or "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit is None:
            implicit, little = True, True
        ds.file_meta = ds.file_meta or pydicom.dataset.FileMetaDataset()
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif little:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian

    tsuid = ds.file_meta.TransferSyntaxUID
    try:
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise RuntimeError/ValueError/...
        name = getattr(tsuid, "name", str(tsuid))
        # pydicom lists one reason per decoder plugin: keep them all, on one line.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].endswith(":"):
            lines = lines[1:]
        detail = "; ".join(lines)[:500] or type(exc).__name__
        raise ImageDecodeError(
            f"cannot decode DICOM pixel data (transfer syntax {name}, {tsuid}): {detail}"
        ) from exc

    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames:
        arr = arr[0]  # multi-frame: the first frame is the representative image
    if samples == 3 or (arr.ndim == 3 and arr.shape[-1] == 3):
        # Colour secondary captures: convert to RGB first (YBR -> RGB) then luma.
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr.astype(np.float32)
        arr = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
    elif arr.ndim != 2:
        raise ImageDecodeError(f"unsupported DICOM pixel array shape {arr.shape}")
    else:
        try:
            # Modality LUT / rescale slope+intercept -> physical units, then the VOI LUT or
            # window the modality chose for display: this is what a radiologist would see.
            arr = apply_modality_lut(arr, ds)
            arr = apply_voi_lut(arr, ds, index=0)
        except Exception as exc:  # malformed LUTs must be a clean rejection
            raise ImageDecodeError(f"invalid DICOM LUT/window attributes: {exc}") from exc

    pixels = _to_unit_range(np.asarray(arr))
    if photometric == "MONOCHROME1":
        # MONOCHROME1: low values are white. Flip so that, like MONOCHROME2 and the training
        # JPEGs, bone/dense tissue is bright.
        pixels = 1.0 - pixels

    metadata: dict[str, str] = {}
    for key in DICOM_METADATA_KEYS:
        value = ds.get(key)
        if value is not None and str(value).strip() != "":
            metadata[key] = str(value).strip()
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32), metadata=metadata, format="dicom"
    )


def decode_image(source: str | Path | bytes, *, reduce_to: int | None = None) -> DecodedImage:
    """Decode a JPEG, PNG or DICOM (path or bytes) to float32 grayscale in [0, 1].

    Raises ImageDecodeError (a ValueError) with a human readable reason for anything invalid:
    empty input, unknown format, truncated/corrupt data, undecodable DICOM compression,
    images over MAX_PIXELS (checked from the header, before decoding).

    `reduce_to`: a JPEG over twice that on its shorter side may be decoded at a reduced scale
    that keeps both sides >= reduce_to (for working copies; `DecodedImage.shape` stays the
    stored size). Other formats, and the models' own inputs, are always decoded in full.
    """
    data = _read_source(source)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("unrecognised file format: expected a JPEG, PNG or DICOM image")
    if fmt == "dicom":
        return _decode_dicom(data)
    return _decode_pillow(data, fmt, reduce_to)


# --------------------------------------------------------------------------------------------
# Working copies: decode once
# --------------------------------------------------------------------------------------------

# Shorter side of a working copy. Every model input (192 px shipped, 224 for the ImageNet
# architectures) is resized down from it, so the model never needs the original pixels.
WORKING_COPY_SIDE = 512


def needs_working_copy(fmt: str, height: int, width: int) -> bool:
    """Whether decoding the original again would cost much more than reading a working copy.

    DICOM always (pydicom with JPEG 2000 / JPEG-LS / RLE: 20-700 ms per radiograph here, against
    ~1 ms for a working copy); JPEG and PNG once they are over twice the working side (a
    2000x1600 JPEG: ~19 ms). The 224 px Kermany JPEGs need none: they decode in ~0.3 ms.
    """
    return fmt == "dicom" or _worth_a_smaller_copy(height, width, WORKING_COPY_SIDE)


def _worth_a_smaller_copy(height: int, width: int, side: int) -> bool:
    """Over twice `side` on the shorter side: the one rule for reducing at decode and for
    making a working copy, so a reduced decode always ends in a copy."""
    return min(height, width) > 2 * side


def working_copy_pixels(pixels: np.ndarray) -> np.ndarray:
    """A decoded image reduced to WORKING_COPY_SIDE on its shorter side, as 8-bit gray.

    Aspect kept; smaller images keep their size. Pillow's antialiased bilinear filter on the
    float pixels: the filter torch's `antialias=True` was made to reproduce (`resize_pixels`),
    without loading torch in the web tier. 8 bits per pixel: what the models were trained on
    (the Kermany JPEGs), so the rounding (at most 0.5/255) is far below what a JPEG of the
    same image already changes.
    """
    height, width = pixels.shape
    scale = WORKING_COPY_SIDE / min(height, width)
    arr = np.asarray(pixels, dtype=np.float32)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        arr = np.asarray(Image.fromarray(arr, mode="F").resize(
            size, Image.Resampling.BILINEAR, reducing_gap=None))
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


WORKING_COPY_QUALITY = 95


def working_copy_jpeg(pixels: np.ndarray) -> bytes:
    """`working_copy_pixels` as a grayscale JPEG (quality 95), for `decode_image`.

    JPEG, not PNG: a 512x544 copy reads in ~1 ms against ~5 ms for a PNG (Pillow's PNG
    unfiltering), and writes in ~0.8 ms against ~10 ms. The models were trained on JPEGs, and
    at quality 95 the copy differs from its pixels by about one grey level (tests/ml). It is
    only ever a model input; the original stays the image of record (viewer, previews, files).
    """
    out = io.BytesIO()
    Image.fromarray(working_copy_pixels(pixels), mode="L").save(
        out, format="JPEG", quality=WORKING_COPY_QUALITY)
    return out.getvalue()
