"""What one inference worker process keeps between tasks: `WorkerRuntime`.

It holds the models (loaded once, after the fork), the I/O thread pool, the recorder thread and
the memory trimmer. The worker creates one per pool process at `worker_process_init`
(worker/signals.py) and the tasks pass it explicitly to `worker.inference.run_chunk`; tests and
the bench create their own. The model handling is all here (`Models`, `load_models`), so
replacing the two predictors by another model touches this module and `Models.forward` only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from django.conf import settings
from django.db import connections

from backend.config.sizing import torch_threads
from ml.decode import WORKING_COPY_SIDE
from ml.device import select_device as ml_select_device
from ml.predictor import Prediction, Predictor
from ml.preprocess import preprocess
from ml.sandbox import Sandbox

from .signals import pool_processes
from .tuning import MemoryTrimmer, freeze_startup_objects, idle_priority, tune_allocator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    binary: Predictor
    etiology: Predictor | None
    device: torch.device
    pid: int

    @property
    def max_input_size(self) -> int:
        return max(p.input_size for p in (self.binary, self.etiology) if p is not None)

    def inputs(self, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoded pixels as each model's input (one tensor when both share a spec)."""
        binary_x = preprocess(pixels, self.binary.spec)
        if self.etiology is None:
            return binary_x, None
        if self.etiology.spec == self.binary.spec:
            return binary_x, binary_x
        return binary_x, preprocess(pixels, self.etiology.spec)

    def forward(self, predictor: Predictor, batch: torch.Tensor, with_cam: bool,
                metadata: list[dict[str, str] | None] | None = None) -> list[Prediction]:
        """One forward pass; on CUDA with fp16 autocast and pinned memory."""
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            autocast: Any = torch.autocast("cuda", dtype=torch.float16)
        else:
            autocast = nullcontext()
        with autocast:
            return predictor.predict_tensors(batch, with_cam=with_cam, metadata=metadata)

    def warm_up(self) -> None:
        """One dummy batch, so the first real image does not pay for lazy initialisation."""
        for predictor, cam in ((self.binary, True), (self.etiology, False)):
            if predictor is None:
                continue
            x = torch.zeros(2, predictor.channels, predictor.input_size, predictor.input_size)
            self.forward(predictor, x, with_cam=cam)


def select_device() -> torch.device:
    """settings.INFERENCE_DEVICE; "auto" is ml.device's choice (CUDA when available).

    Only ever called in a pool process (after the fork), never in a worker's parent: CUDA
    initialised before a fork is unusable in the children."""
    choice = settings.INFERENCE_DEVICE
    return ml_select_device(None if choice == "auto" else choice)


def cpu_threads(pool_processes: int) -> int | None:
    """torch threads of one pool process: INFERENCE_TORCH_THREADS, else the cores shared out
    between the pool processes; None leaves it to PNEUMO_TORCH_THREADS (ml.predictor)."""
    if not settings.INFERENCE_TORCH_THREADS and os.environ.get("PNEUMO_TORCH_THREADS"):
        return None
    return torch_threads(settings.INFERENCE_TORCH_THREADS, processes=pool_processes)


def load_models(*, pool_processes: int = 1) -> Models:
    """The models of the settings, on the settings' device, warmed up; then everything loaded
    so far is frozen out of the garbage collector's sight."""
    started = time.perf_counter()
    tune_allocator()
    device = select_device()
    threads = cpu_threads(pool_processes) if device.type == "cpu" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    binary = Predictor.from_checkpoint(settings.MODEL_CHECKPOINT_BINARY, device=device,
                                       threads=threads)
    etiology = None
    if binary.multi:
        pass  # one network answers binary, etiology and scope in one pass
    elif settings.MODEL_CHECKPOINT_ETIOLOGY and os.path.exists(settings.MODEL_CHECKPOINT_ETIOLOGY):
        etiology = Predictor.from_checkpoint(settings.MODEL_CHECKPOINT_ETIOLOGY, device=device,
                                             threads=threads)
    else:
        logger.warning("No etiology checkpoint at %s", settings.MODEL_CHECKPOINT_ETIOLOGY)
    models = Models(binary=binary, etiology=etiology, device=device, pid=os.getpid())
    models.warm_up()
    freeze_startup_objects()
    logger.info(
        "Loaded %s %s%s on %s (%d threads) in process %d in %.1f s",
        binary.name, binary.version,
        f" and {etiology.name} {etiology.version}" if etiology else "",
        device, torch.get_num_threads(), os.getpid(), time.perf_counter() - started,
    )
    return models


