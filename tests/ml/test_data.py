"""ml.data: patient ids, labels, layouts, patient-level split, cached dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml.data import (
    CachedImageDataset,
    discover,
    etiology_from_name,
    label_index,
    one_torch_thread,
    patient_id,
    split_by_patient,
    summarize,
    task_records,
    training_split,
)


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-0123-0001.jpeg", "NORMAL2-IM-0123"),
        ("scan_17-3.png", "scan_17"),
    ],
)
def test_patient_id(name: str, pid: str) -> None:
    assert patient_id(name) == pid


def test_etiology_from_name() -> None:
    assert etiology_from_name("person1_bacteria_1.jpeg") == "bacterial"
    assert etiology_from_name("person1_virus_1.jpeg") == "viral"
    assert etiology_from_name("IM-0001-0001.jpeg") is None
    assert label_index("viral", "binary") == 1
    assert label_index("viral", "etiology") == 2
    assert label_index("pneumonia", "etiology") is None  # unknown etiology: unusable


def test_discover_flat_layout(synthetic_folder: Path) -> None:
    recs = discover(synthetic_folder)
    assert len(recs) == 32
    labels = {r.label for r in recs}
    assert labels == {"normal", "bacterial", "viral"}
    assert summarize(recs, "binary")["per_class"] == {"normal": 16, "pneumonia": 16}


def test_discover_split_layout_and_csv(synthetic_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "splits"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
    for f in sorted((synthetic_folder / "NORMAL").iterdir())[:3]:
        (root / "test" / "NORMAL" / f.name).write_bytes(f.read_bytes())
    for f in sorted((synthetic_folder / "PNEUMONIA").iterdir())[:5]:
        (root / "train" / "PNEUMONIA" / f.name).write_bytes(f.read_bytes())
    assert len(discover(root, split="test")) == 3
    assert len(discover(root, split="train")) == 5
    assert len(discover(root)) == 8

    csv_path = tmp_path / "manifest.csv"
    rows = ["path,label"] + [
        f"{p},{lab}"
        for p, lab in (
            (synthetic_folder / "NORMAL" / "IM-0000-0001.jpeg", "normal"),
            (synthetic_folder / "PNEUMONIA" / "person1_bacteria_1.jpeg", "PNEUMONIA"),
        )
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    recs = discover(csv_path)
    assert [r.label for r in recs] == ["normal", "bacterial"]
    csv_path.write_text("path,label\nx.png,maybe\n")
    with pytest.raises(ValueError, match="unknown label"):
        discover(csv_path)


def test_patient_split_on_real_data(kermany_dir: Path) -> None:
    recs = discover(kermany_dir)
    assert len(recs) == 5216
    train, val = split_by_patient(recs, 0.15, seed=42)
    assert len(train) + len(val) == len(recs)
    train_p = {r.patient for r in train}
    val_p = {r.patient for r in val}
    assert not train_p & val_p, "a patient is on both sides of the split"
    assert 0.12 < len(val_p) / (len(train_p) + len(val_p)) < 0.18
    # both classes in validation, in roughly the overall proportion
    frac_pneu = np.mean([r.label != "normal" for r in val])
    assert 0.65 < frac_pneu < 0.80
    # seeded: same seed same split, different seed different split
    again, _ = split_by_patient(recs, 0.15, seed=42)
    other, _ = split_by_patient(recs, 0.15, seed=7)
    assert [r.path for r in again] == [r.path for r in train]
    assert {r.patient for r in other} != train_p


def test_training_split_subsamples_training_only(synthetic_folder: Path) -> None:
    recs = discover(synthetic_folder)
    train, val = split_by_patient(recs, 0.25, seed=42)
    small, same_val = training_split(recs, 0.25, seed=42, max_train_images=10)
    assert same_val == val and len(small) == 10
    assert {r.path for r in small} <= {r.path for r in train}
    assert training_split(recs, 0.25, seed=42) == (train, val)


def test_cached_dataset(synthetic_folder: Path) -> None:
    (synthetic_folder / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"broken")
    recs = discover(synthetic_folder)
    ds = CachedImageDataset(recs, "etiology", 32)
    assert len(ds) == 32 and len(ds.skipped) == 1
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (32, 32, 32)
    x, _ = ds.batch(torch.tensor([0, 31]))
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(ds.labels.tolist()) == {0, 1, 2}
    assert len(task_records(recs, "etiology")) == len(recs)


def test_one_torch_thread_restores_the_thread_count_even_after_an_error() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError), one_torch_thread():
            raise RuntimeError("decode failed")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_cached_dataset_decodes_on_one_thread_and_gives_the_caller_its_threads_back(
    synthetic_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.data

    seen: list[int] = []
    real = ml.data.resize_pixels

    def spy(pixels: np.ndarray, size: int) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return real(pixels, size)

    monkeypatch.setattr(ml.data, "resize_pixels", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ds = CachedImageDataset(discover(synthetic_folder), "binary", 32)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(ds) == len(seen) > 0 and set(seen) == {1}
