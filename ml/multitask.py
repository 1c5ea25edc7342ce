"""Training of the shipped model: one network, three heads, one forward pass.

* ``binary``   normal / pneumonia
* ``etiology`` normal / bacterial / viral
* ``scope``    in_scope / adult / lateral / not_chest_radiograph / inverted (ml.scope)

The heads are slices of one linear layer on the global-average-pooled features
(``HEADS``), so plain CAM for any class of any head comes from the same features, and the
serving cost is one trunk pass for all three answers.

Training is shaped like torchvision's reference scripts: ``build_data``, ``build_model_for``,
``build_optimizer``, ``train_one_epoch``, ``evaluate``; ``train`` runs them and chooses the
operating points (``choose_operating_points``). What every training shares (seeding, device,
optimiser and schedule, class weights, batched inference) comes from ``ml.engine``.

Selection and operating points are chosen for an *unseen site*, not for the validation split:
the model is selected on the mean of clean and perturbed validation AUCs (``STRESS``: exposure,
contrast, framing, mirroring, blur — what moved the first models), and the threshold is chosen
on the pooled perturbed validation set (``threshold_for_site``).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.calibration import apply_temperature, fit_temperature, threshold_for_sensitivity
from ml.data import (
    TASK_CLASSES,
    Record,
    decode_resized,
    discover,
    label_index,
    summarize,
    training_split,
)
from ml.engine import (
    GRAY_MEAN,
    GRAY_STD,
    balanced_weights,
    build_optimizer,
    predict_logits,
    seed_everything,
    setup_device,
)
from ml.metrics import auc_or_chance, compute_metrics, full_report, macro_roc_auc
from ml.models import CamModel, build_model, count_parameters
from ml.predictor import Predictor
from ml.preprocess import normalize
from ml.scope import SCOPE_CLASSES, scope_verdicts
from ml.scope_data import (
    ScopeRecord,
    scope_records,
    split_scope_records,
    synthetic_non_radiographs,
)
from ml.transforms import shift_augment

HEADS: dict[str, list[str]] = {
    "binary": TASK_CLASSES["binary"],
    "etiology": TASK_CLASSES["etiology"],
    "scope": SCOPE_CLASSES,
}
IGNORE = -100  # F.cross_entropy's default ignore_index


def head_slices(heads: dict[str, list[str]] = HEADS) -> dict[str, tuple[int, int]]:
    """Where each head's logits lie in the model's single output vector."""
    out, start = {}, 0
    for name, classes in heads.items():
        out[name] = (start, start + len(classes))
        start += len(classes)
    return out


# --------------------------------------------------------------------------------------------
# Perturbations of the stress test (deterministic; (B,1,S,S) in [0,1])
# --------------------------------------------------------------------------------------------


def _gamma(g: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x.clamp(1e-6, 1).pow(g)


def _contrast(c: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - m) * c + m).clamp(0, 1)

    return f


def _zoom_in(x: torch.Tensor) -> torch.Tensor:
    s = x.shape[-1]
    c = round(s * 0.83)
    o = (s - c) // 2
    return F.interpolate(x[..., o : o + c, o : o + c], size=(s, s), mode="bilinear",
                         align_corners=False, antialias=True)


def _zoom_out(x: torch.Tensor) -> torch.Tensor:
    s = x.shape[-1]
    c = round(s * 0.83)
    o = (s - c) // 2
    out = torch.zeros_like(x)
    out[..., o : o + c, o : o + c] = F.interpolate(x, size=(c, c), mode="bilinear",
                                                   align_corners=False, antialias=True)
    return out


def _blur(x: torch.Tensor) -> torch.Tensor:
    s = x.shape[-1]
    small = F.interpolate(x, size=(s // 2, s // 2), mode="bilinear", align_corners=False,
                          antialias=True)
    return F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)


STRESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gamma 0.7 (brighter)": _gamma(0.7),
    "gamma 1.4 (darker)": _gamma(1.4),
    "contrast x0.7": _contrast(0.7),
    "contrast x1.3": _contrast(1.3),
    "zoom in (central 83 % crop)": _zoom_in,
    "zoom out (black border)": _zoom_out,
    "mirrored (left-right)": lambda x: x.flip(-1),
    "blur (half resolution)": _blur,
}
# The subset used for model selection every epoch (the full set runs once at the end).
SELECTION_STRESS = ("gamma 1.4 (darker)", "contrast x1.3", "zoom in (central 83 % crop)",
                    "mirrored (left-right)")


# --------------------------------------------------------------------------------------------
# Configuration and data
# --------------------------------------------------------------------------------------------


@dataclass
class MultiTaskConfig:
    arch: str = "pneumonet"
    epochs: int = 30
    input_size: int = 192
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    scope_weight: float = 0.5
    # Bacterial vs viral is the hardest distinction the model makes; its loss counts more.
    etiology_weight: float = 1.0
    # The gate's P(in_scope) threshold never exceeds this, however confident the paediatric
    # validation images are: a ceiling against a threshold fitted to one centre's images.
    scope_threshold_max: float = 0.95
    invert_p: float = 0.05
    # Mixup (Zhang et al. 2018): pairs of training images blended with weight ~ Beta(a, a)
    # and their losses blended alike; 0 turns it off. Softer targets against the confident
    # over-calls a new site brought the first models.
    mixup_alpha: float = 0.0
    # Learning without forgetting (Li & Hoiem 2016): a checkpoint (or several, comma-separated,
    # averaged) whose etiology answers the etiology head is also taught on every paediatric
    # training image, as softened probabilities (temperature ``distill_temperature``), with
    # weight ``distill_weight``. The separate v1 etiology model told bacterial from viral
    # better than the shared trunk did.
    distill_from: str | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 2.0
    adult_per_epoch: int = 1200
    lateral_per_epoch: int = 160
    other_per_epoch: int = 700
    synthetic: int = 1800
    seed: int = 42
    val_fraction: float = 0.15
    scope_val_fraction: float = 0.2
    operating_sensitivity: float = 0.95
    # Share of paediatric validation images (clean and perturbed) the gate may turn away.
    scope_paediatric_out_max: float = 0.005
    patience: int = 8
    # Epochs whose selection score is within this of the best so far count as equal, and the
    # later one is kept: late epochs of the schedule train at low learning rates and see more
    # out-of-scope draws, and score differences this small are noise on 757 images.
    select_tolerance: float = 5e-4
    threads: int | None = 2
    device: str | None = None
    max_train_images: int | None = None
    # A single-task checkpoint of the same architecture whose trunk (and heads, where they
    # map) start this model: fine-tuning instead of training from scratch.
    init_from: str | None = None
    name: str = "pneumo-multi"
    version: str = "2.0.0"
    progress: bool = True
    bootstrap: int = 1000


@dataclass
class Split:
    """Images (uint8, N x S x S) and per-head labels (IGNORE where a head has no label)."""

    images: torch.Tensor
    binary: torch.Tensor
    etiology: torch.Tensor
    scope: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)

    def select(self, idx: torch.Tensor) -> Split:
        return Split(self.images[idx], self.binary[idx], self.etiology[idx], self.scope[idx])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.images[idx].float().div_(255.0).unsqueeze(1)
        return x, {"binary": self.binary[idx], "etiology": self.etiology[idx],
                   "scope": self.scope[idx]}


def _decode_all(paths: Sequence[Path], size: int, log: Callable[[str], None]
                ) -> tuple[torch.Tensor, list[int]]:
    images, kept, skipped = decode_resized(paths, size)
    for path, why in skipped:
        log(f"skipped unreadable image {path}: {why}")
    return images, kept


def _paediatric_split(records: Sequence[Record], size: int, log: Callable[[str], None]
                      ) -> tuple[Split, list[Record]]:
    images, kept = _decode_all([r.path for r in records], size, log)
    recs = [records[i] for i in kept]
    eti = [label_index(r.label, "etiology") for r in recs]
    return Split(
        images,
        torch.tensor([label_index(r.label, "binary") for r in recs], dtype=torch.long),
        torch.tensor([IGNORE if e is None else e for e in eti], dtype=torch.long),
        torch.zeros(len(recs), dtype=torch.long),
    ), recs


def _scope_split(images: torch.Tensor, reasons: Sequence[str]) -> Split:
    n = len(images)
    ignore = torch.full((n,), IGNORE, dtype=torch.long)
    return Split(images, ignore, ignore.clone(),
                 torch.tensor([SCOPE_CLASSES.index(r) for r in reasons], dtype=torch.long))


def _concat(parts: Sequence[Split]) -> Split:
    return Split(*(torch.cat([getattr(p, f) for p in parts])
                   for f in ("images", "binary", "etiology", "scope")))


@dataclass
class Data:
    train_paed: Split
    train_scope: Split
    val_paed: Split
    val_scope: Split  # adult, lateral, not-chest (inverted is made from val_paed)
    summary: dict[str, Any]
    # The folder each val_scope example came from ("synthetic" for the made ones): the gate's
    # rate on adult pneumonia differs from its rate on adult normals, so both are reported.
    val_scope_sources: list[str]


def build_data(cfg: MultiTaskConfig, paediatric_root: str | Path, scope_root: str | Path,
               log: Callable[[str], None]) -> Data:
    records = [r for r in discover(paediatric_root) if label_index(r.label, "binary") is not None]
    train_recs, val_recs = training_split(records, cfg.val_fraction, cfg.seed,
                                          cfg.max_train_images)
    log(f"decoding {len(train_recs)} + {len(val_recs)} paediatric images at {cfg.input_size}px")
    train_paed, train_recs = _paediatric_split(train_recs, cfg.input_size, log)
    val_paed, val_recs = _paediatric_split(val_recs, cfg.input_size, log)

    neg = scope_records(scope_root)
    neg_train, neg_val = split_scope_records(neg, cfg.scope_val_fraction, cfg.seed)
    if cfg.max_train_images:
        rng = np.random.default_rng(cfg.seed)
        neg_train = [neg_train[i] for i in sorted(
            rng.choice(len(neg_train), min(len(neg_train), cfg.max_train_images), replace=False))]
    log(f"decoding {len(neg_train)} + {len(neg_val)} out-of-scope images")

    def scope_part(recs: Sequence[ScopeRecord]) -> tuple[Split, list[ScopeRecord]]:
        imgs, kept = _decode_all([r.path for r in recs], cfg.input_size, log)
        kept_recs = [recs[i] for i in kept]
        return _scope_split(imgs, [r.reason for r in kept_recs]), kept_recs

    neg_train_split, neg_train = scope_part(neg_train)
    neg_val_split, neg_val = scope_part(neg_val)
    # Synthetic non-radiographs; the radiograph crops come from each side's own images only.
    n_syn_val = max(1, round(cfg.synthetic * cfg.scope_val_fraction))
    syn_train = synthetic_non_radiographs(
        cfg.synthetic, cfg.input_size, cfg.seed,
        [t.numpy() / 255.0 for t in train_paed.images[:400]]
        + [t.numpy() / 255.0 for t in neg_train_split.images[:400]])
    syn_val = synthetic_non_radiographs(
        n_syn_val, cfg.input_size, cfg.seed + 1,
        [t.numpy() / 255.0 for t in val_paed.images[:200]]
        + [t.numpy() / 255.0 for t in neg_val_split.images[:200]])
    train_scope = _concat([neg_train_split, _scope_split(
        torch.from_numpy(syn_train), ["not_chest_radiograph"] * len(syn_train))])
    val_scope = _concat([neg_val_split, _scope_split(
        torch.from_numpy(syn_val), ["not_chest_radiograph"] * len(syn_val))])

    def count(split: Split) -> dict[str, int]:
        c = torch.bincount(split.scope, minlength=len(SCOPE_CLASSES)).tolist()
        return {k: int(v) for k, v in zip(SCOPE_CLASSES, c, strict=True) if v}

    summary = {
        "paediatric": {
            "train": summarize(train_recs, "etiology"),
            "val": summarize(val_recs, "etiology"),
            "split": "by patient, stratified by label",
            "split_seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
        },
        "scope": {
            "train": count(train_scope),
            "val": count(val_scope),
            "split": "by file, stratified by reason (no patient identifiers)",
            "synthetic_not_chest": {"train": len(syn_train), "val": len(syn_val)},
        },
    }
    sources = [r.path.parent.name for r in neg_val] + ["synthetic"] * len(syn_val)
    return Data(train_paed, train_scope, val_paed, val_scope, summary, sources)


# --------------------------------------------------------------------------------------------
# Model, optimiser, one epoch, evaluation
# --------------------------------------------------------------------------------------------


def build_model_for(cfg: MultiTaskConfig) -> CamModel:
    return build_model(cfg.arch, sum(len(c) for c in HEADS.values()))


def init_from_checkpoint(model: CamModel, path: str, arch: str) -> list[str]:
    """Start from a single-task checkpoint: the trunk is copied; its head's rows go to the
    matching head (etiology -> etiology; its normal row and the mean of its pneumonia rows
    -> binary; binary -> binary). Returns the names of tensors left as initialised."""
    from ml.checkpoint import load_checkpoint

    state, meta = load_checkpoint(path)
    if meta.get("arch") != arch:
        raise ValueError(f"{path}: architecture {meta.get('arch')!r} does not match")
    own = model.state_dict()
    kept = [k for k in own if k in state and state[k].shape == own[k].shape]
    for k in kept:
        own[k] = state[k]
    slices = head_slices()
    for name in ("head.fc.weight", "head.fc.bias", "linear.weight", "linear.bias"):
        if name not in state or name not in own:
            continue
        src = state[name]
        if meta["task"] == "etiology":
            a, b = slices["etiology"]
            own[name][a:b] = src
            a, _ = slices["binary"]
            own[name][a] = src[0]
            own[name][a + 1] = src[1:].mean(0)
        elif meta["task"] == "binary":
            a, b = slices["binary"]
            own[name][a:b] = src
        kept.append(name)
    model.load_state_dict(own)
    return sorted(k for k in own if k not in kept)


def multitask_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor],
                   weights: dict[str, torch.Tensor | None], cfg: MultiTaskConfig
                   ) -> torch.Tensor:
    total = logits.new_zeros(())
    for name, (a, b) in head_slices().items():
        y = targets[name]
        if not bool((y != IGNORE).any()):
            continue
        loss = F.cross_entropy(logits[:, a:b].float(), y, weight=weights[name],
                               ignore_index=IGNORE, label_smoothing=cfg.label_smoothing)
        scale = {"scope": cfg.scope_weight, "etiology": cfg.etiology_weight}.get(name, 1.0)
        total = total + scale * loss
    return total


def mixup_batch(x: torch.Tensor, alpha: float, gen: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(blended images, the partner of each image, its weight): ``lam * x + (1 - lam) *
    x[partner]``, ``lam ~ Beta(alpha, alpha)`` drawn from ``gen`` (reproducible)."""
    partner = torch.randperm(len(x), generator=gen)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam * x + (1.0 - lam) * x[partner.to(x.device)], partner, lam


