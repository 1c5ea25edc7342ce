"""Class activation maps, bounding boxes and PNG/JPEG renderings.

* Plain CAM (Zhou et al. 2016) when the model ends in global-average-pool + Linear: the map for
  class c is ``sum_k (W[c, k] - mean_j W[j, k]) * A_k`` over the last feature maps A. We centre
  the class weights because softmax is invariant to adding one vector to every class's
  weights, so the raw ``W[c]`` map contains an arbitrary class-independent component; the
  centred map is the one that explains the class's score *relative to the other classes*. For
  two classes it is half the map of the logit margin ``logit_c - logit_other``.
  It is computed from the features of the *same* forward pass that produced the logits (no
  second pass, no gradients), so it runs under ``torch.inference_mode`` and cannot leak
  autograd graphs.
* Grad-CAM (Selvaraju et al. 2017) otherwise (e.g. vgg16, mobilenet_v3 whose heads are MLPs):
  channel weights are the spatial mean of d (logit_c - mean_j logit_j) / d A (the same
  centring as above, so Grad-CAM equals CAM for GAP+linear heads). The graph is freed
  immediately (``torch.autograd.grad`` without ``retain_graph``).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ml.models import CamModel


def _normalise_maps(cams: torch.Tensor) -> torch.Tensor:
    """ReLU then divide each map by its max -> [0, 1]. All-negative maps become zeros."""
    cams = cams.clamp(min=0)
    peak = cams.flatten(1).amax(dim=1).clamp(min=1e-12)
    return cams / peak.view(-1, 1, 1)


def cam_from_features(
    feats: torch.Tensor,
    linear: torch.nn.Linear,
    class_idx: torch.Tensor,
    rows: slice | None = None,
) -> torch.Tensor:
    """Plain CAM (B,h,w) in [0,1] for ``class_idx`` (B,) from GAP+linear features (B,K,h,w).

    ``rows`` selects one head of a multi-head linear layer: the classes are centred within
    that head (its softmax), and ``class_idx`` counts from the head's first row.
    """
    weight = linear.weight if rows is None else linear.weight[rows]
    w = (weight[class_idx] - weight.mean(dim=0, keepdim=True)).to(feats.dtype)  # (B, K)
    cams = torch.einsum("bk,bkhw->bhw", w, feats)
    return _normalise_maps(cams.float())


def grad_cam(
    model: CamModel,
    x: torch.Tensor,
    class_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM for a batch. Returns (logits, cams (B,h,w) in [0,1]); one forward pass.

    ``class_idx`` None means the argmax class. Samples are independent (eval-mode BN), so
    the gradient of the summed selected logits gives every sample its own gradient.
    """
    was_training = model.training
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        feats = model.features(x)
        if not feats.requires_grad:  # frozen weights: make the features a leaf we can grad
            feats = feats.detach().requires_grad_(True)
        logits = model.head(feats)
        idx = logits.argmax(1) if class_idx is None else class_idx.to(logits.device)
        selected = (logits.gather(1, idx[:, None])[:, 0] - logits.mean(dim=1)).sum()
        (grads,) = torch.autograd.grad(selected, feats)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cams = (weights * feats).sum(dim=1).detach()
    if was_training:
        model.train()
    return logits.detach(), _normalise_maps(cams.float())


