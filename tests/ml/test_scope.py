"""The scope gate's rules: DICOM metadata, the pixel verdict, and its training negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.scope import (
    SCOPE_CLASSES,
    age_in_years,
    describe,
    scope_from_metadata,
    scope_verdict,
    scope_verdicts,
)
from ml.scope_data import scope_records, split_scope_records, synthetic_non_radiographs


@pytest.mark.parametrize(
    ("value", "years"),
    [("062Y", 62.0), ("018M", 1.5), ("006W", 6 * 7 / 365.25), ("010D", 10 / 365.25),
     ("7", 7.0), ("", None), ("abc", None), (None, None)],
)
def test_age_in_years_reads_dicom_age_strings(value: str | None, years: float | None) -> None:
    got = age_in_years(value)
    assert got == pytest.approx(years) if years is not None else got is None


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"Modality": "CR", "BodyPartExamined": "HIP"}, "not_chest_radiograph"),
        ({"Modality": "CT", "BodyPartExamined": "CHEST"}, "not_chest_radiograph"),
        ({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "LL"}, "lateral"),
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "PatientAge": "062Y"}, "adult"),
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "PatientAge": "004Y",
          "ViewPosition": "PA"}, None),
        ({"Modality": "", "BodyPartExamined": "", "PatientAge": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_metadata_only_takes_images_out_with_explicit_facts(
    metadata: dict[str, str] | None, reason: str | None
) -> None:
    assert scope_from_metadata(metadata) == reason


def test_pixel_verdict_uses_the_threshold_and_most_likely_reason() -> None:
    probs = np.array([0.3, 0.1, 0.5, 0.05, 0.05])
    assert scope_verdict(probs, 0.25).in_scope
    out = scope_verdict(probs, 0.4)
    assert (out.in_scope, out.reason, out.source) == (False, "lateral", "pixels")
    # Metadata wins over pixels that look fine.
    meta = scope_verdict(np.array([0.99, 0, 0, 0, 0.01]), 0.4, {"PatientAge": "040Y"})
    assert (meta.in_scope, meta.reason, meta.source) == (False, "adult", "metadata")


def test_batch_verdicts_match_single_verdicts() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(SCOPE_CLASSES)), size=50)
    in_scope, reason = scope_verdicts(probs, 0.2)
    for row, ok, r in zip(probs, in_scope, reason, strict=True):
        v = scope_verdict(row, 0.2)
        assert v.in_scope == ok
        assert (v.reason or "in_scope") == SCOPE_CLASSES[r]


def test_describe_says_why_an_image_was_not_analysed() -> None:
    assert describe("adult") == "adult chest X-ray (outside the validated population)"
    assert describe(None) == "in scope"


def _folder(root: Path, names: dict[str, int]) -> Path:
    from PIL import Image

    for folder, n in names.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16), i * 10, np.uint8)).save(root / folder / f"{i}.jpeg")
    return root


def test_scope_records_map_folders_to_reasons(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"normal": 3, "covid": 2, "lateral": 4, "ct": 5, "unrelated": 2})
    recs = scope_records(root)
    counts = {r: sum(1 for x in recs if x.reason == r) for r in SCOPE_CLASSES}
    assert counts == {"in_scope": 0, "adult": 5, "lateral": 4, "not_chest_radiograph": 5,
                      "inverted": 0}
    train, val = split_scope_records(recs, 0.4, seed=0)
    assert {r.path for r in train}.isdisjoint({r.path for r in val})
    assert len(train) + len(val) == len(recs)
    assert {r.reason for r in val} == {"adult", "lateral", "not_chest_radiograph"}


def test_scope_records_refuse_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no out-of-scope examples"):
        scope_records(tmp_path)
    with pytest.raises(FileNotFoundError):
        scope_records(tmp_path / "missing")


def test_synthetic_non_radiographs_are_deterministic_and_varied() -> None:
    a = synthetic_non_radiographs(12, 32, seed=3)
    b = synthetic_non_radiographs(12, 32, seed=3)
    assert a.shape == (12, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len({x.tobytes() for x in a}) == 12
    assert float(a.std()) > 10
