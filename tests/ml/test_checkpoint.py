"""ml.checkpoint: weights_only round trip, metadata, safety; the shipped checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from ml.models import build_model

META = {
    "arch": "pneumonet_small",
    "task": "binary",
    "classes": ["normal", "pneumonia"],
    "preprocessing": {"input_size": 64, "mean": [0.5], "std": [0.25], "channels": 1},
    "threshold": 0.42,
    "temperature": 1.5,
    "name": "pneumo-test",
    "version": "0.0.1",
}
SHIPPED_KEYS = {
    "format_version",
    "arch",
    "task",
    "classes",
    "preprocessing",
    "threshold",
    "temperature",
    "operating_point",
    "data",
    "validation",
    "name",
    "version",
    "created_at",
    "command",
    "training_seconds",
}


def test_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("pneumonet_small", 2).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled classes
    assert set(raw) == {"format_version", "state_dict", "meta"}
    loaded, meta = model_from_checkpoint(path)
    assert meta["threshold"] == 0.42 and meta["version"] == "0.0.1"
    assert "created_at" in meta and meta["format_version"] == 1
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x)[1], loaded(x)[1])


def test_numpy_and_str_subclasses_are_stored_as_plain_types(tmp_path: Path) -> None:
    import numpy as np

    model = build_model("pneumonet_small", 2)
    meta = {
        **META,
        "threshold": np.float64(0.3),
        "torch": torch.__version__,
        "counts": np.array([1, 2]),
    }
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    _, loaded = load_checkpoint(path)
    assert type(loaded["threshold"]) is float and loaded["counts"] == [1, 2]
    assert type(loaded["torch"]) is str


def test_unsafe_or_incomplete_metadata_rejected(tmp_path: Path) -> None:
    model = build_model("pneumonet_small", 2)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "a.pt", model, {**META, "obj": object()})
    incomplete = {k: v for k, v in META.items() if k != "threshold"}
    with pytest.raises(CheckpointError, match="threshold"):
        save_checkpoint(tmp_path / "b.pt", model, incomplete)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a pneumonia-model checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_shipped_checkpoint_is_one_multi_head_model(binary_ckpt: Path, etiology_ckpt: Path) -> None:
    assert binary_ckpt == etiology_ckpt  # the worker loads one model
    path = binary_ckpt
    assert path.stat().st_size <= 25 * 1024 * 1024
    raw = torch.load(path, map_location="cpu", weights_only=True)
    meta = raw["meta"]
    assert set(meta) >= SHIPPED_KEYS, SHIPPED_KEYS - set(meta)
    assert meta["task"] == "multi"
    assert meta["heads"]["binary"]["classes"] == ["normal", "pneumonia"]
    assert meta["heads"]["etiology"]["classes"] == ["normal", "bacterial", "viral"]
    assert meta["heads"]["scope"]["classes"][0] == "in_scope"
    for head in meta["heads"].values():
        assert 0.0 < head["threshold"] < 1.0 and head["temperature"] > 0
    assert set(meta["preprocessing"]) >= {"input_size", "mean", "std", "channels"}
    split = meta["data"]["paediatric"]
    assert split["split_seed"] == meta["config"]["seed"]
    assert split["train"]["patients"] > 0 and split["val"]["images"] > 0
    v = meta["validation"]
    for task in ("binary", "etiology"):
        assert {"accuracy", "sensitivity", "specificity", "roc_auc", "ci95"} <= set(v[task])
        # the stored operating point was met on the (clean) validation split
        assert v[task]["sensitivity"] >= meta["operating_point"]["value"] - 1e-9
    # the gate turns away almost no validation child and most held-out adults
    assert v["scope"]["paediatric (clean)"]["out_of_scope_rate"] <= 0.02
    assert v["scope"]["adult examples"]["out_of_scope_rate"] >= 0.9
    assert meta["command"].startswith("python -m ml train-multi")
    model, _ = model_from_checkpoint(path)
    assert model.linear is not None  # shipped models support plain CAM
