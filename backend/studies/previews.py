"""PNG renderings of uploaded images, for browsers (which cannot show DICOM).

Rendered from ``ml.decode.decode_image`` (so MONOCHROME1 is inverted and the VOI window
applied, as the model sees it), downscaled to at most PREVIEW_MAX_SIDE pixels, and cached
through the storage API next to the upload: never under a public URL.
"""

from __future__ import annotations

import io

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from ml.decode import decode_image

from .models import Image

PREVIEW_MAX_SIDE = 2048


def preview_path(image: Image) -> str:
    return f"studies/{image.study_id}/previews/{image.id}.png"


def render_preview(data: bytes) -> bytes:
    pixels = decode_image(data).pixels
    gray = PILImage.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    gray.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    gray.save(out, format="PNG", optimize=False)
    return out.getvalue()


def preview_get_or_create(image: Image) -> str:
    """The storage path of the image's preview, rendering and storing it the first time."""
    path = preview_path(image)
    if default_storage.exists(path):
        return path
    with image.file.open("rb") as handle:
        png = render_preview(handle.read())
    saved = default_storage.save(path, ContentFile(png))
    if saved != path:  # a concurrent request stored it first; keep one copy
        default_storage.delete(saved)
    return path
