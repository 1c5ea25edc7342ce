"""Bulk ingest: N compressed chest DICOMs in one upload request, then until the study is done.

    python -m bench.ingest                         # 900 DICOMs against a private stack (a
                                                   # PostgreSQL database pneumoscan_bench,
                                                   # private Redis, gunicorn, one worker sized
                                                   # as `make run` sizes it)
    python -m bench.ingest --url http://127.0.0.1:8000 --token TOKEN    # against `make run`
    python -m bench.ingest --parts 4               # the same files in 4 requests (receiving)

The batch is built once into var/bench/dicom-N/: Kermany X-rays (enlarged to --side pixels
wide, 12 bits stored) encoded with pydicom as compressed DICOM, alternating JPEG 2000 lossless
and JPEG-LS lossless (~400 kB each), plus the real DICOMs of ../shared/data/dicom (one of
which no decoder here can read: it must end `rejected`). Measured: the upload request (sent
until answered), and the time from the answer until the study is finished, with the image
statuses. The bar (issue 15): answered 201 within 60 s, done within 300 s after that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

from bench.common import FINAL, Client, running_stack
from support import DICOM_DIR, KERMANY_TRAIN, REPO_ROOT, dicom_bytes, dicom_header

SYNTAXES = ("JPEG2000Lossless", "JPEGLSLossless")


def dicom_of(path: Path, syntax: str, side: int, index: int) -> bytes:
    """One Kermany X-ray enlarged to `side` pixels wide, as a 12-bit compressed DICOM (as a
    CR detector writes them; pydicom's encoders): ~400 kB, like the batch of issue 15."""
    import pydicom.uid
    from PIL import Image

    with Image.open(path) as image:
        gray = image.convert("L").resize((side, side * 5 // 6), Image.Resampling.BICUBIC)
        pixels = np.asarray(gray, dtype=np.uint16) * 16  # 12 bits stored
    ds = dicom_header(*pixels.shape, bits_allocated=16, bits_stored=12)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "AP"
    ds.PatientAge, ds.AccessionNumber = "004Y", f"BENCH{index:05d}"
    ds.PixelData = pixels.tobytes()
    ds.compress(getattr(pydicom.uid, syntax))
    return dicom_bytes(ds)


def build_batch(n: int, side: int) -> list[Path]:
    """The batch folder (built once, then reused)."""
    folder = REPO_ROOT / "var" / "bench" / f"dicom-{n}-{side}"
    folder.mkdir(parents=True, exist_ok=True)
    real = sorted(DICOM_DIR.glob("*.dcm"))
    sources = sorted((KERMANY_TRAIN / "PNEUMONIA").glob("*.jpeg"))[: n]
    sources += sorted((KERMANY_TRAIN / "NORMAL").glob("*.jpeg"))[: max(0, n - len(sources))]
    paths: list[Path] = []
    started = time.perf_counter()
    for index in range(n - len(real)):
        target = folder / f"cxr-{index:04d}.dcm"
        if not target.exists():
            syntax = SYNTAXES[index % len(SYNTAXES)]
            target.write_bytes(dicom_of(sources[index], syntax, side, index))
        paths.append(target)
    for path in real:
        target = folder / path.name
        if not target.exists():
            target.write_bytes(path.read_bytes())
        paths.append(target)
    print(f"batch: {len(paths)} DICOMs in {folder} "
          f"({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB, built/checked in "
          f"{time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return paths


def post(client: Client, path: str, paths: list[Path], data: dict[str, str]) -> dict:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    response = client.session.post(f"{client.base}{path}", files=files, data=data, timeout=900)
    if response.status_code not in (200, 201):
        raise SystemExit(f"{path} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def ingest(client: Client, paths: list[Path], parts: int, timeout_s: float) -> dict:
    name = f"ingest-{int(time.time())}"
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    sent = time.monotonic()
    if parts <= 1:
        body = post(client, "/api/studies/", paths, {"name": name})
    else:
        bounds = [len(paths) * k // parts for k in range(parts + 1)]
        body = post(client, "/api/studies/", paths[bounds[0]:bounds[1]],
                    {"name": name, "receiving": "true"})
        study_id = body["study"]["id"]
        for a, b in list(pairwise(bounds))[1:]:
            post(client, f"/api/studies/{study_id}/files/", paths[a:b], {})
        client.session.post(f"{client.base}/api/studies/{study_id}/close/", timeout=60)
    answered = time.monotonic()
    study_id = body["study"]["id"]
    status: dict = {}
    while time.monotonic() - answered < timeout_s:
        status = _light(client, study_id)
        if status["status"] in FINAL:
            break
        time.sleep(1.0)
    finished = time.monotonic()
    detail = client.study(study_id)
    counts: dict[str, int] = {}
    for image in detail["images"]:
        counts[image["status"]] = counts.get(image["status"], 0) + 1
    return {
        "files": len(paths), "megabytes": round(size_mb, 1), "parts": max(1, parts),
        "upload_answer_s": round(answered - sent, 1),
        "accepted": len(body["accepted"]) if parts <= 1 else detail["progress"]["total"],
        "done_after_answer_s": round(finished - answered, 1),
        "images_per_s_after_answer": round(len(paths) / max(finished - answered, 1e-9), 2),
        "status": detail["status"], "image_statuses": counts,
    }


def _light(client: Client, study_id: str) -> dict:
    """The study without its images (cheap to poll)."""
    response = client.session.get(f"{client.base}/api/studies/", params={"page_size": 50},
                                  timeout=60)
    response.raise_for_status()
    return next(s for s in response.json()["results"] if s["id"] == study_id)


def table(result: dict) -> str:
    rows = [("files (compressed DICOM)", result["files"]), ("size (MB)", result["megabytes"]),
            ("requests", result["parts"]),
            ("upload answered after (s)", result["upload_answer_s"]),
            ("study finished after the answer (s)", result["done_after_answer_s"]),
            ("images/s after the answer", result["images_per_s_after_answer"]),
            ("study status", result["status"]),
            ("image statuses", json.dumps(result["image_statuses"]))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=900)
    parser.add_argument("--side", type=int, default=1024,
                        help="width of the encoded X-rays (pixels)")
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    paths = build_batch(args.n, args.side)
    if args.url:
        result = ingest(Client(args.url, args.token), paths, args.parts, args.timeout)
    else:
        with running_stack(chunk_size=128, extra_env={"WEB_CONCURRENCY": "2"}) as stack:
            result = ingest(Client(stack.url, stack.token), paths, args.parts, args.timeout)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
