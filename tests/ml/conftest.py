"""Fixtures for the ML tests: real data (PNEUMO_DATA_DIR, default <repo>/../shared/data),
the shipped checkpoints, and small synthetic image folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("PNEUMO_DATA_DIR", REPO.parent / "shared" / "data"))
KERMANY = DATA / "kermany-cxr" / "train"
DICOM = DATA / "dicom"

# One intra-op thread: the tensors in these tests are small, and on a 2-core machine shared with
# other processes a second OpenMP thread spin-waits and makes small ops ~20x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    if not (KERMANY / "NORMAL").is_dir():
        pytest.skip(f"Kermany data not found at {KERMANY} (set PNEUMO_DATA_DIR)")
    return KERMANY


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    if not DICOM.is_dir():
        pytest.skip(f"DICOM test files not found at {DICOM} (set PNEUMO_DATA_DIR)")
    return DICOM


def _shipped_checkpoint(task: str) -> Path:
    from ml import default_checkpoint

    path = default_checkpoint(task)
    if not path.is_file():
        pytest.fail(f"shipped {task} checkpoint missing: {path}")
    return path


@pytest.fixture(scope="session")
def binary_ckpt() -> Path:
    return _shipped_checkpoint("binary")


@pytest.fixture(scope="session")
def etiology_ckpt() -> Path:
    return _shipped_checkpoint("etiology")


@pytest.fixture(scope="session")
def small_real_folder(kermany_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 normal + 12 pneumonia real images copied into NORMAL/ PNEUMONIA/ folders."""
    root = tmp_path_factory.mktemp("small_real")
    for cls, pattern in (("NORMAL", "*.jpeg"), ("PNEUMONIA", "*.jpeg")):
        files = sorted((kermany_dir / cls).glob(pattern))
        pick = files[:: max(1, len(files) // 12)][:12]
        (root / cls).mkdir()
        for f in pick:
            shutil.copy(f, root / cls / f.name)
    return root


def write_gray(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def synthetic_folder(tmp_path: Path) -> Path:
    """Tiny Kermany-named folder: 'pneumonia' images have a bright blob, normals do not."""
    rng = np.random.default_rng(0)
    root = tmp_path / "synthetic"
    for i in range(16):
        base = (rng.normal(90, 20, (48, 48))).clip(0, 255)
        write_gray(root / "NORMAL" / f"IM-{i:04d}-0001.jpeg", base.astype(np.uint8))
        blob = base.copy()
        y, x = rng.integers(10, 38, 2)
        yy, xx = np.mgrid[:48, :48]
        blob[(yy - y) ** 2 + (xx - x) ** 2 < 36] = 230
        kind = "bacteria" if i % 2 else "virus"
        write_gray(root / "PNEUMONIA" / f"person{i}_{kind}_{i}.jpeg", blob.astype(np.uint8))
    return root
