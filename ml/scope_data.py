"""Training negatives for the scope gate (ml.scope): out-of-scope example folders, and
synthetic non-radiographs built from images that ship inside installed libraries."""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.scope import OUT_OF_SCOPE_REASONS

# Folder names of ../shared/data/adult-cxr and what they are for the gate.
ADULT_CXR_FOLDERS: dict[str, str] = {
    "normal": "adult",
    "covid": "adult",
    "lateral": "lateral",
    "ct": "not_chest_radiograph",
}


@dataclass(frozen=True)
class ScopeRecord:
    path: Path
    reason: str  # a SCOPE_CLASSES entry other than in_scope


def scope_records(root: str | Path) -> list[ScopeRecord]:
    """Out-of-scope examples under ``root`` laid out as ``<folder>/*.jpeg`` where the folder is
    one of ADULT_CXR_FOLDERS or is named after a reason (``adult/``, ``not_chest_radiograph/``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"scope data directory not found: {root}")
    out: list[ScopeRecord] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        reason = ADULT_CXR_FOLDERS.get(sub.name.lower(), sub.name.lower())
        if reason not in OUT_OF_SCOPE_REASONS:
            continue
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in {".jpeg", ".jpg", ".png", ".dcm"} and f.is_file():
                out.append(ScopeRecord(f, reason))
    if not out:
        raise ValueError(f"no out-of-scope examples found under {root}")
    return out


def split_scope_records(
    records: Sequence[ScopeRecord], val_fraction: float, seed: int
) -> tuple[list[ScopeRecord], list[ScopeRecord]]:
    """Seeded split by file, stratified by reason (these sets carry no patient identifier)."""
    rng = np.random.default_rng(seed)
    train: list[ScopeRecord] = []
    val: list[ScopeRecord] = []
    for reason in OUT_OF_SCOPE_REASONS:
        group = [r for r in records if r.reason == reason]
        order = rng.permutation(len(group))
        n_val = round(val_fraction * len(group))
        val.extend(group[i] for i in order[:n_val])
        train.extend(group[i] for i in order[n_val:])
    return train, val


def _library_images() -> list[np.ndarray]:
    """Non-radiograph images that ship inside installed libraries (no download): photographs
    (scikit-learn, matplotlib), an MR slice and terrain (matplotlib), CT/MR/ultrasound DICOMs
    from pydicom's test files. Grayscale float32 in [0, 1]."""
    from PIL import Image

    from ml.preprocess import ImageDecodeError, decode_image

    images: list[np.ndarray] = []

    def add_pil(img: Image.Image) -> None:
        images.append(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)

    try:
        from sklearn.datasets import load_sample_images

        for arr in load_sample_images().images:
            add_pil(Image.fromarray(arr))
    except Exception:  # noqa: S110 - an optional source; the others remain
        pass
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
            if (sample / name).is_file():
                with Image.open(sample / name) as img:
                    add_pil(img)
        mri = sample / "s1045.ima.gz"
        if mri.is_file():
            raw = np.frombuffer(gzip.decompress(mri.read_bytes()), np.uint16)
            side = math.isqrt(raw.size)
            arr = raw[: side * side].reshape(side, side).astype(np.float32)
            images.append(arr / max(float(arr.max()), 1.0))
        dem = sample / "jacksboro_fault_dem.npz"
        if dem.is_file():
            with np.load(dem) as z:
                arr = z["elevation"].astype(np.float32)
            images.append((arr - arr.min()) / max(float(np.ptp(arr)), 1e-6))
    except Exception:  # noqa: S110
        pass
    try:
        import pydicom.data

        folder = Path(pydicom.data.__file__).parent / "test_files"
        for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm",
                     "US1_J2KR.dcm", "emri_small.dcm", "OBXXXX1A.dcm", "SC_rgb.dcm"):
            if (folder / name).is_file():
                try:
                    images.append(decode_image(folder / name).pixels)
                except ImageDecodeError:
                    continue
    except Exception:  # noqa: S110
        pass
    return images


def _document(rng: np.random.Generator, size: int) -> np.ndarray:
    """A rendered page of text lines and boxes: scanned forms and reports get uploaded too."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), int(rng.integers(200, 256)))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(4, 20))
    ink = int(rng.integers(0, 80))
    while y < size - 8:
        words = " ".join(
            "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(2, 9))))
            for _ in range(int(rng.integers(2, 8)))
        )
        draw.text((int(rng.integers(2, 30)), y), words, fill=ink)
        if rng.random() < 0.15:
            x0 = int(rng.integers(0, max(1, size // 2)))
            x1 = x0 + int(rng.integers(20, max(21, size // 2)))
            draw.rectangle([x0, y, x1, y + 12], outline=ink)
        y += int(rng.integers(10, 22))
    return np.asarray(img, dtype=np.float32) / 255.0


def _procedural(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradients, blobs, stripes and noise: screenshots, blank frames, test patterns."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = int(rng.integers(0, 4))
    if kind == 0:
        a, b = rng.normal(size=2)
        img = a * xx + b * yy
    elif kind == 1:
        img = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(1, 8))):
            cx, cy, r = rng.random(3)
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.1 * r))
    elif kind == 2:
        f = rng.uniform(2, 20)
        img = np.sin(2 * np.pi * f * (xx * rng.normal() + yy * rng.normal()))
    else:
        img = rng.random((size, size)).astype(np.float32)
    img = img.astype(np.float32)
    return (img - img.min()) / max(float(np.ptp(img)), 1e-6)


def _random_view(img: np.ndarray, rng: np.random.Generator, size: int,
                 min_area: float, max_area: float) -> np.ndarray:
    """A random crop (area fraction in [min_area, max_area]), flips, resized to ``size``."""
    import torch

    from ml.preprocess import resize_pixels

    h, w = img.shape
    area = rng.uniform(min_area, max_area)
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
    ch = min(h, max(8, round(math.sqrt(area * h * w / aspect))))
    cw = min(w, max(8, round(math.sqrt(area * h * w * aspect))))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.3:
        crop = np.rot90(crop, int(rng.integers(1, 4)))
    out = resize_pixels(np.ascontiguousarray(crop, dtype=np.float32), size)
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def synthetic_non_radiographs(
    n: int, size: int, seed: int, radiographs: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """``n`` uint8 (n, size, size) images that are not chest radiographs: views of library
    photographs / CT / MR / ultrasound, rendered documents, procedural patterns, and small
    crops (4-15 % of the area) of ``radiographs``, which look like a radiograph of some other
    body part rather than a whole chest."""
    rng = np.random.default_rng(seed)
    library = _library_images()
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        pick = rng.random()
        if library and pick < 0.45:
            img = _random_view(library[int(rng.integers(len(library)))], rng, size, 0.15, 1.0)
        elif pick < 0.6:
            img = _document(rng, size)
        elif radiographs and pick < 0.85:
            img = _random_view(radiographs[int(rng.integers(len(radiographs)))], rng, size,
                               0.04, 0.15)
        else:
            img = _procedural(rng, size)
        out[i] = np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


