"""ml.cam: CAM correctness, localisation on synthetic lesions, rendering, no memory growth."""

from __future__ import annotations

import gc
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from ml.cam import (
    bounding_box,
    cam_from_features,
    compute_cams,
    edge_band_shares,
    grad_cam,
    heatmap_png,
    heatmap_pngs,
    overlay_png,
    upsample,
)
from ml.models import CamModel, GapLinearHead, build_model
from ml.predictor import Predictor


def _live_tensors() -> int:
    """Number of torch tensors alive in this process (after a full collection)."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch proxies warns
        return sum(1 for o in gc.get_objects() if _is_tensor(o))


def _is_tensor(obj: object) -> bool:
    # gc can hand back weak proxies whose referent is gone; they are not live tensors.
    try:
        return isinstance(obj, torch.Tensor)
    except ReferenceError:
        return False


def _binary_predictor(arch: str, *, temperature: float,
                      input_size: int) -> tuple[torch.nn.Module, Predictor]:
    """An untrained binary model wrapped in a Predictor with minimal checkpoint metadata."""
    model = build_model(arch, 2).eval()
    meta = {
        "name": "t",
        "version": "0",
        "task": "binary",
        "classes": ["normal", "pneumonia"],
        "threshold": 0.5,
        "temperature": temperature,
        "preprocessing": {"input_size": input_size, "mean": [0.5], "std": [0.25], "channels": 1},
    }
    return model, Predictor(model, meta, device="cpu")


def _tiny_cam_net(linear_head: bool = True) -> CamModel:
    """Stride-4 CNN: 64 px input -> 16x16 feature grid (cheap: ~4 MMAC per image)."""
    feats = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
    )
    if linear_head:
        head = GapLinearHead(32, 2)
        return CamModel(feats, head, head.fc, 1)
    mlp = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    return CamModel(feats, mlp, None, 1)


def _blob_batch(
    rng: np.random.Generator,
    n: int,
    size: int = 64,
    radius: float = 6.0,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noisy backgrounds with smooth gradients; label 1 images get a bright Gaussian blob
    (sigma = radius / 1.5) at a random position."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    x = np.empty((n, 1, size, size), np.float32)
    labels = rng.integers(0, 2, n)
    centres = rng.uniform(radius + 2, size - radius - 2, (n, 2))
    for i in range(n):
        g = rng.uniform(-0.1, 0.1, 2)
        img = 0.4 + g[0] * (xx / size - 0.5) + g[1] * (yy / size - 0.5)
        img += rng.normal(0, 0.05, (size, size))
        if labels[i]:
            cy, cx = centres[i]
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            img += 0.5 * np.exp(-d2 / (2 * (radius / 1.5) ** 2))
        x[i, 0] = img
    return torch.from_numpy(x), torch.from_numpy(labels), centres


def _peak(heat: np.ndarray, frac: float = 0.5) -> tuple[float, float]:
    """Location of the CAM peak: centre of mass of the most activated connected region
    (>= frac * max, the region ``bounding_box`` reports). A trained CAM is typically a
    plateau over the lesion whose single argmax pixel sits anywhere on it (often its rim),
    so the region's centre is the meaningful "peak"."""
    from scipy import ndimage

    labels, _ = ndimage.label(heat >= frac * heat.max(), structure=np.ones((3, 3)))
    region = labels == labels[np.unravel_index(int(np.argmax(heat)), heat.shape)]
    w = heat * region
    yy, xx = np.mgrid[: heat.shape[0], : heat.shape[1]]
    return float((w * (yy + 0.5)).sum() / w.sum()), float((w * (xx + 0.5)).sum() / w.sum())


