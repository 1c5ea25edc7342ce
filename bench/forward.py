"""The model's forward pass alone: eager against the optimised CPU runner, alone and beside a
busy Python thread (what the worker's decode and heatmap threads are to it).

    python -m bench.forward [--checkpoint ml/weights/binary.pt] [--batch 32] [--threads 2]

Prints ms per image for each (runner, neighbour) pair, repeated --repeats times in turn so
the machine's drift hits all alike, and the medians. The busy thread runs at idle CPU
priority and only executes Python bytecode: it competes for the GIL, hardly for the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="ml/weights/binary.pt")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker
    import torch

    from ml.checkpoint import model_from_checkpoint
    from ml.predictor import cpu_runner

    torch.set_num_threads(args.threads)
    model, meta = model_from_checkpoint(args.checkpoint, map_location="cpu")
    model.eval()
    spec = meta["preprocessing"]
    size, channels = int(spec["input_size"]), int(spec.get("channels", 1))
    runner = cpu_runner(model, channels, size)
    if runner is None:
        sys.exit("the optimised runner is not available here (see the warning above)")
    x = torch.rand(args.batch, channels, size, size)

    def ms_per_image(forward: Callable[[torch.Tensor], object]) -> float:
        with torch.inference_mode():
            for _ in range(3):
                forward(x)
            started = time.perf_counter()
            for _ in range(args.passes):
                forward(x)
        return (time.perf_counter() - started) / args.passes / args.batch * 1000

    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, forward in (("eager", model), ("optimised", runner)):
            for neighbour in ("none", "busy Python thread"):
                stop = threading.Event()
                busy = threading.Thread(target=_spin, args=(stop,), daemon=True)
                if neighbour != "none":
                    busy.start()
                results.setdefault((name, neighbour), []).append(ms_per_image(forward))
                stop.set()
                if busy.is_alive():
                    busy.join()
    print(f"\n{meta.get('arch', '?')} {size} px, batch {args.batch}, {args.threads} torch "
          f"threads, {args.repeats} repeats")
    print(f"{'forward pass':<12} {'neighbour':<20} {'median ms/image':>16}  every repeat")
    for (name, neighbour), values in results.items():
        print(f"{name:<12} {neighbour:<20} {statistics.median(values):16.3f}  "
              + " ".join(f"{v:.3f}" for v in values))
    return 0


def _spin(stop: threading.Event) -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux: normal priority
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while not stop.is_set():
        sum(range(1000))


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parents[1])
    sys.exit(main())
