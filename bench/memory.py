"""Worker memory over a long run: RSS of the worker's pool processes (where the models, the
CAM code and the image buffers live) while they classify 2,000 real X-rays.

    python -m bench.memory [--images 2000] [--study-size 500] [--chunk-size N]

Starts its own stack (see bench/common.py), submits the images as studies of --study-size,
samples the pool processes' RSS every 0.5 s, and prints the RSS of the largest pool process
after the first study (warm), at the end, the peak, and its growth per 1,000 images after
warm-up; also every process's RSS and the pool's total PSS (shared library pages counted
once, split between the processes: what the pool really costs). Flat means the growth is
within noise (a few MB), not proportional to the images processed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.common import FINAL, Client, pss_mb, running_stack
from support import REPO_ROOT, rss_mb, wait_for, xray_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--study-size", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.config.settings.local")
    import django

    django.setup()
    from django.conf import settings

    chunk = args.chunk_size or settings.INFERENCE_CHUNK_SIZE
    # Real X-rays; past the dataset size the same files come back in later studies (a file
    # appears at most once per study).
    pool_files = xray_files(min(args.images, 5000))
    samples: list[tuple[float, float, int]] = []
    with running_stack(chunk_size=chunk) as stack:
        client = Client(stack.url, stack.token)
        pids = stack.pool_pids()
        processed = [0]
        stop = threading.Event()

        def pool_rss() -> float:
            return max(rss_mb(pid) for pid in pids)

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), pool_rss(), processed[0]))
                time.sleep(0.5)

        start_rss = pool_rss()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        per_study: list[dict] = []
        started = time.monotonic()
        offset = 0
        while processed[0] < args.images:
            size = min(args.study_size, args.images - processed[0])
            files = [pool_files[(offset + i) % len(pool_files)] for i in range(size)]
            offset += size
            name = f"memory-{uuid.uuid4().hex[:8]}"
            client.submit(files, name)
            wait_for(lambda n=name: client.status_by_name(n)["status"] in FINAL, timeout=3600,
                     interval=0.5, what="study finished")
            processed[0] += size
            per_study.append({"images": processed[0], "rss_mb": pool_rss(),
                              "rss_each_mb": [round(rss_mb(pid), 1) for pid in pids],
                              "pss_total_mb": sum(pss_mb(pid) for pid in pids)})
            print(f"{processed[0]:5d} images  pool RSS {per_study[-1]['rss_each_mb']} MB, "
                  f"total PSS {per_study[-1]['pss_total_mb']:.1f} MB", flush=True)
        stop.set()
        thread.join()
        elapsed = time.monotonic() - started
    warm = per_study[0]["rss_mb"]
    end = per_study[-1]["rss_mb"]
    peak = max(s[1] for s in samples)
    growth = (end - warm) / max(1, (processed[0] - per_study[0]["images"])) * 1000
    result = {"images": processed[0], "chunk_size": chunk, "pool_processes": len(pids),
              "rss_start_mb": start_rss,
              "rss_warm_mb": warm, "rss_end_mb": end, "rss_peak_mb": peak,
              "growth_mb_per_1000_images": growth, "per_study": per_study,
              "seconds": elapsed}
    print(f"\n{len(pids)} pool process(es), the largest one's RSS: start {start_rss:.1f} MB, "
          f"after {per_study[0]['images']} images {warm:.1f} MB, "
          f"after {processed[0]} images {end:.1f} MB, peak {peak:.1f} MB;"
          f" growth after warm-up {growth:+.1f} MB per 1,000 images ({elapsed:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main())