class WorkerRuntime:
    """The models, the I/O thread pool and the recorder of one worker process.

    Everything is created lazily and at most once (under a lock), so a runtime made before a
    fork holds nothing a child could inherit half-made.
    """

    def __init__(self, *, pool_processes: int = 1) -> None:
        self.pool_processes = max(1, pool_processes)
        self.trimmer = MemoryTrimmer()
        self._models: Models | None = None
        self._io_pool: ThreadPoolExecutor | None = None
        self._recorder: ThreadPoolExecutor | None = None
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()

    @property
    def loaded_models(self) -> Models | None:
        """The models, or None when they were never loaded here."""
        return self._models

    def models(self) -> Models:
        """Load the models once (never in a worker's parent before the fork)."""
        with self._lock:
            if self._models is None or self._models.pid != os.getpid():
                self._models = load_models(pool_processes=self.pool_processes)
            return self._models

    def io_threads_idle(self, device: torch.device) -> bool:
        """Whether the pool threads run at idle CPU priority (INFERENCE_IO_PRIORITY).

        "auto": only on a CPU worker with a single pool process. With several, the other
        processes' forward passes keep every core busy, and idle threads starved: a chunk
        waited up to 0.4 s for its decoding (docs/benchmarks.md).
        """
        choice = settings.INFERENCE_IO_PRIORITY
        return choice == "idle" or (choice == "auto" and device.type == "cpu"
                                    and self.pool_processes == 1)

    def io_pool(self, device: torch.device | None = None) -> ThreadPoolExecutor:
        """The I/O + decode thread pool (INFERENCE_IO_THREADS, INFERENCE_IO_PRIORITY)."""
        with self._lock:
            if self._io_pool is None:
                workers = settings.INFERENCE_IO_THREADS or os.cpu_count() or 1
                idle = self.io_threads_idle(device or torch.device("cpu"))
                self._io_pool = ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix="chunk-io",
                    initializer=idle_priority if idle else None)
            return self._io_pool

    def reset_io_pool(self) -> None:
        """Make the I/O pool anew at its next use: its size and priority are fixed when it is
        created (the bench compares settings this way)."""
        with self._lock:
            pool, self._io_pool = self._io_pool, None
        if pool is not None:
            pool.shutdown()

    def recorder(self) -> ThreadPoolExecutor:
        """One thread that stores finished batches, in order.

        Its own thread, not the I/O pool: a record waits for its batch's heatmaps, which run
        on the pool, so it must never take a pool thread they need. It keeps one database
        connection of its own (`close_recorder_connection` closes it).
        """
        with self._lock:
            if self._recorder is None:
                self._recorder = ThreadPoolExecutor(max_workers=1,
                                                    thread_name_prefix="chunk-record")
            return self._recorder

    def decode_sandbox(self, models: Models) -> Sandbox:
        """The decoding child processes (ml/sandbox.py): untrusted files are decoded there,
        with DECODE_MEMORY_LIMIT_MB and DECODE_TIME_LIMIT_S, never in this process."""
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(
                    processes=(settings.DECODE_PROCESSES or settings.INFERENCE_IO_THREADS
                               or os.cpu_count() or 1),
                    memory_bytes=settings.DECODE_MEMORY_LIMIT_MB * 2**20,
                    time_limit_s=settings.DECODE_TIME_LIMIT_S,
                    working_copies=settings.WORKING_COPIES,
                    full_pixels=models.max_input_size > WORKING_COPY_SIDE,
                )
            return self._sandbox

    def close_sandbox(self) -> None:
        """Stop the decoding children (a new set starts at the next use: tests change the
        limits this way)."""
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()

    def close_recorder_connection(self) -> None:
        """Close the recorder thread's database connection (tests, before the database is
        dropped; a worker process simply exits)."""
        if self._recorder is not None:
            self._recorder.submit(connections.close_all).result()

    def close(self) -> None:
        """Stop the threads and close the recorder's database connection."""
        self.close_recorder_connection()
        self.close_sandbox()
        for pool in (self._recorder, self._io_pool):
            if pool is not None:
                pool.shutdown()
        self._recorder = self._io_pool = None


_process_runtime: WorkerRuntime | None = None


def install(runtime: WorkerRuntime | None) -> None:
    """Make `runtime` this process's runtime (worker_process_init; tests)."""
    global _process_runtime
    _process_runtime = runtime


def process_runtime() -> WorkerRuntime:
    """This process's runtime: the one installed at worker_process_init, else a new one
    (a worker with INFERENCE_PRELOAD off, or a task applied in this process)."""
    global _process_runtime
    if _process_runtime is None:
        _process_runtime = WorkerRuntime(pool_processes=pool_processes())
    return _process_runtime
