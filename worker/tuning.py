"""Operating-system tuning of an inference worker process: OpenMP waiting, the glibc allocator,
the garbage collector and thread priority. Nothing here imports torch or Django."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os

TRIM_EVERY_IMAGES = 512


def passive_openmp_threads() -> None:
    """Before torch is imported: OpenMP threads that wait passively instead of spinning.

    On a CPU shared with other processes, spinning threads made batched inference 2-10x slower
    (docs/benchmarks.md); on a dedicated machine the difference is within noise.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def tune_allocator() -> None:
    """glibc: keep big buffers on the heap instead of mmap/munmap per forward pass.

    Each forward pass allocates and frees large convolution buffers; above glibc's mmap
    threshold every one is a fresh mapping (page faults: ~2.6 ms of kernel time per image in
    bench/pipeline.py, ~0.9 ms with this). Freed memory is returned by the periodic trim.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 256 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 512 * 1024 * 1024)
        libc.mallopt(m_top_pad, 64 * 1024 * 1024)


def freeze_startup_objects() -> None:
    """Move everything allocated so far (Django, torch, the models: ~325,000 objects) out of
    the garbage collector's sight.

    They live as long as the process, yet every full collection walked them all: one ~175 ms
    pause every few chunks, ~0.35 ms per image (docs/benchmarks.md). The Python docs recommend
    `gc.freeze()` for long-lived pre-loaded state like this; new objects are still collected.
    """
    gc.collect()
    gc.freeze()


class MemoryTrimmer:
    """Gives freed heap pages back to the OS every few chunks (glibc only).

    Decoding, resizing and rendering allocate and free many image-sized buffers from several
    threads; glibc keeps the freed pages, so RSS crept up by ~20-35 MB per 1,000 images
    although nothing was leaked (tracemalloc flat). `malloc_trim` returns them: RSS stays flat
    (docs/benchmarks.md). About 12 ms, so only every `every` images.
    """

    def __init__(self, every: int = TRIM_EVERY_IMAGES) -> None:
        self.every = every
        self._since_trim = 0

    def processed(self, images: int) -> None:
        self._since_trim += images
        if self._since_trim < self.every:
            return
        self._since_trim = 0
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def idle_priority() -> None:
    """Thread-pool initializer: this thread runs only on CPU time nobody else wants.

    On a CPU worker the torch threads keep ~1.7 of 2 cores busy; decoding the next batch and
    writing heatmaps at normal priority preempted them and slowed every forward pass (~5 % of
    throughput, and noisier). At SCHED_IDLE they fill the gaps instead (docs/benchmarks.md).
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux: normal priority
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
