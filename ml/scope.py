"""The scope gate: is an image a frontal paediatric chest radiograph, the population the models
were validated on? Otherwise it is *out of scope*, with a reason, and gets no pneumonia label.

Two sources of evidence, combined by ``scope_verdict``:

* **Pixels** — the shared network's ``scope`` head (five classes, ``SCOPE_CLASSES``) trained on
  the paediatric training images (in scope) against adult chest X-rays, laterals, CT slices,
  non-radiographs and negative (inverted) grey scale. It runs in the same forward pass as the
  pneumonia heads, so it costs a few multiply-adds per image.
* **DICOM metadata**, when present and explicit: PatientAge of 18 years or more, a
  BodyPartExamined other than the chest, a lateral ViewPosition or a modality that is not a
  projection radiograph. Metadata can only take an image *out* of scope: a missing or blank
  tag proves nothing (JPEGs have none, and many DICOMs leave these tags empty).

The gate's training negatives are built in ``ml.scope_data``. This module needs only numpy:
the web tier reads the reasons and their texts from here without loading torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SCOPE_CLASSES: list[str] = ["in_scope", "adult", "lateral", "not_chest_radiograph", "inverted"]
OUT_OF_SCOPE_REASONS: tuple[str, ...] = tuple(SCOPE_CLASSES[1:])
REASON_TEXT: dict[str, str] = {
    "adult": "adult chest X-ray",
    "lateral": "lateral chest X-ray",
    "not_chest_radiograph": "not a chest radiograph",
    "inverted": "inverted (negative) grey scale",
}
ADULT_AGE_YEARS = 18.0
# Projection radiography modalities; anything else (CT, MR, US, NM, ...) is out of scope.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "DR", "OT", "SC", ""})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "TORAX", "THORAKS", ""})
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


@dataclass(frozen=True)
class ScopeVerdict:
    in_scope: bool
    reason: str | None  # one of OUT_OF_SCOPE_REASONS when out of scope
    source: str  # "pixels" | "metadata"
    p_in_scope: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"in_scope": self.in_scope, "reason": self.reason, "source": self.source,
                "p_in_scope": self.p_in_scope}


def age_in_years(value: str | None) -> float | None:
    """DICOM Age String (``nnnD|W|M|Y``, e.g. ``062Y``, ``018M``) in years, or None."""
    if not value:
        return None
    m = _AGE_RE.match(str(value))
    if not m:
        return None
    return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]


def scope_from_metadata(metadata: Mapping[str, str] | None) -> str | None:
    """An out-of-scope reason read from explicit DICOM attributes, or None."""
    if not metadata:
        return None
    modality = str(metadata.get("Modality") or "").strip().upper()
    body_part = str(metadata.get("BodyPartExamined") or "").strip().upper()
    if modality not in RADIOGRAPH_MODALITIES or body_part not in CHEST_BODY_PARTS:
        return "not_chest_radiograph"
    if str(metadata.get("ViewPosition") or "").strip().upper() in LATERAL_VIEWS:
        return "lateral"
    age = age_in_years(metadata.get("PatientAge"))
    if age is not None and age >= ADULT_AGE_YEARS:
        return "adult"
    return None


def scope_verdict(
    scope_probs: Sequence[float] | np.ndarray,
    threshold: float,
    metadata: Mapping[str, str] | None = None,
) -> ScopeVerdict:
    """The image's verdict: metadata first (explicit facts), then the scope head.

    ``scope_probs`` are the calibrated probabilities over ``SCOPE_CLASSES``; the image is out
    of scope when P(in_scope) < ``threshold``, for the most likely of the other reasons.
    """
    probs = np.asarray(scope_probs, dtype=np.float64)
    p_in = float(probs[0])
    reason = scope_from_metadata(metadata)
    if reason is not None:
        return ScopeVerdict(False, reason, "metadata", p_in)
    # The pixel rule is scope_verdicts', applied to one row.
    (in_scope,), (idx,) = scope_verdicts(probs[None], threshold)
    return ScopeVerdict(bool(in_scope), None if in_scope else SCOPE_CLASSES[int(idx)], "pixels",
                        p_in)


def scope_verdicts(
    scope_probs: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Batch form of the pixel rule: (in_scope bool array, reason index into SCOPE_CLASSES)."""
    probs = np.asarray(scope_probs)
    in_scope = probs[:, 0] >= threshold
    reason = np.where(in_scope, 0, 1 + probs[:, 1:].argmax(1))
    return in_scope, reason


def describe(reason: str | None) -> str:
    """Human text for a reason: "adult chest X-ray (outside the validated population)"."""
    if reason is None:
        return "in scope"
    return f"{REASON_TEXT.get(reason, reason)} (outside the validated population)"
