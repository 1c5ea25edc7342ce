"""How many pool processes an inference worker runs (settings only; no torch, no CUDA).

Decided in the settings, before Celery forks its pool, so it must not initialise CUDA: a GPU
is recognised by the NVIDIA driver's entries in /proc, not through torch.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_AUTO_PROCESSES = 4
# A GPU forward pass of a chunk costs ~0.2 ms per image; the CPU work around it (decode,
# heatmap rendering, database writes) ~6 ms in its pool process. So several processes feed
# one GPU, each with a few cores: on a 16-core H200 host 4 processes did 1.9x the images/s of
# 1, and 8 (on SQLite there) no better than 1 (docs/benchmarks.md, "GPU worker").
CORES_PER_GPU_PROCESS = 4
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_present(gpus: Path = NVIDIA_GPUS) -> bool:
    try:
        return any(gpus.iterdir())
    except OSError:
        return False


def inference_processes(configured: int, *, device: str, cores: int | None = None,
                        gpus: Path = NVIDIA_GPUS) -> int:
    """`configured` when set; else one per core on a CPU worker, one per 4 cores on a GPU
    worker (all sharing the GPU); at most 4."""
    if configured > 0:
        return configured
    cores = cores or usable_cores()
    if device == "cuda" or (device == "auto" and gpu_present(gpus)):
        return max(1, min(MAX_AUTO_PROCESSES, cores // CORES_PER_GPU_PROCESS))
    return max(1, min(MAX_AUTO_PROCESSES, cores))


def torch_threads(configured: int, *, processes: int, cores: int | None = None) -> int:
    """`configured` when set; else the cores shared out between the pool processes."""
    if configured > 0:
        return configured
    return max(1, (cores or usable_cores()) // max(1, processes))

