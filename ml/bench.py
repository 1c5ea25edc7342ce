"""Throughput benchmark: images/s per batch size, with and without preprocessing.

"With preprocessing" = read the file from disk, ``decode_image`` (JPEG/PNG/DICOM decode to
float [0,1]), ``to_model_tensor`` (antialiased resize + normalise), then the model. Decoding is
done sequentially in the benchmarking thread (a conservative lower bound: the Celery worker may
decode in parallel). CAM + bounding box are included by default because the serving path
always produces a heatmap; pass ``with_cam=False`` (``--no-cam``) to exclude them.
"""

from __future__ import annotations

import io
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.predictor import Predictor


def _default_files(data: str | Path | None, n: int) -> list[Path] | list[bytes]:
    candidates: list[Path] = []
    roots = [Path(data)] if data else []
    env = os.environ.get("PNEUMO_DATA_DIR")
    repo = Path(__file__).resolve().parents[1]
    for base in ([Path(env)] if env else []) + [repo.parent / "shared" / "data"]:
        roots.append(base / "kermany-cxr" / "train")
    for root in roots:
        if root.is_dir():
            files = sorted(
                p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm")
            )
            if files:
                # spread over classes deterministically
                step = max(1, len(files) // n)
                candidates = files[::step][:n]
                break
        if data:
            break
    if candidates:
        return candidates
    # No data available: synthetic 224x224 PNGs (still exercises real decoding).
    from PIL import Image

    rng = np.random.default_rng(0)
    out: list[bytes] = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (224, 224), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def run_bench(
    checkpoint: str | Path,
    data: str | Path | None = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    with_cam: bool = True,
    repeats: int = 3,
    device: str | None = None,
    threads: int | None = None,
    min_images: int = 64,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    pred = Predictor.from_checkpoint(checkpoint, device=device)
    if threads and pred.device.type == "cpu":
        torch.set_num_threads(int(threads))
    files = _default_files(data, max(max(batch_sizes), min_images))
    sync = torch.cuda.synchronize if pred.device.type == "cuda" else (lambda: None)
    rows: list[dict[str, Any]] = []
    for bs in batch_sizes:
        n_batches = max(1, min_images // bs)
        chunks = [[files[(b * bs + i) % len(files)] for i in range(bs)] for b in range(n_batches)]
        pre = [torch.stack([pred.to_tensor(f) for f in c]) for c in chunks]
        pred.predict_tensors(pre[0], with_cam=with_cam)  # warm-up (allocator, kernels)
        full, model_only = [], []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for c in chunks:
                pred.predict_tensors(torch.stack([pred.to_tensor(f) for f in c]), with_cam=with_cam)
            sync()
            full.append(n_batches * bs / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for x in pre:
                pred.predict_tensors(x, with_cam=with_cam)
            sync()
            model_only.append(n_batches * bs / (time.perf_counter() - t0))
        row = {
            "batch_size": bs,
            "images_per_second": round(float(np.median(full)), 2),
            "images_per_second_model_only": round(float(np.median(model_only)), 2),
            "with_cam": with_cam,
            "images": n_batches * bs,
            "device": str(pred.device),
            "threads": torch.get_num_threads(),
        }
        rows.append(row)
        if verbose:
            print(
                f"batch {bs:3d}: {row['images_per_second']:8.1f} img/s with preprocessing, "
                f"{row['images_per_second_model_only']:8.1f} img/s model only"
                f"{' (CAM included)' if with_cam else ''}",
                flush=True,
            )
    if verbose:
        best = max(rows, key=lambda r: r["images_per_second"])
        print(
            f"best: batch {best['batch_size']} {best['images_per_second']} img/s "
            f"({pred.name} {pred.version}, {pred.input_size}px, {pred.device}, "
            f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
        )
    return rows


def run_versus(
    checkpoint: str | Path,
    versus: Sequence[str | Path],
    data: str | Path | None = None,
    batch_size: int = 32,
    images: int = 256,
    rounds: int = 5,
    device: str | None = None,
    threads: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Side by side in one run: ``checkpoint`` against the pipeline of ``versus`` checkpoints
    (the first with CAM, the others without, as the worker served binary + etiology), each
    round decoding the same files, with all answers. Rounds alternate so that drift of the
    machine's speed hits both alike; the ratio is the median of per-round ratios."""
    one = Predictor.from_checkpoint(checkpoint, device=device, threads=threads)
    many = [Predictor.from_checkpoint(c, device=device, threads=threads) for c in versus]
    files = _default_files(data, images)
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    sync = torch.cuda.synchronize if one.device.type == "cuda" else (lambda: None)

    def run_one() -> None:
        for c in chunks:
            one.predict_tensors(torch.stack([one.to_tensor(f) for f in c]), with_cam=True)

    def run_many() -> None:
        for c in chunks:
            x = torch.stack([many[0].to_tensor(f) for f in c])
            for k, p in enumerate(many):
                p.predict_tensors(x if p.spec == many[0].spec else
                                  torch.stack([p.to_tensor(f) for f in c]), with_cam=k == 0)

    for fn in (run_one, run_many):  # warm-up: allocator, oneDNN kernels
        fn()
    n = sum(len(c) for c in chunks)
    rates: dict[str, list[float]] = {"one": [], "many": []}
    for _ in range(rounds):
        for key, fn in (("many", run_many), ("one", run_one)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            rates[key].append(n / (time.perf_counter() - t0))
    ratios = [a / b for a, b in zip(rates["one"], rates["many"], strict=True)]
    out = {
        "checkpoint": str(checkpoint),
        "versus": [str(v) for v in versus],
        "images": n,
        "batch_size": batch_size,
        "device": str(one.device),
        "threads": torch.get_num_threads(),
        "images_per_second": round(float(np.median(rates["one"])), 1),
        "images_per_second_versus": round(float(np.median(rates["many"])), 1),
        "ratio": round(float(np.median(ratios)), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }
    if verbose:
        print(f"{'pipeline':<40} {'img/s (median of ' + str(rounds) + ')':>24}")
        print(f"{' + '.join(Path(v).name for v in versus):<40} "
              f"{out['images_per_second_versus']:>24}")
        print(f"{Path(checkpoint).name:<40} {out['images_per_second']:>24}")
        print(f"ratio {out['ratio']} (per-round {out['ratio_range'][0]}-{out['ratio_range'][1]})"
              f"; decode + forward + CAM + every answer, batch {batch_size}, {one.device}, "
              f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    return out
