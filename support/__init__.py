"""Helpers shared by the tests and the benchmarks (never imported by the product): where the
data sets are, free ports, waiting for a condition, real X-rays, full-size radiographs and
crafted DICOM files."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PNEUMO_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
KERMANY_TRAIN = DATA_DIR / "kermany-cxr" / "train"
DICOM_DIR = DATA_DIR / "dicom"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def free_port() -> int:
    """A TCP port nobody listens on now (other checkouts run the same tests at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.25,
             what: str = "condition") -> Any:
    """The first truthy value of `predicate`, polled every `interval` seconds; an
    AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")


def xray_files(n: int, offset: int = 0) -> list[Path]:
    """n distinct real X-rays of the Kermany set, alternating normal / pneumonia.

    Distinct in content too: the set holds a few byte-identical files, and a study keeps one
    copy of each (the second is reported as a duplicate)."""
    normal = sorted((KERMANY_TRAIN / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((KERMANY_TRAIN / "PNEUMONIA").glob("*.jpeg"))
    if not normal or not pneumonia:
        raise FileNotFoundError(f"No Kermany X-rays under {KERMANY_TRAIN} (set PNEUMO_DATA_DIR)")
    mixed = [p for pair in zip(normal, pneumonia, strict=False) for p in pair]
    mixed += pneumonia[len(normal):]
    seen: set[bytes] = set()
    distinct: list[Path] = []
    for path in mixed:
        digest = hashlib.sha256(path.read_bytes()).digest()
        if digest not in seen:
            seen.add(digest)
            distinct.append(path)
            if len(distinct) == offset + n:
                return distinct[offset:]
    raise FileNotFoundError(f"Only {len(distinct)} distinct X-rays available")


def full_size_jpeg(path: Path, size: tuple[int, int] = (1800, 1500), **save: Any) -> bytes:
    """A data-set X-ray enlarged to a full-size radiograph (width x height), as a JPEG.

    The data set's 224 px JPEGs decode in ~0.3 ms; a hospital's radiographs are ~2000 px and
    decode in ~20 ms (DICOM: 20-700 ms), which is what the pipeline meets in practice.
    """
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(path) as image:
        image.convert("L").resize(size, Image.Resampling.BICUBIC).save(
            buf, format="JPEG", quality=92, **save)
    return buf.getvalue()


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def dicom_header(rows: int, columns: int, *, bits_allocated: int = 16,
                 bits_stored: int = 12) -> Dataset:
    """A CR image (Explicit VR Little Endian, fresh UIDs) of `rows` x `columns` unsigned
    MONOCHROME2 pixels, without its pixel data: what a crafted DICOM starts from."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored = bits_allocated, bits_stored
    ds.HighBit, ds.PixelRepresentation = bits_stored - 1, 0
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    """The dataset as the bytes of a DICOM file (preamble and file meta)."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
