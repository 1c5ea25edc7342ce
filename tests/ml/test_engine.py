"""ml.engine: losses and seeded determinism of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ml.data import discover
from ml.engine import FocalLoss, TrainConfig, train


def test_focal_loss() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(64, 3), torch.randint(0, 3, (64,))
    assert FocalLoss(gamma=0.0)(logits, target) == pytest.approx(
        float(F.cross_entropy(logits, target)), rel=1e-5
    )
    # easy examples are down-weighted: focal < CE
    assert FocalLoss(gamma=2.0)(logits, target) < F.cross_entropy(logits, target)
    w = torch.tensor([1.0, 2.0, 0.5])
    assert FocalLoss(gamma=0.0, weight=w)(logits, target) == pytest.approx(
        float(F.cross_entropy(logits, target, weight=w)), rel=1e-5
    )


def test_training_is_seeded_and_deterministic(synthetic_folder: Path) -> None:
    recs = discover(synthetic_folder)
    cfg = TrainConfig(
        arch="pneumonet_small",
        epochs=1,
        input_size=32,
        batch_size=8,
        val_fraction=0.25,
        bootstrap=10,
        progress=False,
        threads=1,
        loss="focal",
    )
    a = train(cfg, recs, log=lambda s: None)
    b = train(cfg, recs, log=lambda s: None)
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert a.meta["threshold"] == b.meta["threshold"]
    assert a.meta["data"]["train"]["images"] + a.meta["data"]["val"]["images"] == 32