class EtiologyTeacher:
    """The etiology probabilities of frozen checkpoints (single-task etiology, or multi) at a
    temperature, averaged, for the batches the student sees. ``paths``: one checkpoint, or
    several separated by commas (an ensemble, taught as one)."""

    def __init__(self, paths: str, cfg: MultiTaskConfig, device: torch.device) -> None:
        self.members = [self._load(p.strip(), cfg, device) for p in paths.split(",") if p.strip()]
        if not self.members:
            raise ValueError("no teacher checkpoint given")
        self.temperature = cfg.distill_temperature

    @staticmethod
    def _load(path: str, cfg: MultiTaskConfig, device: torch.device) -> Predictor:
        # Serving's reading of a checkpoint finds the etiology rows of either kind; the
        # thread count stays the training's, and the eager model keeps the teacher exact.
        teacher = Predictor.from_checkpoint(path, device=device, optimize=False,
                                            threads=torch.get_num_threads(), head="etiology")
        if teacher.head != "etiology":
            raise ValueError(f"{path}: a {teacher.head!r} checkpoint has no etiology answer")
        if (teacher.input_size, teacher.mean, teacher.std, teacher.channels) != (
                cfg.input_size, GRAY_MEAN, GRAY_STD, 1):
            raise ValueError(f"{path}: preprocessing {teacher.spec} differs from the student's")
        if teacher.classes != HEADS["etiology"]:
            raise ValueError(f"{path}: etiology classes {teacher.classes} differ from "
                             f"{HEADS['etiology']}")
        return teacher

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([
                torch.softmax(t.head_logits(t.model(x)[1]).float() / self.temperature, dim=1)
                for t in self.members]).mean(0)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """KL(teacher || student) on the etiology head over the ``mask`` rows, times T² so that its
    gradients keep their scale whatever the temperature (Hinton et al. 2015)."""
    if not bool(mask.any()):
        return logits.new_zeros(())
    a, b = head_slices()["etiology"]
    student = F.log_softmax(logits[mask, a:b].float() / temperature, dim=1)
    kl = F.kl_div(student, teacher[mask], reduction="batchmean")
    return kl * temperature**2


