"""ml.transforms: radiograph augmentation keeps shape/range/orientation, is seeded."""

from __future__ import annotations

import torch

from ml.transforms import RadiographAugment


def _half_bright(side: str) -> torch.Tensor:
    x = torch.full((16, 1, 64, 64), 0.2)
    if side == "top":
        x[:, :, :32] = 0.8
    else:
        x[:, :, :, :32] = 0.8
    return x


def test_shape_range_and_seeding() -> None:
    aug = RadiographAugment()
    x = torch.rand(8, 1, 48, 48)
    a = aug(x, generator=torch.Generator().manual_seed(0))
    b = aug(x, generator=torch.Generator().manual_seed(0))
    c = aug(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_no_vertical_flip_and_no_default_horizontal_flip() -> None:
    aug = RadiographAugment(erase_p=0.0)
    g = torch.Generator().manual_seed(0)
    top = aug(_half_bright("top"), generator=g)
    assert (top[:, :, 8:24].mean((1, 2, 3)) > top[:, :, 40:56].mean((1, 2, 3))).all()
    left = aug(_half_bright("left"), generator=g)
    assert (left[..., 8:24].mean((1, 2, 3)) > left[..., 40:56].mean((1, 2, 3))).all()
    flipping = RadiographAugment(erase_p=0.0, hflip_p=1.0)
    right = flipping(_half_bright("left"), generator=g)
    assert (right[..., 8:24].mean((1, 2, 3)) < right[..., 40:56].mean((1, 2, 3))).all()
