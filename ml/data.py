"""Dataset discovery, labels, patient ids, patient-level splits and an in-memory image cache.

Layouts understood by ``discover``:

* ``ROOT/{NORMAL,PNEUMONIA}/*``                      (flat, e.g. the Kermany train folder)
* ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*``     (the Kaggle/Mendeley layout)
* a CSV manifest with columns ``path,label`` (paths relative to the CSV's folder)

Labels are kept at the finest level known ("normal", "bacterial", "viral", or "pneumonia"
when the etiology is unknown) and mapped to class indices per task.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.preprocess import ImageDecodeError, decode_image, resize_pixels

TASK_CLASSES: dict[str, list[str]] = {
    "binary": ["normal", "pneumonia"],
    "etiology": ["normal", "bacterial", "viral"],
}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}
SPLIT_DIRS = ("train", "val", "test")
_CLASS_DIRS = {"normal": "normal", "pneumonia": "pneumonia"}
_LABEL_ALIASES = {
    "normal": "normal",
    "0": "normal",
    "negative": "normal",
    "pneumonia": "pneumonia",
    "1": "pneumonia",
    "positive": "pneumonia",
    "bacterial": "bacterial",
    "bacteria": "bacterial",
    "viral": "viral",
    "virus": "viral",
}


@dataclass(frozen=True)
class Record:
    path: Path
    label: str  # "normal" | "bacterial" | "viral" | "pneumonia" (etiology unknown)
    patient: str


# --------------------------------------------------------------------------------------------
# Names -> patient / etiology
# --------------------------------------------------------------------------------------------

_PERSON_RE = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.IGNORECASE)
_TRAILING_COUNTER_RE = re.compile(r"[-_]\d+$")


def patient_id(name: str | Path) -> str:
    """Patient identifier from a Kermany-style file name.

    ``person1_bacteria_1.jpeg`` -> ``person1``; ``IM-0115-0001.jpeg`` -> ``IM-0115``;
    ``NORMAL2-IM-0123-0001.jpeg`` -> ``NORMAL2-IM-0123``. Some normals carry two counters
    (``IM-0429-0001-0002``): they are still patient ``IM-0429`` — we deliberately take the
    coarsest plausible id, because merging two patients is harmless for a split while
    separating one patient's images would leak. Unknown names: the stem minus the last counter.
    """
    stem = Path(name).name
    for suffix in IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    m = _PERSON_RE.match(stem) or _IM_RE.match(stem)
    if m:
        return m.group(1)
    stripped = _TRAILING_COUNTER_RE.sub("", stem)
    return stripped or stem


def etiology_from_name(name: str | Path) -> str | None:
    lower = Path(name).name.lower()
    if "bacteria" in lower:
        return "bacterial"
    if "virus" in lower or "viral" in lower:
        return "viral"
    return None


def _fine_label(coarse: str, path: Path) -> str:
    if coarse == "pneumonia":
        return etiology_from_name(path) or "pneumonia"
    return coarse


def label_index(label: str, task: str) -> int | None:
    """Class index of a fine label for ``task``; None if unusable (etiology unknown)."""
    classes = TASK_CLASSES[task]
    if task == "binary":
        return 0 if label == "normal" else 1
    return classes.index(label) if label in classes else None


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def _scan_class_dirs(root: Path) -> list[Record]:
    records: list[Record] = []
    for sub in sorted(root.iterdir()):
        coarse = _CLASS_DIRS.get(sub.name.lower()) if sub.is_dir() else None
        if coarse is None:
            continue
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                records.append(Record(f, _fine_label(coarse, f), patient_id(f.name)))
    return records


def read_manifest(csv_path: Path) -> list[Record]:
    records: list[Record] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path}: manifest needs columns 'path,label'")
        for i, row in enumerate(reader, start=2):
            raw = (row["label"] or "").strip().lower()
            if raw not in _LABEL_ALIASES:
                raise ValueError(f"{csv_path}:{i}: unknown label {row['label']!r}")
            p = Path(row["path"].strip())
            path = p if p.is_absolute() else (csv_path.parent / p)
            label = _fine_label(_LABEL_ALIASES[raw], path)
            pid = (row.get("patient") or "").strip() or patient_id(path.name)
            records.append(Record(path, label, pid))
    return records


def discover(root: str | Path, split: str | Sequence[str] | None = None) -> list[Record]:
    """Find labelled images under ``root`` (see module docstring for layouts).

    With a split layout, ``split`` selects sub-folders (e.g. "test" or ("train", "val"));
    None means: "test" for evaluation callers is *not* assumed — all splits are returned.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return read_manifest(root)
        raise ValueError(f"{root}: expected a directory or a .csv manifest")
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    split_dirs = [d for d in SPLIT_DIRS if (root / d).is_dir()]
    if split_dirs:
        wanted = [split] if isinstance(split, str) else list(split or split_dirs)
        records = []
        for d in wanted:
            if (root / d).is_dir():
                records.extend(_scan_class_dirs(root / d))
        return records
    records = _scan_class_dirs(root)
    if not records:
        manifests = sorted(root.glob("*.csv"))
        if len(manifests) == 1:
            return read_manifest(manifests[0])
        raise ValueError(
            f"no images found under {root}: expected NORMAL/ and PNEUMONIA/ folders, "
            "train/val/test splits of those, or a path,label CSV manifest"
        )
    return records