def epoch_indices(data: Data, cfg: MultiTaskConfig, gen: torch.Generator
                  ) -> tuple[Split, torch.Tensor]:
    """This epoch's samples: every paediatric training image plus a fresh draw of
    out-of-scope examples per reason (rare reasons are drawn with replacement)."""
    parts = [data.train_paed]
    scope = data.train_scope
    for reason, n in (("adult", cfg.adult_per_epoch), ("lateral", cfg.lateral_per_epoch),
                      ("not_chest_radiograph", cfg.other_per_epoch)):
        pool = (scope.scope == SCOPE_CLASSES.index(reason)).nonzero().flatten()
        if len(pool) == 0 or n <= 0:
            continue
        pick = pool[torch.randint(len(pool), (n,), generator=gen)]
        parts.append(scope.select(pick))
    merged = _concat(parts)
    return merged, torch.randperm(len(merged), generator=gen)


def train_one_epoch(model: CamModel, data: Data, cfg: MultiTaskConfig,
                    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                    weights: dict[str, torch.Tensor | None], gen: torch.Generator,
                    device: torch.device, epoch: int,
                    teacher: EtiologyTeacher | None = None) -> float:
    model.train()
    augment = shift_augment()
    merged, perm = epoch_indices(data, cfg, gen)
    inverted = SCOPE_CLASSES.index("inverted")
    running, seen = 0.0, 0
    from tqdm import tqdm

    steps = len(perm) // cfg.batch_size
    for step in tqdm(range(steps), desc=f"epoch {epoch}", unit="batch", leave=False,
                     disable=not cfg.progress, file=sys.stderr):
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = merged.batch(idx)
        # Augmented on the CPU: shift_augment's collimation and blur have not yet run on a GPU
        # (ml.engine's augmentation, which has, runs on the training device).
        x = augment(x, generator=gen)
        # Negative grey scale (a MONOCHROME1 image shown as MONOCHROME2, an inverted export):
        # made from any image of the batch, it has no pneumonia label.
        flip = torch.rand(len(idx), generator=gen) < cfg.invert_p
        if bool(flip.any()):
            x[flip] = 1.0 - x[flip]
            y = {k: v.clone() for k, v in y.items()}
            y["scope"][flip] = inverted
            y["binary"][flip] = IGNORE
            y["etiology"][flip] = IGNORE
        partner, lam = None, 1.0
        if cfg.mixup_alpha > 0:
            x, partner, lam = mixup_batch(x, cfg.mixup_alpha, gen)
        x = normalize(x, GRAY_MEAN, GRAY_STD, 1).to(device)
        _, logits = model(x)
        y = {k: v.to(device) for k, v in y.items()}
        loss = lam * multitask_loss(logits, y, weights, cfg)
        if partner is not None:
            # A head without a label for either image of a pair (IGNORE) learns from the other.
            partner = partner.to(device)
            loss = loss + (1.0 - lam) * multitask_loss(
                logits, {k: v[partner] for k, v in y.items()}, weights, cfg)
        taught = y["etiology"] != IGNORE
        if teacher is not None and bool(taught.any()):
            # Paediatric images only (not inverted): where the teacher was trained to answer;
            # the others are not passed through it at all (a wide teacher costs more than the
            # student's own step).
            probs = logits.new_zeros((len(x), len(HEADS["etiology"])))
            probs[taught] = teacher.probs(x[taught])
            loss = loss + cfg.distill_weight * distill_loss(
                logits, probs, taught, cfg.distill_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.item()) * len(idx)
        seen += len(idx)
    return running / max(seen, 1)


