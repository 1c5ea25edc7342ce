"""Single-task training (``python -m ml train``), and the pieces every training shares.

Shaped like torchvision's reference scripts, as ``ml.multitask`` (the shipped model's
training) is: ``build_data``, ``build_model_for``, ``build_criterion``, ``build_optimizer``,
``train_one_epoch``, ``evaluate``, ``choose_operating_point``; ``train`` runs them: class
weights or focal loss against the imbalance, AdamW with OneCycle or cosine, AMP on CUDA,
early stopping on validation ROC AUC with the best state kept, then temperature scaling and
the operating threshold on the validation split, logs and curves (``ml.plots``).

``ml.multitask`` reuses ``seed_everything``, ``setup_device``, ``build_optimizer``,
``balanced_weights``, ``predict_logits`` and the grayscale normalisation from here.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ml import TASKS
from ml.calibration import (
    apply_temperature,
    fit_temperature,
    positive_score,
    threshold_for_sensitivity,
)
from ml.data import TASK_CLASSES, CachedImageDataset, Record, summarize, training_split
from ml.device import select_device
from ml.metrics import compute_metrics, full_report
from ml.models import ARCHS, CamModel, arch_channels, build_model, count_parameters
from ml.plots import write_history
from ml.preprocess import normalize
from ml.transforms import RadiographAugment

# Radiographs are single-channel; for the custom 1-channel net we use dataset-level statistics
# of the Kermany training images (rounded). torchvision nets get ImageNet statistics so that
# --pretrained works unchanged.
GRAY_MEAN, GRAY_STD = [0.48], [0.24]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


LOSSES = ("ce", "focal")
SCHEDULES = ("onecycle", "cosine")


@dataclass
class TrainConfig:
    """Everything a single-task run depends on; ``python -m ml train`` has one ``--option``
    per field (``ml.cli.add_config_args``: a field's ``help`` and ``choices`` are its
    metadata)."""

    task: str = field(default="binary", metadata={"choices": TASKS})
    arch: str = field(default="pneumonet", metadata={"choices": ARCHS})
    epochs: int = 20
    input_size: int = 192
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    loss: str = field(default="ce", metadata={"choices": LOSSES})
    focal_gamma: float = 2.0
    class_weights: bool = field(
        default=True, metadata={"help": "balanced class weights in the loss"})
    label_smoothing: float = 0.0
    schedule: str = field(default="onecycle", metadata={"choices": SCHEDULES})
    seed: int = 42
    pretrained: bool = field(default=False, metadata={
        "help": "start from torchvision ImageNet weights (must be in TORCH_HOME)"})
    val_fraction: float = 0.15
    operating_sensitivity: float = 0.95
    patience: int = field(default=6, metadata={"help": "early-stopping patience (epochs)"})
    hflip: bool = field(default=False, metadata={
        "help": "random horizontal flips (off: see ml/transforms.py)"})
    max_train_images: int | None = field(default=None, metadata={
        "help": "subsample the training images (seeded), for quick runs and comparisons"})
    threads: int | None = field(default=2, metadata={"help": "CPU threads (torch)"})
    amp: bool = field(default=True, metadata={"help": "fp16 autocast (CUDA only)"})
    device: str | None = field(default=None, metadata={
        "help": "cpu / cuda (default: cuda if available)"})
    init_from: str | None = field(default=None, metadata={
        "help": "initialise matching layers from another checkpoint"})
    name: str | None = field(default=None, metadata={
        "help": "model name (default pneumo-<task>)"})
    version: str = "1.0.0"
    progress: bool = field(default=True, metadata={"help": "progress bars"})
    bootstrap: int = field(default=1000, metadata={
        "help": "bootstrap resamples for validation CIs"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})


@dataclass
class TrainResult:
    model: CamModel
    meta: dict[str, Any]
    history: list[dict[str, float]]


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): down-weights easy, well-classified examples,
    which dominate the loss when one class (pneumonia, ~3:1) is much more frequent."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target[:, None])[:, 0]
        p_t = logp_t.exp()
        loss = -((1 - p_t) ** self.gamma) * logp_t
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


# --------------------------------------------------------------------------------------------
# Shared by every training (single-task here, multi-head in ml.multitask)
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and make torch deterministic: a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: a few CUDA kernels have no deterministic variant; on CPU everything does.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def setup_device(device: str | None, threads: int | None) -> torch.device:
    """The run's device (``ml.device``); on the CPU, ``threads`` torch threads."""
    dev = select_device(device)
    if dev.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
    return dev


