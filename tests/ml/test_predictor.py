"""ml.predictor with the shipped checkpoints on real Kermany images and DICOMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml import DEFAULT_CHECKPOINTS, default_checkpoint
from ml.data import discover, split_by_patient
from ml.predictor import Prediction, Predictor
from ml.preprocess import ImageDecodeError, decode_image, to_model_tensor
from tests.conftest import full_size_jpeg


@pytest.fixture(scope="module")
def predictor(binary_ckpt: Path) -> Predictor:
    return Predictor.from_checkpoint(binary_ckpt, device="cpu")


@pytest.fixture(scope="module")
def val_sample(kermany_dir: Path, predictor: Predictor) -> list:
    """Images of the shipped model's *validation* patients (never trained on)."""
    recs = discover(kermany_dir)
    split = predictor.meta["data"].get("paediatric", predictor.meta["data"])
    seed, frac = split["split_seed"], split["val_fraction"]
    _, val = split_by_patient(recs, frac, seed)
    normals = [r for r in val if r.label == "normal"][:20]
    pneu = [r for r in val if r.label != "normal"][:20]
    return normals + pneu


def test_defaults() -> None:
    assert default_checkpoint("binary") == DEFAULT_CHECKPOINTS["binary"]
    # One multi-head checkpoint serves both tasks.
    assert default_checkpoint("etiology") == default_checkpoint("binary")
    assert default_checkpoint("etiology").name == "multi.pt"
    with pytest.raises(ValueError):
        default_checkpoint("covid")


def test_attributes(predictor: Predictor) -> None:
    assert predictor.task == "binary" and predictor.classes == ["normal", "pneumonia"]
    assert predictor.name and predictor.version
    assert 0 < predictor.threshold < 1 and predictor.input_size >= 64


def test_predictions_on_real_images(predictor: Predictor, val_sample: list) -> None:
    preds = predictor.predict([r.path for r in val_sample], with_cam=True)
    assert len(preds) == len(val_sample)
    correct = 0
    for r, p in zip(val_sample, preds, strict=True):
        assert isinstance(p, Prediction)
        assert p.label in predictor.classes
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.score == pytest.approx(p.probabilities["pneumonia"], abs=1e-6)
        assert (p.label == "pneumonia") == (p.score >= p.threshold)
        assert p.heatmap is not None and p.heatmap.dtype == np.float32
        assert p.heatmap.shape == (predictor.input_size, predictor.input_size)
        assert p.heatmap.min() >= 0.0 and p.heatmap.max() <= 1.0
        assert p.bbox is not None and all(0.0 <= v <= 1.0 for v in p.bbox)
        assert p.bbox[0] < p.bbox[2] and p.bbox[1] < p.bbox[3]
        correct += p.label == ("normal" if r.label == "normal" else "pneumonia")
    # held-out patients, both classes: a working model gets most of them right
    assert correct / len(val_sample) >= 0.85


def test_input_kinds_agree(predictor: Predictor, val_sample: list) -> None:
    path = val_sample[-1].path
    dec = decode_image(path)
    by_path, by_bytes, by_pixels = predictor.predict(
        [path, path.read_bytes(), dec.pixels], with_cam=False
    )
    assert by_path.heatmap is None and by_path.bbox is None
    for other in (by_bytes, by_pixels):
        assert other.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    x = to_model_tensor(
        dec.pixels, predictor.input_size, predictor.mean, predictor.std, predictor.channels
    )
    (by_tensor,) = predictor.predict_tensors(x[None], with_cam=True)
    assert by_tensor.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    batch = torch.stack([x, x, x])
    assert len(predictor.predict_tensors(batch)) == 3


def test_dicom_through_predictor(predictor: Predictor, dicom_dir: Path) -> None:
    (p,) = predictor.predict([dicom_dir / "cr-chest-pa-jpeg-baseline.dcm"])
    assert p.label in predictor.classes
    with pytest.raises(ImageDecodeError):
        predictor.predict([dicom_dir / "cr-hip-jpeg-extended-undecodable.dcm"])


def test_etiology_predictor(etiology_ckpt: Path, val_sample: list) -> None:
    pred = Predictor.from_checkpoint(etiology_ckpt, head="etiology")
    assert pred.classes == ["normal", "bacterial", "viral"]
    preds = pred.predict([r.path for r in val_sample[::4]])
    for p in preds:
        assert p.label in pred.classes
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.score == pytest.approx(1.0 - p.probabilities["normal"], abs=1e-6)
        assert (p.label != "normal") == (p.score >= p.threshold)