def head_probs(logits: torch.Tensor, name: str, temperature: float = 1.0) -> np.ndarray:
    a, b = head_slices()[name]
    return apply_temperature(logits[:, a:b], temperature)


def evaluate(model: CamModel, data: Data, device: torch.device,
             stress: Sequence[str] = SELECTION_STRESS) -> dict[str, float]:
    """Selection metrics: clean and perturbed pneumonia AUC, etiology macro AUC, and the
    gate's AUC (paediatric, clean and perturbed, against every out-of-scope example)."""
    val = data.val_paed
    is_pneu = (val.binary == 1).numpy()
    clean = predict_logits(model, val.images, device)
    out: dict[str, float] = {"val_auc": auc_or_chance(is_pneu, head_probs(clean, "binary")[:, 1])}
    eti = head_probs(clean, "etiology")
    out["val_etiology_macro_auc"] = macro_roc_auc(val.etiology.numpy(), eti)
    out["val_etiology_accuracy_argmax"] = float((eti.argmax(1) == val.etiology.numpy()).mean())
    p_in = [head_probs(clean, "scope")[:, 0]]
    stress_aucs = []
    for name in stress:
        logits = predict_logits(model, val.images, device, STRESS[name])
        stress_aucs.append(auc_or_chance(is_pneu, head_probs(logits, "binary")[:, 1]))
        p_in.append(head_probs(logits, "scope")[:, 0])
    out["val_stress_auc"] = float(np.mean(stress_aucs)) if stress_aucs else out["val_auc"]
    neg = head_probs(predict_logits(model, data.val_scope.images, device), "scope")[:, 0]
    inv = head_probs(predict_logits(model, val.images, device, lambda x: 1.0 - x),
                     "scope")[:, 0]
    paed = np.concatenate(p_in)
    others = np.concatenate([neg, inv])
    out["val_scope_auc"] = auc_or_chance(np.r_[np.ones(len(paed)), np.zeros(len(others))],
                                         np.concatenate([paed, others]))
    out["score"] = (0.4 * out["val_stress_auc"] + 0.2 * out["val_auc"]
                    + 0.2 * out["val_etiology_macro_auc"] + 0.2 * out["val_scope_auc"])
    return out


