"""python -m ml: train / evaluate / predict / calibrate / bench end to end (small inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml.cli import main

EVAL_KEYS = {
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "threshold",
    "confusion_matrix",
    "n",
}


def test_evaluate_writes_json(
    binary_ckpt: Path, small_real_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(binary_ckpt),
                "--data",
                str(small_real_folder),
                "--json",
                str(out),
                "--bootstrap",
                "50",
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    assert set(rep) >= EVAL_KEYS
    assert rep["n"] == 24
    cm = rep["confusion_matrix"]
    assert sum(map(sum, cm)) == 24 and sum(cm[0]) == 12
    assert 0.0 <= rep["accuracy"] <= 1.0 and rep["accuracy"] >= 0.7
    assert (tmp_path / "plots" / "roc.png").is_file()
    assert "sensitivity" in capsys.readouterr().out


def test_evaluate_default_checkpoint(small_real_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "evaluate",
                "--task",
                "binary",
                "--data",
                str(small_real_folder),
                "--json",
                str(out),
                "--bootstrap",
                "0",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["model"] == "pneumo-multi" and report["task"] == "binary"
    assert report["scope"]["n"] == report["n"]


def test_predict_prints_json_and_heatmaps(
    binary_ckpt: Path,
    small_real_folder: Path,
    tmp_path: Path,
    dicom_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    img = sorted((small_real_folder / "PNEUMONIA").iterdir())[0]
    bad = dicom_dir / "cr-hip-jpeg-extended-undecodable.dcm"
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(binary_ckpt),
            str(img),
            str(bad),
            "--heatmaps",
            str(tmp_path / "h"),
        ]
    )
    assert rc == 1  # one input could not be decoded
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["label"] in ("normal", "pneumonia")
    assert Path(rows[0]["heatmap"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cannot decode" in rows[1]["error"]


def test_train_calibrate_bench(synthetic_folder: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.pt"
    assert (
        main(
            [
                "train",
                "--data",
                str(synthetic_folder),
                "--arch",
                "pneumonet_small",
                "--epochs",
                "2",
                "--input-size",
                "48",
                "--batch-size",
                "8",
                "--val-fraction",
                "0.25",
                "--bootstrap",
                "20",
                "--no-progress",
                "--threads",
                "1",
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["arch"] == "pneumonet_small" and meta["preprocessing"]["input_size"] == 48
    assert meta["command"].startswith("python -m ml train")
    log_dir = tmp_path / "tiny_train"
    assert len(json.loads((log_dir / "history.json").read_text())) == meta["epochs_run"]
    assert (log_dir / "curves.png").is_file() and (log_dir / "history.csv").is_file()

    recal = tmp_path / "recal.pt"
    assert (
        main(
            [
                "calibrate",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(synthetic_folder),
                "--out",
                str(recal),
                "--sensitivity",
                "0.9",
            ]
        )
        == 0
    )
    rmeta = torch.load(recal, weights_only=True)["meta"]
    assert rmeta["operating_point"]["value"] == 0.9
    assert rmeta["calibration"]["n"] == 32
    assert rmeta["calibration"]["metrics"]["sensitivity"] >= 0.9

    bench = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(synthetic_folder),
                "--batch-sizes",
                "1",
                "4",
                "--repeats",
                "1",
                "--json",
                str(bench),
            ]
        )
        == 0
    )
    rows = json.loads(bench.read_text())
    assert [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert r["images_per_second"] > 0 and r["images_per_second_model_only"] > 0
        assert r["with_cam"] is True