def _eager_and_optimised(checkpoint: Path) -> tuple[Predictor, Predictor]:
    return (Predictor.from_checkpoint(checkpoint, device="cpu", optimize=False),
            Predictor.from_checkpoint(checkpoint, device="cpu", optimize=True))


def test_cpu_predictor_runs_the_optimised_forward_pass_by_default(
    binary_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PNEUMO_OPTIMIZE_CPU", raising=False)
    assert isinstance(Predictor.from_checkpoint(binary_ckpt, device="cpu").runner,
                      torch.jit.ScriptModule)
    monkeypatch.setenv("PNEUMO_OPTIMIZE_CPU", "0")
    assert Predictor.from_checkpoint(binary_ckpt, device="cpu").runner is None


@pytest.mark.parametrize("task", ["binary", "etiology"])
def test_optimised_forward_pass_gives_the_eager_predictions(
    task: str, binary_ckpt: Path, etiology_ckpt: Path, val_sample: list
) -> None:
    eager, optimised = _eager_and_optimised(binary_ckpt if task == "binary" else etiology_ckpt)
    assert eager.runner is None and optimised.runner is not None
    batch = torch.stack([eager.to_tensor(r.path) for r in val_sample[::4]])  # 10 images
    for want, got in zip(eager.predict_tensors(batch), optimised.predict_tensors(batch),
                         strict=True):
        assert got.label == want.label and got.bbox == pytest.approx(want.bbox, abs=1e-3)
        for cls, p in want.probabilities.items():
            assert got.probabilities[cls] == pytest.approx(p, abs=1e-4)
        assert got.heatmap is not None and want.heatmap is not None
        assert np.abs(got.heatmap - want.heatmap).max() < 1e-3
    # Any batch size, including the single image of a one-image study.
    single = optimised.predict_tensors(batch[:1])[0]
    assert single.label == eager.predict_tensors(batch[:1])[0].label


def test_optimisation_that_fails_falls_back_to_the_eager_model(
    binary_ckpt: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_trace(*args: object, **kwargs: object) -> None:
        raise RuntimeError("TorchScript is not available in this build")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    with caplog.at_level("WARNING", logger="ml.predictor"):
        fallback = Predictor.from_checkpoint(binary_ckpt, device="cpu", optimize=True)
    assert fallback.runner is None
    assert "using the eager model" in caplog.text and "not available" in caplog.text
    batch = torch.zeros(2, fallback.channels, fallback.input_size, fallback.input_size)
    assert len(fallback.predict_tensors(batch)) == 2


def test_optimised_outputs_that_differ_are_not_used(
    binary_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_optimize = torch.jit.optimize_for_inference

    def wrong(module: torch.jit.ScriptModule) -> torch.nn.Module:
        real_optimize(module)

        class Off(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                feats, logits = module(x)
                return feats, logits + 1.0

        return Off()

    monkeypatch.setattr(torch.jit, "optimize_for_inference", wrong)
    assert Predictor.from_checkpoint(binary_ckpt, device="cpu", optimize=True).runner is None


@pytest.mark.parametrize("task", ["binary", "etiology"])
def test_working_copy_gives_the_predictions_of_the_full_original(
    task: str, binary_ckpt: Path, etiology_ckpt: Path, dicom_dir: Path, val_sample: list
) -> None:
    """The worker reads DICOM and full-size uploads from the working copy the upload made (a
    large JPEG decoded at reduced scale there): same labels, probabilities within 0.02 of the
    full original, for the real DICOMs and for full-size JPEGs."""
    from ml.preprocess import WORKING_COPY_SIDE, preprocess, working_copy_jpeg

    model = Predictor.from_checkpoint(binary_ckpt if task == "binary" else etiology_ckpt)
    files = [full_size_jpeg(record.path) for record in val_sample[::4]]
    files += [p.read_bytes() for p in sorted(dicom_dir.glob("*.dcm"))
              if "undecodable" not in p.name]
    assert len(files) == 10 + 9
    originals = [decode_image(data).pixels for data in files]
    copies = [decode_image(working_copy_jpeg(
        decode_image(data, reduce_to=WORKING_COPY_SIDE).pixels)).pixels for data in files]
    full = model.predict_tensors(torch.stack([preprocess(px, model.spec) for px in originals]))
    worked = model.predict_tensors(torch.stack([preprocess(px, model.spec) for px in copies]))
    for a, b in zip(full, worked, strict=True):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 0.02