# --------------------------------------------------------------------------------------------
# Operating points
# --------------------------------------------------------------------------------------------


def threshold_for_site(scores: np.ndarray, positive: np.ndarray, sensitivity: float) -> float:
    """The threshold for a new site, chosen on *perturbed* validation images pooled together:
    the Youden-optimal threshold when it keeps ``sensitivity``, else the largest threshold
    that does. On same-centre images alone the threshold sits where those images' scores
    happen to fall; pooled over exposure, contrast and framing changes it sits where the
    classes separate under the changes a new site brings."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(positive, scores)
    cap = threshold_for_sensitivity(scores, positive, sensitivity)
    finite = np.isfinite(thr)
    j = np.where(finite & (tpr >= sensitivity), tpr - fpr, -np.inf)
    best = float(thr[int(np.argmax(j))]) if np.isfinite(j).any() else cap
    return float(min(best, cap)) if best > cap else float(best)


def choose_operating_points(model: CamModel, data: Data, cfg: MultiTaskConfig,
                            device: torch.device) -> dict[str, Any]:
    val = data.val_paed
    clean = predict_logits(model, val.images, device)
    perturbed = {name: predict_logits(model, val.images, device, f) for name, f in STRESS.items()}
    pooled = torch.cat([clean, *perturbed.values()])
    n_copies = 1 + len(perturbed)
    heads: dict[str, dict[str, Any]] = {}
    for name in ("binary", "etiology"):
        a, b = head_slices()[name]
        labels = getattr(val, name)
        mask = labels != IGNORE
        temperature = fit_temperature(clean[mask][:, a:b], labels[mask])
        probs = apply_temperature(pooled[:, a:b], temperature)
        pos = (labels != 0).numpy().astype(bool)
        threshold = threshold_for_site(1.0 - probs[:, 0], np.tile(pos, n_copies),
                                       cfg.operating_sensitivity)
        heads[name] = {"classes": HEADS[name], "slice": [a, b], "temperature": temperature,
                       "threshold": threshold}
    # Gate: temperature on all validation scope examples; threshold so that at most
    # scope_paediatric_out_max of paediatric images (clean and perturbed) are turned away.
    a, b = head_slices()["scope"]
    neg = predict_logits(model, data.val_scope.images, device)
    inv = predict_logits(model, val.images, device, lambda x: 1.0 - x)
    scope_logits = torch.cat([pooled, neg, inv])
    scope_labels = torch.cat([torch.zeros(len(pooled), dtype=torch.long), data.val_scope.scope,
                              torch.full((len(inv),), SCOPE_CLASSES.index("inverted"))])
    t_scope = fit_temperature(scope_logits[:, a:b], scope_labels)
    p_in = apply_temperature(pooled[:, a:b], t_scope)[:, 0]
    # As strict as the paediatric images allow: the threshold sits at their
    # scope_paediatric_out_max quantile, so every out-of-scope image less in-scope-looking
    # than that is turned away (a fixed 0.5 let through adults the paediatric images never
    # resemble).
    threshold = float(min(cfg.scope_threshold_max,
                          np.quantile(p_in, cfg.scope_paediatric_out_max)))
    heads["scope"] = {"classes": SCOPE_CLASSES, "slice": [a, b], "temperature": t_scope,
                      "threshold": threshold}
    return heads


def validation_report(model: CamModel, data: Data, heads: dict[str, Any],
                      device: torch.device, n_boot: int, seed: int) -> dict[str, Any]:
    """Metrics at the chosen operating points: each head on the clean split, the stress test,
    and the gate's out-of-scope rates per reason."""
    val = data.val_paed
    clean = predict_logits(model, val.images, device)
    report: dict[str, Any] = {}
    for name in ("binary", "etiology"):
        h = heads[name]
        labels = getattr(val, name).numpy()
        probs = head_probs(clean, name, h["temperature"])
        rep = full_report(probs, labels, HEADS[name], h["threshold"], n_boot=n_boot, seed=seed)
        rep.pop("report", None)
        report[name] = rep
    stress: dict[str, Any] = {}
    scope_t, scope_thr = heads["scope"]["temperature"], heads["scope"]["threshold"]
    b = heads["binary"]
    for name, f in {"none": None, **STRESS}.items():
        logits = predict_logits(model, val.images, device, f)
        m = compute_metrics(head_probs(logits, "binary", b["temperature"]), val.binary.numpy(),
                            HEADS["binary"], b["threshold"])
        in_scope, _ = scope_verdicts(head_probs(logits, "scope", scope_t), scope_thr)
        stress[name] = {k: m[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")}
        stress[name]["out_of_scope_rate"] = float(1.0 - in_scope.mean())
    report["stress"] = stress
    gate: dict[str, Any] = {}
    neg_logits = predict_logits(model, data.val_scope.images, device)
    inv_logits = predict_logits(model, val.images, device, lambda x: 1.0 - x)
    groups = {"paediatric (clean)": clean, "inverted paediatric": inv_logits}
    for i, reason in enumerate(SCOPE_CLASSES):
        mask = data.val_scope.scope == i
        if bool(mask.any()):
            groups[f"{reason} examples"] = neg_logits[mask]
    sources = np.array(data.val_scope_sources)
    adult = (data.val_scope.scope == SCOPE_CLASSES.index("adult")).numpy()
    for source in sorted(set(sources[adult])):
        groups[f"adult examples: {source}"] = neg_logits[torch.from_numpy(
            adult & (sources == source))]
    for group, logits in groups.items():
        in_scope, reason_idx = scope_verdicts(head_probs(logits, "scope", scope_t), scope_thr)
        counts = np.bincount(reason_idx, minlength=len(SCOPE_CLASSES))
        gate[group] = {"n": len(logits), "out_of_scope_rate": float(1.0 - in_scope.mean()),
                       "reasons": {SCOPE_CLASSES[j]: int(c) for j, c in enumerate(counts)
                                   if c and j > 0}}
    report["scope"] = gate
    return report


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


def keeps_epoch(score: float, best_so_far: float, tolerance: float) -> bool:
    """Whether an epoch replaces the selected one: not worse than the best so far by more
    than ``tolerance`` (ties go to the later epoch)."""
    return score >= best_so_far - tolerance


@dataclass
class MultiTaskResult:
    model: CamModel
    meta: dict[str, Any]
    history: list[dict[str, float]]


def train(cfg: MultiTaskConfig, paediatric_root: str | Path, scope_root: str | Path,
          command: str = "", log: Callable[[str], None] | None = None,
          data: Data | None = None) -> MultiTaskResult:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t_start = time.time()
    seed_everything(cfg.seed)
    device = setup_device(cfg.device, cfg.threads)
    data = data or build_data(cfg, paediatric_root, scope_root, log)
    log(f"data {data.summary}")
    model = build_model_for(cfg)
    if cfg.init_from:
        fresh = init_from_checkpoint(model, cfg.init_from, cfg.arch)
        log(f"initialised from {cfg.init_from}; left as initialised: {fresh}")
    model = model.to(device)
    log(f"{cfg.arch}: {count_parameters(model) / 1e6:.2f} M parameters, device {device}")
    teacher = None
    if cfg.distill_from:
        # Building its network draws initial weights: from a forked stream, so the seeded
        # stream (dropout, sampling) is the same with and without a teacher.
        with torch.random.fork_rng(devices=[]):
            teacher = EtiologyTeacher(cfg.distill_from, cfg, device)
        log(f"etiology taught also by {cfg.distill_from} at temperature {cfg.distill_temperature}")
    gen = torch.Generator().manual_seed(cfg.seed)
    per_epoch = (len(data.train_paed) + cfg.adult_per_epoch + cfg.lateral_per_epoch
                 + cfg.other_per_epoch) // cfg.batch_size
    opt, sched = build_optimizer(model, cfg.lr, cfg.weight_decay,
                                 max(10, per_epoch * cfg.epochs + 1))
    weights: dict[str, torch.Tensor | None] = {
        "binary": balanced_weights(data.train_paed.binary, 2, IGNORE).to(device),
        "etiology": balanced_weights(data.train_paed.etiology, 3, IGNORE).to(device),
        "scope": None,
    }
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    improved_at = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        train_loss = train_one_epoch(model, data, cfg, opt, sched, weights, gen, device, epoch,
                                     teacher)
        row = {"epoch": epoch, "lr": float(opt.param_groups[0]["lr"]), "train_loss": train_loss,
               **evaluate(model, data, device), "seconds": time.time() - t0}
        history.append(row)
        if row["score"] > best_score + 1e-4:
            improved_at = epoch
        improved = keeps_epoch(row["score"], best_score, cfg.select_tolerance)
        if improved:
            best_score, best_epoch = max(best_score, row["score"]), epoch
            best_state = copy.deepcopy(model.state_dict())
        log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in row.items()) + (" *" if improved else ""))
        if epoch - improved_at >= cfg.patience:
            log(f"early stopping: no improvement for {cfg.patience} epochs")
            break
    model.load_state_dict(best_state)
    model.eval()
    heads = choose_operating_points(model, data, cfg, device)
    log(f"best epoch {best_epoch}; operating points {heads}")
    report = validation_report(model, data, heads, device, cfg.bootstrap, cfg.seed)
    meta: dict[str, Any] = {
        "arch": cfg.arch,
        "task": "multi",
        "heads": heads,
        # The binary head's operating point at the top level: what single-task readers use.
        "classes": HEADS["binary"],
        "threshold": heads["binary"]["threshold"],
        "temperature": heads["binary"]["temperature"],
        "preprocessing": {"input_size": cfg.input_size, "mean": GRAY_MEAN, "std": GRAY_STD,
                          "channels": 1},
        "operating_point": {
            "target": "sensitivity", "value": cfg.operating_sensitivity,
            "rule": "Youden-optimal while sensitivity >= target",
            "chosen_on": "validation split, clean and 8 perturbations pooled (an unseen site)",
            "scope": f"P(in_scope) threshold keeps >= {1 - cfg.scope_paediatric_out_max:.3f} "
                     "of paediatric validation images (clean and perturbed) in scope",
        },
        "data": data.summary,
        "validation": report,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "history": history,
        "config": asdict(cfg),
        "name": cfg.name,
        "version": cfg.version,
        "command": command,
        "training_seconds": round(time.time() - t_start, 1),
        "device": str(device),
        "torch_version": str(torch.__version__),
        "parameters": count_parameters(model),
    }
    return MultiTaskResult(model.cpu(), meta, history)
