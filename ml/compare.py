"""Architecture comparison under one protocol.

Every architecture gets the same patient-level split (same seed), the same (optionally
subsampled) training images, input size, epochs, batch size, optimiser/schedule, augmentation
and the same calibration/threshold procedure; all are trained from scratch (no downloadable
weights here). Writes ``results.json``, ``results.md`` (markdown table) and ``compare.png``.

The default budget is deliberately small so the whole comparison fits in ~10 minutes on a
2-core CPU: it ranks architectures for *this* budget, which favours small fast networks; it
says nothing about what a large network reaches with a GPU and ImageNet initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ml.data import discover
from ml.engine import TrainConfig, build_data, preprocessing_spec, train
from ml.models import build_model, count_parameters
from ml.plots import plot_comparison


def _speed(arch: str, size: int, num_classes: int, batch: int = 32, reps: int = 3) -> float:
    """Model-only inference images/s at ``size`` (CPU threads as currently set)."""
    model = build_model(arch, num_classes).eval()
    ch = preprocessing_spec(arch, size)["channels"]
    x = torch.randn(batch, ch, size, size)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
    return batch * reps / (time.perf_counter() - t0)


def run_compare(
    data: str | Path,
    archs: Sequence[str],
    out_dir: Path,
    epochs: int = 3,
    input_size: int = 128,
    max_train_images: int | None = 1500,
    batch_size: int = 32,
    seed: int = 42,
    threads: int = 2,
    task: str = "binary",
    lr: float = 2e-3,
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = TrainConfig(task=task, epochs=epochs, input_size=input_size, batch_size=batch_size,
                       lr=lr, seed=seed, max_train_images=max_train_images, patience=epochs,
                       threads=threads, progress=False, bootstrap=300)
    # Decode once, share between architectures: identical inputs for everyone.
    train_ds, val_ds = build_data(base, discover(data, split=("train", "val")), log=lambda s: None)
    budget = {
        "epochs": epochs,
        "input_size": input_size,
        "train_images": len(train_ds),
        "val_images": len(val_ds),
        "batch_size": batch_size,
        "lr": lr,
        "threads": threads,
        "seed": seed,
        "task": task,
        "pretrained": False,
    }
    print(f"budget: {budget}", flush=True)
    rows: list[dict[str, Any]] = []
    for arch in archs:
        cfg = dataclasses.replace(base, arch=arch)
        t0 = time.time()
        res = train(cfg, [], datasets=(train_ds, val_ds), log=lambda s: None)
        secs = time.time() - t0
        v = res.meta["validation"]
        row = {
            "arch": arch,
            "params_m": round(count_parameters(res.model) / 1e6, 2),
            "roc_auc": v["roc_auc"],
            "roc_auc_ci": v["ci95"].get("roc_auc"),
            "accuracy": v["accuracy"],
            "sensitivity": v["sensitivity"],
            "specificity": v["specificity"],
            "f1": v["f1"],
            "train_seconds": round(secs, 1),
            "infer_img_s": round(_speed(arch, input_size, len(res.meta["classes"])), 1),
            "plain_cam": res.model.linear is not None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out_dir / "results.json").write_text(
            json.dumps({"budget": budget, "rows": rows}, indent=2) + "\n"
        )
    _write_table(rows, budget, out_dir / "results.md")
    plot_comparison(rows, out_dir / "compare.png")
    return rows


def _fmt(v: float | None, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _write_table(rows: list[dict[str, Any]], budget: dict[str, Any], path: Path) -> None:
    lines = [
        f"Budget: {budget['train_images']} training images (patient-level split, seed "
        f"{budget['seed']}), {budget['val_images']} validation images, {budget['epochs']} "
        f"epochs, {budget['input_size']} px, batch {budget['batch_size']}, AdamW lr "
        f"{budget['lr']} OneCycle, from scratch, {budget['threads']} CPU threads. Metrics on "
        "validation after temperature scaling, at the threshold giving sensitivity >= 0.95.",
        "",
        "| arch | params (M) | val ROC AUC (95% CI) | accuracy | sensitivity | specificity | "
        "train s | infer img/s (bs 32) | plain CAM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r["roc_auc_ci"]
        auc = _fmt(r["roc_auc"]) + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        lines.append(
            f"| {r['arch']} | {r['params_m']} | {auc} | {_fmt(r['accuracy'])} | "
            f"{_fmt(r['sensitivity'])} | {_fmt(r['specificity'])} | "
            f"{r['train_seconds']:.0f} | {r['infer_img_s']:.0f} | "
            f"{'yes' if r['plain_cam'] else 'Grad-CAM'} |"
        )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