def task_records(records: Sequence[Record], task: str) -> list[Record]:
    """Records usable for ``task`` (etiology drops pneumonias with unknown etiology)."""
    if task not in TASK_CLASSES:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_CLASSES)}")
    return [r for r in records if label_index(r.label, task) is not None]


def split_by_patient(
    records: Sequence[Record],
    val_fraction: float,
    seed: int,
) -> tuple[list[Record], list[Record]]:
    """Seeded patient-level split, stratified by each patient's (majority) fine label.

    All images of a patient land on the same side, so validation never sees a patient the
    model was trained on (Kermany has up to ~10 images per patient).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    strata: dict[str, list[str]] = {}
    for pid in sorted(by_patient):
        label = Counter(r.label for r in by_patient[pid]).most_common(1)[0][0]
        strata.setdefault(label, []).append(pid)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in sorted(strata):
        pids = strata[label]
        order = rng.permutation(len(pids))
        n_val = round(val_fraction * len(pids))
        val_patients.update(pids[i] for i in order[:n_val])
    train = [r for r in records if r.patient not in val_patients]
    val = [r for r in records if r.patient in val_patients]
    return train, val


def training_split(
    records: Sequence[Record],
    val_fraction: float,
    seed: int,
    max_train_images: int | None = None,
) -> tuple[list[Record], list[Record]]:
    """``split_by_patient``, then at most ``max_train_images`` training records (a seeded
    subsample, for quick runs and comparisons; validation is never subsampled)."""
    train, val = split_by_patient(records, val_fraction, seed)
    if max_train_images and len(train) > max_train_images:
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(train), max_train_images, replace=False))
        train = [train[i] for i in keep]
    return train, val


def summarize(records: Sequence[Record], task: str) -> dict[str, object]:
    classes = TASK_CLASSES[task]
    counts = Counter(classes[label_index(r.label, task) or 0] for r in records)
    return {
        "images": len(records),
        "patients": len({r.patient for r in records}),
        "per_class": {c: int(counts.get(c, 0)) for c in classes},
    }


# --------------------------------------------------------------------------------------------
# In-memory cached dataset
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the block. A per-image resize is too small to share among
    threads: each op's parallel region then costs more than the op (twice the time on the
    2-core machine with 5 threads; three trainings of 5 threads each on a GPU host's 16
    virtual cores had not decoded their 5,216 images after 8 minutes, on one thread ~10 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decode_resized(paths: Sequence[Path], size: int, progress: bool = False
                   ) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Every image decoded once (through ml.preprocess) and resized to ``size``: an (N,S,S)
    uint8 tensor of the readable ones, their indices in ``paths``, and the unreadable ones
    with the reason. The training caches of both trainings are made here."""
    images = torch.empty((len(paths), size, size), dtype=torch.uint8)
    kept: list[int] = []
    skipped: list[tuple[Path, str]] = []
    iterator: Sequence[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc=f"decoding {len(paths)} images", unit="img", leave=False)
    with one_torch_thread():
        for i, p in enumerate(iterator):
            try:
                pixels = decode_image(p).pixels
            except ImageDecodeError as exc:
                skipped.append((Path(p), str(exc)))
                continue
            t = resize_pixels(pixels, size)
            images[len(kept)] = (t * 255.0).round_().to(torch.uint8)
            kept.append(i)
    return (images[: len(kept)].clone() if len(kept) < len(paths) else images), kept, skipped


class CachedImageDataset(torch.utils.data.Dataset):
    """Decodes every image once (through ml.preprocess) and keeps it as uint8 in memory.

    Images are stored already resized to ``size`` so that a CPU epoch is pure tensor math:
    5,216 images at 224 px take ~260 MB. uint8 quantisation of the [0,1] float image
    (error <= 1/510) is far below JPEG noise, so this does not create a train/serve skew.
    Unreadable files are skipped and listed in ``self.skipped``.
    """

    def __init__(
        self, records: Sequence[Record], task: str, size: int, progress: bool = False
    ) -> None:
        self.task = task
        self.size = int(size)
        self.classes = TASK_CLASSES[task]
        recs = task_records(records, task)
        self.images, kept_at, self.skipped = decode_resized(
            [r.path for r in recs], self.size, progress)
        kept = [recs[i] for i in kept_at]
        labels = [label_index(r.label, task) for r in kept]
        assert None not in labels  # task_records kept only labelled records
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.records = kept

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255.0)[None], int(self.labels[i])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,1,S,S) float in [0,1] and labels for index tensor ``idx`` (no DataLoader needed)."""
        return self.images[idx].float().div_(255.0).unsqueeze(1), self.labels[idx]