def preprocessing_spec(arch: str, input_size: int) -> dict[str, Any]:
    """The checkpoint's ``preprocessing`` entry: input size, channels and normalisation."""
    channels = arch_channels(arch)
    mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return {
        "input_size": int(input_size),
        "mean": list(mean),
        "std": list(std),
        "channels": channels,
    }


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    total_steps: int,
    schedule: str = "onecycle",
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and a per-step schedule: OneCycle (peak ``lr`` after 20 % of the steps) or cosine."""
    # No weight decay on BatchNorm and bias parameters (decaying BN scales fights the norm).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
    )
    sched: torch.optim.lr_scheduler.LRScheduler
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps, pct_start=0.2
        )
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return opt, sched


def balanced_weights(labels: torch.Tensor, k: int, ignore_index: int = -100) -> torch.Tensor:
    """n / (k * n_c) over the labelled samples: every class weighs the same in the loss."""
    counts = torch.bincount(labels[labels != ignore_index], minlength=k).float()
    return counts.sum() / (k * counts.clamp(min=1))


@torch.inference_mode()
def predict_logits(
    model: CamModel,
    images: torch.Tensor,
    device: torch.device,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    spec: Mapping[str, Any] | None = None,
    batch_size: int = 128,
) -> torch.Tensor:
    """Logits for uint8 (N,S,S) images, optionally perturbed (``transform`` on [0,1] pixels),
    normalised as ``spec`` says (default: the 1-channel grayscale statistics)."""
    mean, std, channels = (
        (spec["mean"], spec["std"], spec["channels"]) if spec else (GRAY_MEAN, GRAY_STD, 1)
    )
    model.eval()
    outs = []
    # An empty set still makes one (empty) pass, so its logits have the model's width.
    for start in range(0, len(images), batch_size) or [0]:
        x = images[start : start + batch_size].float().div_(255.0).unsqueeze(1)
        if transform is not None:
            x = transform(x)
        _, logits = model(normalize(x, mean, std, channels).to(device))
        outs.append(logits.float().cpu())
    return torch.cat(outs)


# --------------------------------------------------------------------------------------------
# Single-task training: data, model, loss, one epoch, evaluation, operating point
# --------------------------------------------------------------------------------------------


def build_data(
    cfg: TrainConfig, records: Sequence[Record], log: Callable[[str], None]
) -> tuple[CachedImageDataset, CachedImageDataset]:
    """Patient-level split of ``records`` (optionally subsampled), decoded once into memory."""
    train_recs, val_recs = training_split(records, cfg.val_fraction, cfg.seed,
                                          cfg.max_train_images)
    log(f"decoding {len(train_recs)} train + {len(val_recs)} val images at {cfg.input_size}px ...")
    return (
        CachedImageDataset(train_recs, cfg.task, cfg.input_size, cfg.progress),
        CachedImageDataset(val_recs, cfg.task, cfg.input_size, cfg.progress),
    )


def build_model_for(cfg: TrainConfig) -> CamModel:
    """``cfg.arch`` with one output per class of ``cfg.task``."""
    return build_model(cfg.arch, len(TASK_CLASSES[cfg.task]), pretrained=cfg.pretrained)


def init_from_checkpoint(model: CamModel, path: str) -> list[str]:
    """Copy every compatible tensor (same name and shape) from another checkpoint — e.g. the
    binary model's trunk into the etiology model. Returns the names that were skipped."""
    from ml.checkpoint import load_checkpoint

    state, _ = load_checkpoint(path)
    own = model.state_dict()
    skipped = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
    own.update({k: state[k] for k in own if k not in skipped})
    model.load_state_dict(own)
    return skipped


