"""One worker chunk in this process, against the raw models, for A/B tests of worker settings.

    python -m bench.chunk                                   # the current settings
    python -m bench.chunk INFERENCE_IO_PRIORITY=normal INFERENCE_IO_PRIORITY=idle
    python -m bench.chunk INFERENCE_IO_THREADS=1 INFERENCE_IO_THREADS=2,INFERENCE_BATCH_SIZE=64

Stores one study of `--images` real X-rays in the PostgreSQL database of bench/pipeline.py
(no web server, no Celery worker), then repeats: raw models on the same images, `run_chunk` on the
whole study, raw again. Each configuration (comma-separated setting=value overrides) runs in
turn within every repetition, so the machine's drift hits them all alike; the table gives the
median of chunk throughput / raw throughput around it, and of raw CPU / chunk CPU per image
(what counts on a worker whose pool processes keep every core busy; run with
INFERENCE_TORCH_THREADS=1 to see one such process). Faster to iterate on than the full
pipeline bench, and free of web, broker and polling noise.

    python -m bench.chunk --processes 2 [configs...]   # the worker's layout

With --processes N, N spawned processes set up like the worker's pool processes (their share
of the cores as torch threads, its I/O thread priority) each run a chunk of their own study at
the same moment, against the raw models in the same layout (bench.common.RawStreams): what a
CPU worker does minus Celery, the web and the study's start and end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_DB, RawModels, RawStreams
from support import REPO_ROOT, xray_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=["current"],
                        help="SETTING=value[,SETTING=value] per configuration")
    parser.add_argument("--images", type=int, default=128, help="images in the chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1,
                        help="pool processes running chunks at once (default 1: this process)")
    args = parser.parse_args()

    _set_up_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if args.processes > 1:
        return _in_pool_layout(args)
    from django.conf import settings

    from worker import inference
    from worker.runtime import WorkerRuntime

    paths = xray_files(args.images, offset=2000)
    image_ids = _stored_study(paths)
    runtime = WorkerRuntime()
    models = runtime.models()
    etiology = settings.MODEL_CHECKPOINT_ETIOLOGY if models.etiology is not None else None
    raw_models = RawModels(settings.MODEL_CHECKPOINT_BINARY, paths, etiology=etiology)

    def raw() -> tuple[float, float]:
        return raw_models.pass_seconds(settings.INFERENCE_BATCH_SIZE)

    def chunk() -> tuple[float, float]:
        _requeue(image_ids)
        started, cpu_started = time.perf_counter(), time.process_time()
        report = inference.run_chunk(runtime, image_ids)
        assert report.done == len(image_ids), report
        return time.perf_counter() - started, time.process_time() - cpu_started

    raw()
    ratios: dict[str, list[float]] = {}
    # CPU: on a worker whose pool processes fill every core, throughput follows CPU per image.
    cpu_ratios: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for config in args.configs:
            with _applied(runtime, _overrides(config)):
                before, took, after = raw(), chunk(), raw()
            ratios.setdefault(config, []).append((before[0] + after[0]) / 2 / took[0])
            cpu_ratios.setdefault(config, []).append((before[1] + after[1]) / 2 / took[1])
    width = max(len(c) for c in args.configs)
    print(f"\n{'configuration'.ljust(width)}  median chunk/raw  raw CPU/chunk CPU"
          "  every repetition (wall; CPU)")
    for config, values in ratios.items():
        cpu = cpu_ratios[config]
        print(f"{config.ljust(width)}  {statistics.median(values):16.2f}  "
              f"{statistics.median(cpu):17.2f}  " + " ".join(f"{v:.2f}" for v in values)
              + "; " + " ".join(f"{v:.2f}" for v in cpu))
    return 0


@contextlib.contextmanager
def _applied(runtime: Any, overrides: dict[str, Any]) -> Iterator[None]:
    """The settings of one configuration, for one run; the runtime's I/O pool is made anew
    on both sides (its thread count and priority are fixed when it is created)."""
    from django.conf import settings

    saved = {key: getattr(settings, key) for key in overrides}
    for key, value in overrides.items():
        setattr(settings, key, value)
    runtime.reset_io_pool()
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(settings, key, value)
        runtime.reset_io_pool()


def _set_up_django() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker
    os.environ.update(
        # The chunk is run here, by hand: what the upload sends goes to an in-memory broker.
        REDIS_URL="memory://",
        DJANGO_SETTINGS_MODULE="backend.config.settings.production", SECRET_KEY="bench",
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB), LOG_LEVEL="WARNING",
        MEDIA_ROOT=os.environ.get("BENCH_MEDIA_ROOT", "/tmp/pneumoscan-bench-chunk"),
    )
    import django

    django.setup()


def _in_pool_layout(args: argparse.Namespace) -> int:
    import multiprocessing

    from django.conf import settings

    from backend.config.sizing import torch_threads

    processes, images = args.processes, args.images
    threads = torch_threads(settings.INFERENCE_TORCH_THREADS, processes=processes)
    studies = [_stored_study(xray_files(images, offset=2000 + k * images), f"bench-chunk-{k}")
               for k in range(processes)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    pipes = []
    for k in range(processes):
        parent, child = context.Pipe()
        context.Process(target=_pool_process, daemon=True,
                        args=(child, barrier, processes, studies[k])).start()
        pipes.append(parent)
    for pipe in pipes:
        pipe.recv()  # models loaded, one chunk done
    etiology = settings.MODEL_CHECKPOINT_ETIOLOGY
    raw = RawStreams(processes, threads, settings.MODEL_CHECKPOINT_BINARY,
                     xray_files(images, offset=2000),
                     etiology if os.path.exists(etiology) else None)
    ratios: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for config in args.configs:
            before = raw.images_per_s(settings.INFERENCE_BATCH_SIZE)
            for pipe in pipes:
                pipe.send(_overrides(config))
            outcomes = [pipe.recv() for pipe in pipes]
            after = raw.images_per_s(settings.INFERENCE_BATCH_SIZE)
            chunks = processes * images / max(wall for wall, _ in outcomes)
            ratios.setdefault(config, []).append(chunks / ((before + after) / 2))
            cpu.setdefault(config, []).append(
                sum(c for _, c in outcomes) / (processes * images) * 1000)
    for pipe in pipes:
        pipe.send(None)
    raw.close()
    width = max(len(c) for c in args.configs)
    print(f"\n{processes} processes x {threads} torch thread(s), chunks of {images}")
    print(f"{'configuration'.ljust(width)}  median chunks/raw  CPU ms per image"
          "  every repetition (wall ratio)")
    for config, values in ratios.items():
        print(f"{config.ljust(width)}  {statistics.median(values):17.2f}  "
              f"{statistics.median(cpu[config]):16.2f}  "
              + " ".join(f"{v:.2f}" for v in values))
    return 0


def _pool_process(pipe: Any, barrier: Any, processes: int, image_ids: list[str]) -> None:
    """One pool process of a CPU worker, without Celery: told a configuration, it runs the
    chunk at the same moment as the others and reports (wall, CPU) seconds."""
    _set_up_django()
    from worker import inference
    from worker.runtime import WorkerRuntime

    # As in a worker's pool process: its share of the cores as torch threads, and the I/O
    # threads' priority, follow from the number of pool processes.
    runtime = WorkerRuntime(pool_processes=processes)
    runtime.models()
    inference.run_chunk(runtime, image_ids)
    _requeue(image_ids)
    pipe.send("ready")
    while (overrides := pipe.recv()) is not None:
        with _applied(runtime, overrides):
            barrier.wait()
            started, cpu_started = time.perf_counter(), time.process_time()
            report = inference.run_chunk(runtime, image_ids)
            pipe.send((time.perf_counter() - started, time.process_time() - cpu_started))
        assert report.done == len(image_ids), report
        _requeue(image_ids)


def _overrides(config: str) -> dict[str, Any]:
    if config == "current":
        return {}
    out: dict[str, Any] = {}
    for pair in config.split(","):
        key, _, value = pair.partition("=")
        out[key] = int(value) if value.isdigit() else value
    return out


def _stored_study(paths: list[Path], name: str = "bench-chunk") -> list[str]:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from backend.accounts.models import Hospital, User
    from backend.studies import services
    from backend.studies.models import Image, Study

    hospital, _ = Hospital.objects.get_or_create(name="Bench Hospital")
    user = User.objects.filter(username="bench-chunk").first() or User.objects.create(
        username="bench-chunk", hospital=hospital, role="admin")
    Study.objects.filter(name=name).delete()
    uploads = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    outcome = services.study_create(user=user, uploads=uploads, name=name)
    assert outcome.study is not None, outcome.rejected
    return [str(pk) for pk in Image.objects.filter(study=outcome.study)
            .order_by("id").values_list("id", flat=True)]


def _requeue(image_ids: list[str]) -> None:
    from backend.studies.models import Image, Result

    Result.objects.filter(image_id__in=image_ids).delete()
    Image.objects.filter(id__in=image_ids).update(status="queued", attempts=0, error="",
                                                  started_at=None, finished_at=None)


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