@pytest.fixture(scope="module")
def trained_blob_net() -> CamModel:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _tiny_cam_net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(200):
        x, y, _ = _blob_batch(rng, 32)
        _, logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_cam_localises_synthetic_lesions(trained_blob_net: CamModel) -> None:
    rng = np.random.default_rng(123)  # held-out images, never seen in training
    x, y, centres = _blob_batch(rng, 200)
    pos = y.numpy() == 1
    x, centres = x[pos][:100], centres[pos][:100]
    logits, cams = compute_cams(trained_blob_net, x, torch.ones(len(x), dtype=torch.long))
    assert (logits.argmax(1) == 1).float().mean() > 0.9  # the classifier learned the task
    heat = upsample(cams, 64).numpy()
    hits, box_hits = 0, 0
    for h, (cy, cx) in zip(heat, centres, strict=True):
        py, px = _peak(h)
        hits += (py - cy) ** 2 + (px - cx) ** 2 <= 6.0**2
        x0, y0, x1, y1 = bounding_box(h)
        box_hits += x0 * 64 <= cx <= x1 * 64 and y0 * 64 <= cy <= y1 * 64
    assert hits / len(heat) >= 0.9, f"CAM peak inside the blob for only {hits}/{len(heat)}"
    assert box_hits / len(heat) >= 0.9


def test_cam_from_same_forward_pass_equals_explicit_computation() -> None:
    torch.manual_seed(1)
    model, pred = _binary_predictor("pneumonet", temperature=1.3, input_size=96)
    x = torch.randn(4, 1, 96, 96)
    preds = pred.predict_tensors(x, with_cam=True)
    with torch.no_grad():
        feats, logits = model(x)
        labels = torch.tensor([pred.classes.index(p.label) for p in preds])
        w = model.linear.weight[labels] - model.linear.weight.mean(0, keepdim=True)
        manual = torch.relu((w[:, :, None, None] * feats).sum(1))
        manual = manual / manual.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
        expected = upsample(manual, 96).numpy()
        probs = torch.softmax(logits / 1.3, 1).numpy()
    for i, p in enumerate(preds):
        np.testing.assert_allclose(p.heatmap, expected[i], atol=1e-5)
        assert p.probabilities["pneumonia"] == pytest.approx(float(probs[i, 1]), abs=1e-6)
        # CAM defining property: the spatial mean of the (centred) class map + centred bias
        # equals the class logit minus the mean logit
        wc = model.linear.weight[1] - model.linear.weight.mean(0)
        bc = model.linear.bias[1] - model.linear.bias.mean()
        raw = (wc[:, None, None] * feats[i]).sum(0)
        assert float((raw.mean() + bc).detach()) == pytest.approx(
            float(logits[i, 1] - logits[i].mean()), abs=1e-4
        )


def test_plain_cam_equals_grad_cam_for_gap_linear_heads() -> None:
    torch.manual_seed(2)
    model = build_model("pneumonet", 2).eval()
    x = torch.randn(3, 1, 96, 96)
    idx = torch.tensor([0, 1, 1])
    with torch.inference_mode():
        feats, logits = model(x)
        plain = cam_from_features(feats, model.linear, idx)
    g_logits, gcam = grad_cam(model, x, idx)
    assert torch.allclose(logits, g_logits, atol=1e-5)
    assert torch.allclose(plain, gcam, atol=1e-4)


def test_grad_cam_is_batch_independent_and_frees_graph() -> None:
    torch.manual_seed(3)
    model = _tiny_cam_net(linear_head=False).eval()
    x = torch.randn(5, 1, 64, 64)
    _, batched = compute_cams(model, x)
    singles = torch.cat([compute_cams(model, x[i : i + 1])[1] for i in range(5)])
    assert torch.allclose(batched, singles, atol=1e-5)
    assert not batched.requires_grad
    assert all(p.grad is None for p in model.parameters())  # autograd.grad, not backward()

    def live_tensors() -> int:
        return _live_tensors()

    compute_cams(model, x)
    before = live_tensors()
    for _ in range(20):
        logits, cams = compute_cams(model, x)
        del logits, cams
    assert live_tensors() <= before + 2


def test_predictor_memory_stable_over_repeated_calls() -> None:
    torch.manual_seed(4)
    _, pred = _binary_predictor("pneumonet_small", temperature=1.0, input_size=64)
    x = torch.randn(8, 1, 64, 64)
    pred.predict_tensors(x)
    before = _live_tensors()
    for _ in range(10):
        out = pred.predict_tensors(x)
    del out
    after = _live_tensors()
    assert after <= before + 2