def build_criterion(cfg: TrainConfig, weight: torch.Tensor | None) -> nn.Module:
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, weight)
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.loss!r}")


def train_one_epoch(
    model: CamModel,
    criterion: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    train_ds: CachedImageDataset,
    spec: Mapping[str, Any],
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    epoch: int,
) -> float:
    """One pass over ``train_ds`` in a seeded order; returns the mean training loss."""
    from tqdm import tqdm

    model.train()
    augment = RadiographAugment(hflip_p=0.5 if cfg.hflip else 0.0)
    use_amp = scaler.is_enabled()
    steps = math.ceil(len(train_ds) / cfg.batch_size)
    perm = torch.randperm(len(train_ds), generator=gen)
    running, seen = 0.0, 0
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
               disable=not cfg.progress, leave=False, file=sys.stderr)
    for step in bar:
        idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        if len(idx) < 2:  # BatchNorm needs >1 sample
            continue
        x, y = train_ds.batch(idx)
        # Augmented where it trains (its random draws come from the CPU generator either way,
        # so a seeded run draws the same augmentations on CPU and GPU).
        x = augment(x.to(device, non_blocking=True), generator=gen)
        x = normalize(x, spec["mean"], spec["std"], spec["channels"])
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            _, logits = model(x)
            loss = criterion(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        running += float(loss.item()) * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{running / max(seen, 1):.4f}")
    bar.close()
    return running / max(seen, 1)


def evaluate(
    model: CamModel, val_ds: CachedImageDataset, spec: Mapping[str, Any], device: torch.device
) -> dict[str, float]:
    """Validation loss, pneumonia-vs-normal ROC AUC, argmax accuracy (and, for etiology, the
    macro one-vs-rest AUC), uncalibrated."""
    logits = predict_logits(model, val_ds.images, device, spec=spec)
    labels = val_ds.labels.numpy()
    probs = torch.softmax(logits, 1).numpy()
    m = compute_metrics(probs, labels, val_ds.classes, threshold=0.5)
    out = {
        "val_loss": float(F.cross_entropy(logits, val_ds.labels).item()),
        "val_roc_auc": m["roc_auc"] or 0.0,
        "val_accuracy": float((probs.argmax(1) == labels).mean()),
    }
    if len(val_ds.classes) > 2:
        out["val_roc_auc_macro"] = m.get("roc_auc_macro_ovr") or 0.0
    return out


def selection_score(row: Mapping[str, float]) -> float:
    """Pneumonia-vs-normal ROC AUC (binary); for etiology the mean of that and the macro
    one-vs-rest AUC, so bacterial/viral separation also counts."""
    if "val_roc_auc_macro" in row:
        return 0.5 * (row["val_roc_auc"] + row["val_roc_auc_macro"])
    return row["val_roc_auc"]


def choose_operating_point(
    model: CamModel,
    val_ds: CachedImageDataset,
    spec: Mapping[str, Any],
    sensitivity: float,
    device: torch.device,
) -> tuple[float, float, np.ndarray]:
    """(temperature, threshold, calibrated validation probabilities): temperature scaling on
    the validation logits, then the largest threshold that keeps ``sensitivity``."""
    logits = predict_logits(model, val_ds.images, device, spec=spec)
    temperature = fit_temperature(logits, val_ds.labels)
    probs = apply_temperature(logits, temperature)
    pos = val_ds.labels.numpy() != val_ds.classes.index("normal")
    threshold = threshold_for_sensitivity(positive_score(probs, val_ds.classes), pos, sensitivity)
    return temperature, threshold, probs


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    records: Sequence[Record],
    log_dir: str | Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    datasets: tuple[CachedImageDataset, CachedImageDataset] | None = None,
) -> TrainResult:
    """Train ``cfg.arch`` on ``records`` (split by patient here, unless ``datasets`` are given)
    and return the best model with its calibrated checkpoint metadata."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t_start = time.time()
    seed_everything(cfg.seed)
    device = setup_device(cfg.device, cfg.threads)
    classes = TASK_CLASSES[cfg.task]
    spec = preprocessing_spec(cfg.arch, cfg.input_size)

    train_ds, val_ds = datasets if datasets is not None else build_data(cfg, records, log)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError("empty training or validation set")
    for p, why in train_ds.skipped + val_ds.skipped:
        log(f"skipped unreadable image {p}: {why}")
    log(f"train {summarize(train_ds.records, cfg.task)}")
    log(f"val   {summarize(val_ds.records, cfg.task)}")

    model = build_model_for(cfg).to(device)
    if cfg.init_from:
        skipped = init_from_checkpoint(model, cfg.init_from)
        log(f"initialised from {cfg.init_from} (re-initialised: {skipped})")
    log(f"{cfg.arch}: {count_parameters(model) / 1e6:.2f} M parameters, device {device}")

    weight = None
    if cfg.class_weights:
        weight = balanced_weights(train_ds.labels, len(classes)).to(device)
        shown = [round(w, 3) for w in weight.tolist()]
        log(f"class weights {dict(zip(classes, shown, strict=True))}")
    criterion = build_criterion(cfg, weight).to(device)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    opt, sched = build_optimizer(model, cfg.lr, cfg.weight_decay, steps_per_epoch * cfg.epochs,
                                 cfg.schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)

    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        train_loss = train_one_epoch(model, criterion, opt, sched, scaler, train_ds, spec, cfg,
                                     gen, device, epoch)
        row = {"epoch": epoch, "lr": float(opt.param_groups[0]["lr"]), "train_loss": train_loss,
               **evaluate(model, val_ds, spec, device), "seconds": time.time() - t0}
        history.append(row)
        improved = selection_score(row) > best_score + 1e-4
        if improved:
            best_score, best_epoch = selection_score(row), epoch
            best_state = copy.deepcopy(model.state_dict())
        log(
            f"epoch {epoch:3d} train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val_auc {row['val_roc_auc']:.4f} val_acc {row['val_accuracy']:.4f} "
            f"{'*' if improved else ' '} {row['seconds']:.0f}s"
        )
        if log_dir is not None:
            write_history(history, Path(log_dir))
        if epoch - best_epoch >= cfg.patience:
            log(f"early stopping: no val improvement for {cfg.patience} epochs")
            break

    model.load_state_dict(best_state)
    model.eval()
    temperature, threshold, probs = choose_operating_point(
        model, val_ds, spec, cfg.operating_sensitivity, device
    )
    val_report = full_report(
        probs, val_ds.labels.numpy(), classes, threshold, n_boot=cfg.bootstrap, seed=cfg.seed
    )
    val_report.pop("report", None)
    log(f"best epoch {best_epoch}; temperature {temperature:.3f}; threshold {threshold:.4f}")
    meta: dict[str, Any] = {
        "arch": cfg.arch,
        "task": cfg.task,
        "classes": classes,
        "preprocessing": spec,
        "threshold": threshold,
        "temperature": temperature,
        "operating_point": {
            "target": "sensitivity",
            "value": cfg.operating_sensitivity,
            "positive": "pneumonia" if cfg.task == "binary" else "bacterial|viral",
            "score": "P(pneumonia)" if cfg.task == "binary" else "1 - P(normal)",
            "chosen_on": "validation split",
        },
        "data": {
            "train": summarize(train_ds.records, cfg.task),
            "val": summarize(val_ds.records, cfg.task),
            "split": "by patient, stratified by label",
            "split_seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
        },
        "validation": val_report,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "history": history,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("extra", "progress")},
        "name": cfg.name or f"pneumo-{cfg.task}",
        "version": cfg.version,
        "command": command or "",
        "training_seconds": round(time.time() - t_start, 1),
        "device": str(device),
        "torch_version": torch.__version__,
        "parameters": count_parameters(model),
    }
    return TrainResult(model=model.cpu(), meta=meta, history=history)
