"""ml.plots: evaluation figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml.plots import plot_comparison, save_plots, write_history


def test_plots(tmp_path: Path) -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    paths = save_plots(probs, np.array([0, 1, 0, 1]), ["normal", "pneumonia"], 0.5, tmp_path)
    assert {p.name for p in paths} == {"roc.png", "pr.png", "confusion.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_write_history(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_roc_auc": 0.8,
         "val_accuracy": 0.7}
        for e in (1, 2)
    ]
    write_history(history, tmp_path / "log")
    assert (tmp_path / "log" / "history.csv").read_text().count("\n") == 3
    assert (tmp_path / "log" / "curves.png").stat().st_size > 1000


def test_plot_comparison(tmp_path: Path) -> None:
    rows = [{"arch": a, "roc_auc": auc, "train_seconds": 10.0, "infer_img_s": 100.0}
            for a, auc in (("pneumonet", 0.95), ("resnet18", None))]
    plot_comparison(rows, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 1000