def test_bounding_box() -> None:
    h = np.zeros((20, 40), np.float32)
    h[5:10, 30:36] = 1.0  # strongest region
    h[12:18, 2:8] = 0.7  # weaker, disconnected
    assert bounding_box(h, frac=0.5) == pytest.approx((30 / 40, 5 / 20, 36 / 40, 10 / 20))
    assert bounding_box(np.zeros((8, 8))) is None
    with pytest.raises(ValueError):
        bounding_box(np.zeros(5))


def test_bounding_box_on_a_coarser_grid_stays_within_one_step_of_the_exact_box() -> None:
    # A CAM as served: a 6x6 map with two separate hot cells, upsampled to 192 px.
    raw = torch.zeros(1, 6, 6)
    raw[0, 1, 4], raw[0, 4, 1] = 1.0, 0.6
    heat = upsample(raw, 192)[0].numpy()
    exact = bounding_box(heat)
    coarse = bounding_box(heat, step=4)
    assert exact is not None and coarse is not None
    assert coarse == pytest.approx(exact, abs=4 / 192)
    assert coarse[0] > 0.5 and coarse[3] < 0.5  # still the stronger, upper-right region
    assert bounding_box(np.zeros((192, 192)), step=4) is None


def test_overlay_and_heatmap_png() -> None:
    gray = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (200, 1))
    heat = np.zeros((7, 7), np.float32)
    heat[3, 5] = 1.0
    data = overlay_png(gray, heat, alpha=0.5, bbox=(0.6, 0.3, 0.9, 0.7))
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (300, 200) and img.mode == "RGB"
    arr = np.asarray(img).astype(int)
    # hot spot is tinted (red > blue), a cold corner keeps the gray value (r == g == b)
    assert arr[100, 220, 0] > arr[100, 220, 2]
    assert abs(arr[5, 5, 0] - arr[5, 5, 2]) <= 1
    big = overlay_png(np.zeros((2000, 1000), np.float32), heat, fmt="jpeg")
    big_img = Image.open(io.BytesIO(big))
    assert big_img.format == "JPEG" and big_img.size == (256, 512)
    hp = Image.open(io.BytesIO(heatmap_png(heat, size=64)))
    assert hp.format == "PNG" and hp.size == (64, 64) and "transparency" in hp.info
    rgba = np.asarray(hp.convert("RGBA")).astype(int)
    # hot spot (row 3, column 5 of 7) opaque and red; a cold corner fully transparent
    hot = rgba[int(3.5 / 7 * 64), int(5.5 / 7 * 64)]
    assert hot[3] > 200 and hot[0] > hot[2]
    assert rgba[0, 0, 3] == 0
    with pytest.raises(ValueError):
        heatmap_png(np.zeros(5))
    # A batch is rendered like its images one by one.
    maps = np.stack([heat, np.eye(7, dtype=np.float32)])
    assert heatmap_pngs(maps) == [heatmap_png(heat), heatmap_png(np.eye(7, dtype=np.float32))]


def test_edge_band_shares_find_weight_and_peaks_in_the_neck_and_abdomen_bands() -> None:
    maps = np.zeros((3, 12, 12), np.float32)
    maps[0, 0, 5] = 1.0  # all weight in the top band, peak there
    maps[1] = 1.0  # uniform: 1/6 in each band
    maps[2, 6, 6], maps[2, 11, 0] = 2.0, 1.0  # peak in the middle, a third of it at the bottom
    shares = edge_band_shares(maps)
    assert shares["top"].tolist() == pytest.approx([1.0, 1 / 6, 0.0])
    assert shares["bottom"].tolist() == pytest.approx([0.0, 1 / 6, 1 / 3])
    assert shares["peak_at_edge"].tolist() == [True, True, False]  # uniform: first cell wins
    empty = edge_band_shares(np.zeros((1, 6, 6)))
    assert empty["top"][0] == 0.0 and empty["bottom"][0] == 0.0
    with pytest.raises(ValueError, match="stack"):
        edge_band_shares(np.zeros((6, 6)))
