"""The multi-head model: one network trained for binary, etiology and scope, one checkpoint,
one forward pass serving every answer, and the tools (evaluate, predict, calibrate, bench)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml.checkpoint import load_checkpoint, save_checkpoint
from ml.models import build_model
from ml.multitask import (
    HEADS,
    IGNORE,
    STRESS,
    MultiTaskConfig,
    head_slices,
    multitask_loss,
    threshold_for_site,
    train,
)
from ml.predictor import Predictor
from ml.scope import SCOPE_CLASSES
from tests.ml.conftest import write_gray


@pytest.fixture(scope="module")
def scope_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Out-of-scope examples: 'adult' images are bright and flat, 'ct' are rings."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("scope")
    yy, xx = np.mgrid[:48, :48]
    for i in range(10):
        write_gray(root / "normal" / f"normal-{i}.jpeg",
                   rng.normal(200, 10, (48, 48)).clip(0, 255).astype(np.uint8))
        ring = (((yy - 24) ** 2 + (xx - 24) ** 2) % 40 < 20) * 200
        write_gray(root / "ct" / f"ct-{i}.jpeg", ring.astype(np.uint8))
        write_gray(root / "lateral" / f"lateral-{i}.jpeg",
                   np.tile(np.linspace(0, 255, 48), (48, 1)).astype(np.uint8))
    return root


def tiny_config(**overrides: Any) -> MultiTaskConfig:
    """A run small enough for a test: 32 px, two epochs, a handful of out-of-scope draws."""
    settings: dict[str, Any] = dict(
        epochs=2, input_size=32, batch_size=16, synthetic=20, adult_per_epoch=8,
        lateral_per_epoch=4, other_per_epoch=8, val_fraction=0.3, scope_val_fraction=0.3,
        bootstrap=0, progress=False, threads=1, lr=1e-2)
    return MultiTaskConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def multi_ckpt(tmp_path_factory: pytest.TempPathFactory, scope_folder: Path) -> Path:
    root = tmp_path_factory.mktemp("kermany_like")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for i in range(24):
        base = rng.normal(90, 20, (48, 48)).clip(0, 255)
        write_gray(root / "NORMAL" / f"IM-{i:04d}-0001.jpeg", base.astype(np.uint8))
        blob = base.copy()
        y, x = rng.integers(10, 38, 2)
        blob[(yy - y) ** 2 + (xx - x) ** 2 < 36] = 230
        kind = "bacteria" if i % 2 else "virus"
        write_gray(root / "PNEUMONIA" / f"person{i}_{kind}_{i}.jpeg", blob.astype(np.uint8))
    result = train(tiny_config(), root, scope_folder, command="pytest", log=lambda s: None)
    out = tmp_path_factory.mktemp("ckpt") / "multi.pt"
    save_checkpoint(out, result.model, result.meta)
    pytest.multi_data_root = root  # type: ignore[attr-defined]
    return out


def test_head_slices_cover_the_output_vector_without_overlap() -> None:
    slices = head_slices()
    assert slices == {"binary": (0, 2), "etiology": (2, 5), "scope": (5, 10)}
    assert list(HEADS["scope"]) == SCOPE_CLASSES


def test_loss_ignores_heads_without_labels() -> None:
    logits = torch.zeros(2, 10, requires_grad=True)
    cfg = MultiTaskConfig(label_smoothing=0.0)
    none = {"binary": None, "etiology": None, "scope": None}
    only_scope = {"binary": torch.tensor([IGNORE, IGNORE]),
                  "etiology": torch.tensor([IGNORE, IGNORE]), "scope": torch.tensor([1, 2])}
    loss = multitask_loss(logits, only_scope, none, cfg)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(cfg.scope_weight * np.log(5), rel=1e-5)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, :5] == 0)  # no gradient into binary/etiology


def test_site_threshold_keeps_sensitivity_and_prefers_youden() -> None:
    rng = np.random.default_rng(0)
    pos = np.r_[np.ones(200), np.zeros(200)].astype(bool)
    scores = np.r_[rng.uniform(0.4, 1.0, 200), rng.uniform(0.0, 0.6, 200)]
    t = threshold_for_site(scores, pos, 0.95)
    assert (scores[pos] >= t).mean() >= 0.95
    # Youden's optimum here is near 0.5; the sensitivity cap alone would be lower.
    assert 0.4 < t <= 0.6


def test_stress_perturbations_keep_shape_and_range() -> None:
    x = torch.rand(3, 1, 32, 32)
    for name, f in STRESS.items():
        y = f(x)
        assert y.shape == x.shape, name
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6, name
        assert not torch.equal(y, x), name


def test_checkpoint_records_every_head_with_its_operating_point(multi_ckpt: Path) -> None:
    state, meta = load_checkpoint(multi_ckpt)
    assert meta["task"] == "multi"
    assert set(meta["heads"]) == {"binary", "etiology", "scope"}
    for name, head in meta["heads"].items():
        assert head["classes"] == HEADS[name]
        assert 0.0 < head["threshold"] < 1.0 and head["temperature"] > 0
    assert state["linear.weight"].shape[0] == 10
    assert meta["threshold"] == meta["heads"]["binary"]["threshold"]
    assert meta["preprocessing"]["input_size"] == 32
    assert set(meta["validation"]) >= {"binary", "etiology", "stress", "scope"}
    assert set(meta["validation"]["stress"]) == {"none", *STRESS}
    assert meta["command"] == "pytest"


def test_gate_is_reported_per_adult_source_folder(multi_ckpt: Path) -> None:
    gate = load_checkpoint(multi_ckpt)[1]["validation"]["scope"]
    # The fixture's adults all come from its "normal" folder: one source group, same images.
    assert gate["adult examples: normal"]["n"] == gate["adult examples"]["n"] > 0
    assert gate["adult examples: normal"]["out_of_scope_rate"] == pytest.approx(
        gate["adult examples"]["out_of_scope_rate"])


def test_one_pass_gives_binary_etiology_scope_and_heatmap(multi_ckpt: Path) -> None:
    pred = Predictor.from_checkpoint(multi_ckpt, threads=1)
    x = torch.stack([pred.to_tensor(np.random.default_rng(i).random((40, 40)).astype(np.float32))
                     for i in range(3)])
    calls = []
    model_forward = pred.model.forward

    def counting(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(inp))
        return model_forward(inp)

    pred.runner = None
    pred.model.forward = counting  # type: ignore[method-assign]
    out = pred.predict_tensors(x, with_cam=True)
    assert calls == [3]  # one forward pass for all three answers
    for p in out:
        assert p.label in HEADS["binary"]
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.etiology is not None and p.etiology.label in HEADS["etiology"]
        assert sum(p.etiology.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.scope is not None and isinstance(p.scope.in_scope, bool)
        assert p.heatmap is not None and p.heatmap.shape == (32, 32)
        # The etiology answer follows the shared rule: normal iff 1 - P(normal) < threshold.
        assert (p.etiology.label == "normal") == (p.etiology.score < p.etiology.threshold)


def test_etiology_head_serves_as_primary(multi_ckpt: Path) -> None:
    pred = Predictor.from_checkpoint(multi_ckpt, threads=1, head="etiology")
    assert pred.classes == HEADS["etiology"] and pred.task == "etiology"
    (p,) = pred.predict([np.full((40, 40), 0.5, np.float32)])
    assert set(p.probabilities) == set(HEADS["etiology"]) and p.etiology is None
    with pytest.raises(ValueError, match="no 'nope' head"):
        Predictor.from_checkpoint(multi_ckpt, head="nope")


def test_dicom_metadata_takes_an_image_out_of_scope(multi_ckpt: Path) -> None:
    pred = Predictor.from_checkpoint(multi_ckpt, threads=1)
    img = np.full((40, 40), 0.4, np.float32)
    (p,) = pred.predict([img], metadata=[{"Modality": "CR", "BodyPartExamined": "HIP"}])
    assert p.scope is not None
    assert (p.scope.in_scope, p.scope.reason, p.scope.source) == (
        False, "not_chest_radiograph", "metadata")


def test_cli_predict_withholds_the_label_out_of_scope(
    multi_ckpt: Path, dicom_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ml.cli import main

    hip = dicom_dir / "cr-hip-monochrome2-rle.dcm"
    assert main(["predict", "--checkpoint", str(multi_ckpt), str(hip)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["scope"] == {"in_scope": False, "reason": "not_chest_radiograph"}
    assert row["label"] is None and row["etiology"]["label"] is None
    assert main(["predict", "--checkpoint", str(multi_ckpt), "--scope", "warn", str(hip)]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["label"] in HEADS["binary"]


def test_evaluate_reports_out_of_scope_rate_over_all_images(
    multi_ckpt: Path, dicom_dir: Path, tmp_path: Path
) -> None:
    from ml.evaluate import evaluate_checkpoint

    root = pytest.multi_data_root  # type: ignore[attr-defined]
    for task, n_classes in (("binary", 2), ("etiology", 3)):
        rep = evaluate_checkpoint(multi_ckpt, root, n_boot=0, task=task)
        assert rep["n"] == 48 and len(rep["classes"]) == n_classes
        assert rep["scope"]["n"] == 48
        assert 0.0 <= rep["scope"]["out_of_scope_rate"] <= 1.0
        assert sum(rep["scope"]["reasons"].values()) == rep["scope"]["out_of_scope"]


def test_calibrating_the_etiology_head_keeps_the_binary_head(
    multi_ckpt: Path, tmp_path: Path
) -> None:
    from ml.evaluate import recalibrate_checkpoint

    root = pytest.multi_data_root  # type: ignore[attr-defined]
    out = tmp_path / "site.pt"
    recalibrate_checkpoint(multi_ckpt, root, out, sensitivity=0.9, task="etiology")
    _, before = load_checkpoint(multi_ckpt)
    _, after = load_checkpoint(out)
    assert after["heads"]["binary"] == before["heads"]["binary"]
    assert after["threshold"] == before["threshold"]
    assert after["heads"]["etiology"]["threshold"] != before["heads"]["etiology"]["threshold"]
    assert after["calibration"]["n"] == 48


def test_bench_versus_compares_pipelines_side_by_side(multi_ckpt: Path) -> None:
    from ml import WEIGHTS_DIR
    from ml.bench import run_versus

    v1 = [WEIGHTS_DIR / "v1" / "binary.pt", WEIGHTS_DIR / "v1" / "etiology.pt"]
    out = run_versus(multi_ckpt, v1, batch_size=8, images=16,
                     rounds=2, threads=1, verbose=False)
    assert out["images"] == 16
    assert out["images_per_second"] > 0 and out["images_per_second_versus"] > 0
    lo, hi = out["ratio_range"]
    assert lo <= out["ratio"] <= hi


def test_stress_test_reports_every_perturbation_with_the_gate(multi_ckpt: Path) -> None:
    from ml.stress import format_table, stress_test

    root = pytest.multi_data_root  # type: ignore[attr-defined]
    rows = stress_test(multi_ckpt, root, threads=1)
    assert list(rows) == ["none", *STRESS]
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 <= row["out_of_scope_rate"] <= 1.0
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "out of scope rate" in table


def test_heatmaps_command_reports_edge_weight_per_predicted_class(
    multi_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ml.cli import main

    root = pytest.multi_data_root  # type: ignore[attr-defined]
    out = tmp_path / "framing.json"
    assert main(["heatmaps", "--checkpoint", str(multi_ckpt), "--data", str(root),
                 "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) <= set(HEADS["binary"]) and sum(r["n"] for r in rows.values()) > 0
    for r in rows.values():
        assert 0.0 <= r["top_share"] <= r["edge_share"] <= 1.0
        assert r["edge_share"] == pytest.approx(r["top_share"] + r["bottom_share"])
        assert 0.0 <= r["peak_at_edge_rate"] <= 1.0
    assert "uniform 0.333" in capsys.readouterr().out


def test_shipped_gate_turns_away_the_non_chest_and_adult_dicoms(dicom_dir: Path) -> None:
    from ml import default_checkpoint

    pred = Predictor.from_checkpoint(default_checkpoint(), threads=1)
    non_chest = ["cr-hip-monochrome2-jpeg-lossless.dcm", "cr-hip-monochrome2-rle.dcm",
                 "cr-extremity-monochrome1-j2k-lossless.dcm"]
    adults = ["cr-chest-pa-jpeg-baseline.dcm", "dx-chest-implicit-vr-uncompressed.dcm"]
    out = pred.predict([dicom_dir / n for n in non_chest + adults])
    for name, p in zip(non_chest + adults, out, strict=True):
        assert p.scope is not None and not p.scope.in_scope, name
    assert [p.scope.reason for p in out[:3]] == ["not_chest_radiograph"] * 3  # type: ignore[union-attr]


def test_shipped_gate_turns_away_every_shared_dicom_from_its_pixels_alone(
    dicom_dir: Path,
) -> None:
    """Metadata stripped (a JPEG export, a PACS that drops the tags): the scope head alone.
    None of these files, from other hospitals than any training image, was trained on."""
    from ml import default_checkpoint
    from ml.decode import decode_image

    pred = Predictor.from_checkpoint(default_checkpoint(), threads=1)
    names = sorted(p.name for p in dicom_dir.glob("*.dcm") if "undecodable" not in p.name)
    out = pred.predict([decode_image(dicom_dir / n).pixels for n in names], with_cam=False,
                       metadata=[None] * len(names))
    verdicts = {n: p.scope for n, p in zip(names, out, strict=True)}
    assert len(verdicts) == 9
    reasons = {}
    for name, v in verdicts.items():
        assert v is not None and not v.in_scope and v.source == "pixels", name
        reasons[name] = v.reason
    # The file whose MONOCHROME1 tag mislabels MONOCHROME2 pixels decodes to a negative image.
    mislabelled = "cr-chest-pa-jpeg-baseline-monochrome1.dcm"
    assert reasons.pop(mislabelled) == "inverted"
    adult_chests = {n: r for n, r in reasons.items() if "chest" in n}
    assert len(adult_chests) == 5 and set(adult_chests.values()) == {"adult"}


def test_shipped_gate_keeps_validation_children_in_scope(kermany_dir: Path) -> None:
    from ml import default_checkpoint
    from ml.data import discover, split_by_patient

    pred = Predictor.from_checkpoint(default_checkpoint(), threads=1)
    _, val = split_by_patient(discover(kermany_dir), 0.15, 42)
    out = pred.predict([r.path for r in val[::8]], with_cam=False)
    out_of_scope = sum(not p.scope.in_scope for p in out)  # type: ignore[union-attr]
    assert out_of_scope <= max(1, round(0.02 * len(out)))


def test_a_later_epoch_within_the_tolerance_replaces_the_selected_one() -> None:
    from ml.multitask import keeps_epoch

    assert keeps_epoch(0.9835, 0.9838, tolerance=5e-4)  # noise-sized dip: the later epoch
    assert not keeps_epoch(0.9820, 0.9838, tolerance=5e-4)  # a real drop: keep the earlier
    assert keeps_epoch(0.5, -1.0, tolerance=0.0)  # the first epoch is always kept


def test_mixup_blends_image_pairs_with_one_reproducible_weight() -> None:
    from ml.multitask import mixup_batch

    x = torch.rand(8, 1, 16, 16)
    mixed, partner, lam = mixup_batch(x, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0
    assert sorted(partner.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner])
    again, partner2, lam2 = mixup_batch(x, 0.4, torch.Generator().manual_seed(3))
    assert lam2 == lam and torch.equal(partner2, partner) and torch.equal(again, mixed)


def test_training_with_mixup_runs_and_records_its_setting(
    multi_ckpt: Path, scope_folder: Path
) -> None:
    root: Path = pytest.multi_data_root  # type: ignore[attr-defined]
    result = train(tiny_config(epochs=1, mixup_alpha=0.4), root, scope_folder,
                   command="pytest", log=lambda s: None)
    assert result.meta["config"]["mixup_alpha"] == 0.4
    assert np.isfinite(result.history[0]["train_loss"])


def test_distillation_loss_is_zero_only_where_the_student_matches_the_teacher() -> None:
    from ml.multitask import distill_loss

    a, b = head_slices()["etiology"]
    logits = torch.randn(4, sum(len(c) for c in HEADS.values()))
    teacher = torch.softmax(logits[:, a:b] / 2.0, dim=1)
    everyone = torch.ones(4, dtype=torch.bool)
    assert float(distill_loss(logits, teacher, everyone, 2.0)) == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[1, a:b] = torch.tensor([5.0, -5.0, 0.0])
    assert float(distill_loss(other, teacher, everyone, 2.0)) > 0.1
    # Rows outside the mask (adult, inverted, out-of-scope images) are not taught.
    masked = torch.tensor([True, False, True, True])
    assert float(distill_loss(other, teacher, masked, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(other, teacher, torch.zeros(4, dtype=torch.bool), 2.0)) == 0.0


def test_teacher_reads_the_etiology_rows_of_a_multi_checkpoint_and_refuses_a_binary_one(
    multi_ckpt: Path, tmp_path: Path
) -> None:
    from ml.multitask import EtiologyTeacher

    cfg = tiny_config(distill_temperature=3.0)
    teacher = EtiologyTeacher(str(multi_ckpt), cfg, torch.device("cpu"))
    x = torch.randn(5, 1, 32, 32)
    _, logits = teacher.members[0].model(x)
    a, b = head_slices()["etiology"]
    own = torch.softmax(logits[:, a:b] / 3.0, dim=1)
    assert torch.allclose(teacher.probs(x), own)
    # Two members: their probabilities averaged (one member twice: the same probabilities).
    pair = EtiologyTeacher(f"{multi_ckpt}, {multi_ckpt}", cfg, torch.device("cpu"))
    assert len(pair.members) == 2 and torch.allclose(pair.probs(x), own, atol=1e-6)
    # Eval mode: each row's answer is its own, so training may pass only the paediatric rows
    # of a batch through the teacher.
    some = torch.tensor([0, 2, 3])
    assert torch.allclose(teacher.probs(x[some]), teacher.probs(x)[some], atol=1e-6)
    with pytest.raises(ValueError, match="preprocessing"):
        EtiologyTeacher(str(multi_ckpt), tiny_config(input_size=64), torch.device("cpu"))
    _, meta = load_checkpoint(multi_ckpt)
    binary = tmp_path / "binary.pt"
    single = {k: v for k, v in meta.items() if k != "heads"}
    save_checkpoint(binary, build_model(meta["arch"], 2),
                    {**single, "task": "binary", "classes": HEADS["binary"]})
    with pytest.raises(ValueError, match="no etiology answer"):
        EtiologyTeacher(str(binary), cfg, torch.device("cpu"))


def test_distillation_enters_the_training_loss_only_with_a_weight(
    multi_ckpt: Path, scope_folder: Path
) -> None:
    root: Path = pytest.multi_data_root  # type: ignore[attr-defined]

    def first_loss(**overrides: Any) -> float:
        result = train(tiny_config(epochs=1, **overrides), root, scope_folder,
                       command="pytest", log=lambda s: None)
        return float(result.history[0]["train_loss"])

    plain = first_loss()
    assert first_loss(distill_from=str(multi_ckpt), distill_weight=0.0) == plain
    taught = train(tiny_config(epochs=1, distill_from=str(multi_ckpt), distill_weight=1.0),
                   root, scope_folder, command="pytest", log=lambda s: None)
    assert taught.meta["config"]["distill_from"] == str(multi_ckpt)
    assert float(taught.history[0]["train_loss"]) != plain


@pytest.mark.skipif("not torch.cuda.is_available()", reason="needs a CUDA GPU")
def test_training_runs_on_cuda_and_its_checkpoint_serves_on_a_cpu(
    multi_ckpt: Path, scope_folder: Path, tmp_path: Path
) -> None:
    # One epoch on the GPU with a teacher (its passes on the GPU too); the checkpoint then
    # serves every answer on a machine without one.
    root: Path = pytest.multi_data_root  # type: ignore[attr-defined]
    result = train(tiny_config(epochs=1, device="cuda", distill_from=str(multi_ckpt),
                               distill_weight=1.0), root, scope_folder,
                   command="pytest", log=lambda s: None)
    assert result.meta["device"].startswith("cuda")
    assert np.isfinite(result.history[0]["train_loss"])
    out = save_checkpoint(tmp_path / "gpu.pt", result.model, result.meta)
    predictor = Predictor.from_checkpoint(out, device="cpu")
    pred = predictor.predict([next((root / "PNEUMONIA").glob("*.jpeg"))])[0]
    assert pred.etiology is not None and pred.scope is not None and pred.heatmap is not None
