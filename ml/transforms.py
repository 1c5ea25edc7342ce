"""Batched data augmentation for radiographs (applied to (B,1,H,W) tensors in [0,1]).

Why these and not the usual ImageNet recipe:

* Small rotations (±10°), translations (±6 %) and scale (0.9-1.15) mimic patient positioning
  and collimation differences between exposures; larger angles produce images that never
  occur in practice.
* Brightness/contrast/gamma changes mimic different exposure (kVp/mAs), detector and
  post-processing LUTs — the main source of shift between hospitals (and a known shift
  between the Kermany train and test sets).
* Mild Gaussian noise mimics quantum mottle in low-dose paediatric exposures.
* Random erasing of small patches discourages reliance on single local cues such as
  laterality markers or text burnt into corners (a known shortcut on this data set).
* **No vertical flip**: an upside-down chest never happens and would only waste capacity.
* **Horizontal flip is off by default**: it is label-preserving for pneumonia (consolidation
  can be on either side), but it creates anatomically impossible images (heart on the right)
  and mirrors the "L/R" markers, so the network could learn marker orientation as a cue. It is
  available (``hflip_p``) for experiments; in a quick test it did not help.

Implemented as one ``affine_grid``/``grid_sample`` call per batch so augmentation costs a few
milliseconds per batch on CPU instead of per-image PIL work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RadiographAugment:
    rotation_deg: float = 10.0
    translate: float = 0.06
    scale: tuple[float, float] = (0.9, 1.15)
    brightness: float = 0.12
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    erase_p: float = 0.25
    erase_frac: tuple[float, float] = (0.05, 0.15)
    hflip_p: float = 0.0
    # Collimation: black bands of up to ``collimate_frac`` of the side, top/bottom/left/right,
    # so that how much neck and abdomen a film shows cannot stand in for the label.
    collimate_p: float = 0.0
    collimate_frac: float = 0.12
    # Blur: a downsample-and-back by up to 2x, as for lower-resolution detectors or resizing.
    blur_p: float = 0.0

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Augment a (B,C,H,W) batch in [0,1]; returns a new tensor in [0,1]."""
        b, _, h, w = x.shape
        g = generator
        dev = x.device

        def u(lo: float, hi: float, n: int = b) -> torch.Tensor:
            return torch.rand(n, generator=g).to(dev) * (hi - lo) + lo

        # --- geometry: rotation, isotropic scale, translation, optional h-flip -------------
        ang = u(-self.rotation_deg, self.rotation_deg) * (math.pi / 180.0)
        # log-uniform zoom so zooming in and out are equally likely
        s = torch.exp(u(math.log(self.scale[0]), math.log(self.scale[1])))
        tx = u(-self.translate, self.translate) * 2.0
        ty = u(-self.translate, self.translate) * 2.0
        flip = torch.where(u(0.0, 1.0) < self.hflip_p, -1.0, 1.0)
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, tx], dim=1),
                torch.stack([sin * flip, cos, ty], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        # Zero padding = black, i.e. what a collimated / shifted exposure looks like.
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # --- intensity: gamma, contrast around the image mean, brightness ------------------
        gam = torch.exp(u(math.log(self.gamma[0]), math.log(self.gamma[1]))).view(b, 1, 1, 1)
        out = out.clamp(1e-6, 1.0).pow(gam)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        c = u(1.0 - self.contrast, 1.0 + self.contrast).view(b, 1, 1, 1)
        br = u(-self.brightness, self.brightness).view(b, 1, 1, 1)
        out = (out - mean) * c + mean + br
        if self.noise_std > 0:
            sigma = u(0.0, self.noise_std).view(b, 1, 1, 1)
            out = out + torch.randn(out.shape, generator=g).to(dev) * sigma

        # --- random erasing of one small rectangle per selected image ----------------------
        if self.erase_p > 0:
            do = (u(0.0, 1.0) < self.erase_p).tolist()
            area = u(self.erase_frac[0], self.erase_frac[1])
            aspect = torch.exp(u(math.log(0.5), math.log(2.0)))
            eh = (torch.sqrt(area * aspect) * h).long().clamp(1, h)
            ew = (torch.sqrt(area / aspect) * w).long().clamp(1, w)
            y0 = (u(0.0, 1.0) * (h - eh + 1).float()).long()
            x0 = (u(0.0, 1.0) * (w - ew + 1).float()).long()
            fill = u(0.0, 1.0)
            for i in range(b):
                if do[i]:
                    out[i, :, y0[i] : y0[i] + eh[i], x0[i] : x0[i] + ew[i]] = fill[i]
        if self.blur_p > 0:
            sel = (u(0.0, 1.0) < self.blur_p).nonzero().flatten()
            if len(sel):
                factor = float(u(1.3, 2.0, 1)[0])
                small = F.interpolate(out[sel], scale_factor=1.0 / factor, mode="bilinear",
                                      align_corners=False, antialias=True)
                out[sel] = F.interpolate(small, size=(h, w), mode="bilinear",
                                         align_corners=False)
        if self.collimate_p > 0:
            do = (u(0.0, 1.0) < self.collimate_p).tolist()
            bands = (u(0.0, self.collimate_frac, 4 * b).view(b, 4)
                     * torch.tensor([h, h, w, w], dtype=torch.float32, device=dev)).long().tolist()
            for i in range(b):
                if do[i]:
                    top, bottom, left, right = bands[i]
                    out[i, :, :top] = 0.0
                    out[i, :, h - bottom :] = 0.0
                    out[i, :, :, :left] = 0.0
                    out[i, :, :, w - right :] = 0.0
        return out.clamp_(0.0, 1.0)


def shift_augment() -> RadiographAugment:
    """The augmentation the shipped multi-head model is trained with: wider exposure and
    contrast, tighter and looser framing, mirror images, collimation and blur — the changes
    between sites that moved the first models' operating point (docs/model-card.md)."""
    return RadiographAugment(
        rotation_deg=12.0,
        translate=0.08,
        scale=(0.85, 1.35),
        brightness=0.15,
        contrast=0.35,
        gamma=(0.6, 1.6),
        noise_std=0.03,
        erase_p=0.3,
        hflip_p=0.5,
        collimate_p=0.3,
        blur_p=0.2,
    )