def compute_cams(
    model: CamModel,
    x: torch.Tensor,
    class_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, cams) for a batch using plain CAM when possible, else Grad-CAM."""
    if model.linear is not None:
        with torch.inference_mode():
            feats, logits = model(x)
            idx = logits.argmax(1) if class_idx is None else class_idx.to(logits.device)
            return logits, cam_from_features(feats, model.linear, idx)
    return grad_cam(model, x, class_idx)


def upsample(cams: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B,h,w) -> (B,H,W) bilinear, renormalised to [0,1]."""
    if isinstance(size, int):
        size = (size, size)
    up = F.interpolate(cams[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return _normalise_maps(up[:, 0])


# --------------------------------------------------------------------------------------------
# Bounding box
# --------------------------------------------------------------------------------------------


def bounding_box(
    heatmap: np.ndarray,
    frac: float = 0.5,
    step: int = 1,
) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in [0,1] image coordinates of the connected region (8-connectivity)
    above ``frac * max`` that contains the maximum. None for an empty (all-zero) map.

    ``step`` > 1 finds the region on every ``step``-th row and column: a CAM upsampled from a
    6x6 grid has no detail finer than that, and labelling a 48x48 grid instead of 192x192
    takes a tenth of the time (the box moves by less than ``step`` pixels)."""
    from scipy import ndimage  # scipy ships with scikit-learn

    full = np.asarray(heatmap, dtype=np.float32)
    if full.ndim != 2 or full.size == 0:
        raise ValueError("heatmap must be a non-empty 2-D array")
    h = full[::step, ::step]
    peak = float(h.max())
    if not np.isfinite(peak) or peak <= 0:
        return None
    mask = h >= frac * peak
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    py, px = np.unravel_index(int(np.argmax(h)), h.shape)
    region = int(labels[py, px])
    rows, cols = ndimage.find_objects(labels, max_label=region)[region - 1]
    H, W = full.shape
    return (
        float(cols.start * step / W),
        float(rows.start * step / H),
        float(min(cols.stop * step, W) / W),
        float(min(rows.stop * step, H) / H),
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def edge_band_shares(heatmaps: np.ndarray, frac: float = 1 / 6) -> dict[str, np.ndarray]:
    """Per heatmap of an (N,S,S) stack: the share of its weight in the top and the bottom
    ``frac`` of the rows, and whether its peak lies there. On a frontal chest film those bands
    hold the neck and the upper abdomen, outside the lungs: weight there is evidence drawn from
    how the film is framed (a uniform map puts 2 x frac of its weight there)."""
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.ndim != 3 or h.shape[1] < 2:
        raise ValueError(f"expected an (N,S,S) stack of heatmaps, got shape {h.shape}")
    band = max(1, round(h.shape[1] * frac))
    total = h.sum(axis=(1, 2))
    total = np.where(total > 0, total, 1.0)
    peak_rows = h.reshape(len(h), -1).argmax(axis=1) // h.shape[2]
    return {
        "top": h[:, :band].sum(axis=(1, 2)) / total,
        "bottom": h[:, -band:].sum(axis=(1, 2)) / total,
        "peak_at_edge": (peak_rows < band) | (peak_rows >= h.shape[1] - band),
    }


def _jet(v: np.ndarray) -> np.ndarray:
    """Jet-like colormap in numpy (avoids importing matplotlib in serving): [0,1] -> RGB."""
    v = np.clip(v, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1)


def _resize_map(heatmap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0, 0]
    return up.clamp(0, 1).numpy()


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt.lower() in ("jpeg", "jpg"):
        img.convert("RGB").save(buf, format="JPEG", quality=85, optimize=True)
    elif fmt.lower() == "png":
        img.save(buf, format="PNG", optimize=True)
    else:
        raise ValueError(f"unsupported format {fmt!r} (png or jpeg)")
    return buf.getvalue()


def _fit(h: int, w: int, max_size: int | None) -> tuple[int, int]:
    if not max_size or max(h, w) <= max_size:
        return h, w
    s = max_size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def overlay_png(
    gray_pixels: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.45,
    bbox: tuple[float, float, float, float] | None = None,
    max_size: int | None = 512,
    fmt: str = "png",
) -> bytes:
    """The radiograph with the heatmap blended on top (and optionally the bbox) as PNG/JPEG.

    ``gray_pixels``: HxW float in [0,1] (uint8 accepted). The heat is blended with opacity
    ``alpha * heat`` so cold regions keep the original image untouched. The output is at most
    ``max_size`` px on its longest side to keep stored overlays small.
    """
    g = np.asarray(gray_pixels)
    if g.dtype == np.uint8:
        g = g.astype(np.float32) / 255.0
    g = np.clip(g.astype(np.float32), 0.0, 1.0)
    if g.ndim != 2:
        raise ValueError("gray_pixels must be HxW")
    oh, ow = _fit(*g.shape, max_size)
    if (oh, ow) != g.shape:
        g = _resize_map(g, (oh, ow))
    heat = _resize_map(heatmap, (oh, ow))
    a = (alpha * heat)[..., None]
    rgb = (1.0 - a) * g[..., None] + a * _jet(heat)
    img = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    if bbox is not None:
        x0, y0, x1, y1 = bbox
        draw = ImageDraw.Draw(img)
        draw.rectangle(
            [x0 * ow, y0 * oh, x1 * ow - 1, y1 * oh - 1],
            outline=(0, 255, 0),
            width=max(1, round(max(oh, ow) / 256)),
        )
    return _encode(img, fmt)


def _heat_palette() -> bytes:
    """256 RGBA entries: jet colour, opacity growing with the heat.

    Below a fifth of the peak the map is fully transparent, so the parts of the radiograph
    that did not drive the decision stay untinted.
    """
    v = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    alpha = np.clip((v - 0.2) / 0.8, 0.0, 1.0)
    rgba = np.concatenate([_jet(v), alpha[:, None]], axis=-1)
    return (rgba * 255.0 + 0.5).astype(np.uint8).tobytes()


_HEAT_PALETTE = _heat_palette()


def heatmap_levels(heatmaps: np.ndarray | torch.Tensor, size: int = 64) -> np.ndarray:
    """Heatmaps (B,H,W) in [0,1] -> (B,size,size) uint8, resized in one antialiased op."""
    maps = torch.as_tensor(heatmaps, dtype=torch.float32)
    if maps.ndim != 3 or maps.numel() == 0:
        raise ValueError("heatmaps must be a non-empty (B,H,W) array")
    maps = torch.nan_to_num(maps).clamp(0.0, 1.0)[:, None]
    if tuple(maps.shape[-2:]) != (size, size):
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
    return (maps[:, 0].clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def levels_png(levels: np.ndarray) -> bytes:
    """A (H,W) uint8 heat level map as a palette PNG with transparency (jet, cold = clear)."""
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    img = Image.frombytes("P", (levels.shape[1], levels.shape[0]), levels.tobytes())
    img.putpalette(_HEAT_PALETTE, rawmode="RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def heatmap_pngs(heatmaps: np.ndarray | torch.Tensor, size: int = 64) -> list[bytes]:
    """Heatmaps (B,H,W) in [0,1] as small palette PNGs with transparency, for the viewer.

    The viewer stretches each over its radiograph (the model input is the squashed image, so
    the map covers the whole image) and the browser interpolates smoothly; CAMs are coarse
    (6x6 for pneumonet), so 64 px lose nothing. Palette + tRNS keeps a PNG at ~4 kB and
    ~0.2 ms to encode.
    """
    return [levels_png(level) for level in heatmap_levels(heatmaps, size=size)]


def heatmap_png(heatmap: np.ndarray, size: int = 64) -> bytes:
    """One heatmap (H,W) as a palette PNG with transparency (see ``heatmap_pngs``)."""
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2 or h.size == 0:
        raise ValueError("heatmap must be a non-empty 2-D array")
    return heatmap_pngs(h[None], size=size)[0]
