"""The SR and SC builders from plain values, on the header of a real radiograph."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from backend.dicomnet import objects
from support import DICOM_DIR

MODEL = {"model_name": "pneumonet-binary", "model_version": "1.2.0"}


@pytest.fixture
def source() -> Dataset:
    path = DICOM_DIR / "cr-chest-pa-jpeg-baseline.dcm"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_each_model_version_gets_its_own_series_and_instance_uids(source: Dataset) -> None:
    first = objects.build_sr(source, objects.Findings(**MODEL, pneumonia=False, probability=0.1,
                                                      threshold=0.5))
    same = objects.build_sr(source, objects.Findings(**MODEL, pneumonia=False, probability=0.1,
                                                     threshold=0.5))
    newer = objects.build_sr(source, objects.Findings(
        model_name="pneumonet-binary", model_version="1.3.0", pneumonia=False, probability=0.1,
        threshold=0.5))
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (same.SOPInstanceUID,
                                                               same.SeriesInstanceUID)
    assert newer.SeriesInstanceUID != first.SeriesInstanceUID
    assert newer.SOPInstanceUID != first.SOPInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.")
    assert first.StudyInstanceUID == source.StudyInstanceUID


def test_an_analysed_out_of_scope_image_carries_the_warning(source: Dataset) -> None:
    sr = objects.build_sr(source, objects.Findings(**MODEL, pneumonia=True, probability=0.9,
                                                   threshold=0.5, scope_reason="adult"))
    text = str(sr)
    assert "Present" in text and "Outside the validated population" in text
    assert "Adult patient" in text


@pytest.mark.parametrize("reason", ["lateral", "inverted", "undecodable", "something new"])
def test_not_analysed_images_say_why(source: Dataset, reason: str) -> None:
    text = str(objects.build_sr(source, objects.Findings(**MODEL, not_analysed_reason=reason)))
    assert "Unknown" in text and "Reason the image was not analysed" in text
    expected = objects.REASONS.get(reason, objects.REASONS["out_of_scope"])[:64]
    assert expected in text


def test_invalid_copied_values_are_repaired_or_dropped(source: Dataset) -> None:
    source.PatientAge = "62"  # as the modality wrote it; an Age String is 062Y
    assert objects.clean_source(source).PatientAge == "062Y"
    source.PatientAge = "sixty"
    assert "PatientAge" not in objects.clean_source(source)
    del source.PatientBirthDate
    assert objects.clean_source(source).PatientBirthDate in (None, "")
