"""Command line: ``python -m ml COMMAND`` with train, train-multi, evaluate, calibrate, predict,
compare, bench, stress and heatmaps.

The two trainings take one ``--option`` per field of their config dataclass
(``add_config_args``), so a new setting is one line in ``TrainConfig`` or ``MultiTaskConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from ml import TASKS, default_checkpoint

C = TypeVar("C")


def _command_line(argv: list[str]) -> str:
    return "python -m ml " + " ".join(shlex.quote(a) for a in argv)


def _cli_fields(config_type: type) -> list[dataclasses.Field[Any]]:
    """The fields of a config dataclass that are command-line options (metadata ``cli``)."""
    return [f for f in dataclasses.fields(config_type) if f.init and f.metadata.get("cli", True)]


def add_config_args(p: argparse.ArgumentParser, config_type: type) -> None:
    """One ``--option`` per field of a config dataclass, typed and defaulted from it; a field's
    metadata may add ``help`` and ``choices``. A bool field is ``--x/--no-x``."""
    hints = typing.get_type_hints(config_type)
    for f in _cli_fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        extra = {k: f.metadata[k] for k in ("help", "choices") if k in f.metadata}
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           **extra)
        else:
            p.add_argument(flag, type=base, default=f.default, **extra)


def config_from_args(args: argparse.Namespace, config_type: type[C]) -> C:
    return config_type(**{f.name: getattr(args, f.name) for f in _cli_fields(config_type)})


def add_checkpoint_args(p: argparse.ArgumentParser, checkpoint_help: str | None = None) -> None:
    """``--checkpoint`` and ``--task``: a checkpoint file, by default the shipped model of the
    task (``checkpoint_from_args``)."""
    p.add_argument("--checkpoint", default=None, help=checkpoint_help)
    p.add_argument("--task", choices=TASKS, default="binary")


def checkpoint_from_args(args: argparse.Namespace) -> str | Path:
    return args.checkpoint or default_checkpoint(args.task)


def _save_trained(out: Path, model: Any, meta: dict[str, Any]) -> str:
    """Write the checkpoint of a training; the line that says where and how large."""
    from ml.checkpoint import save_checkpoint

    save_checkpoint(out, model, meta)
    return f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)"


def cmd_train(args: argparse.Namespace) -> int:
    from ml.data import discover
    from ml.engine import TrainConfig, train
    from ml.metrics import format_summary

    records = discover(args.data, split=("train", "val"))
    cfg = config_from_args(args, TrainConfig)
    out = Path(args.out)
    log_dir = Path(args.log_dir) if args.log_dir else out.parent / f"{out.stem}_train"
    result = train(cfg, records, log_dir=log_dir, command=_command_line(args.argv))
    print(f"{_save_trained(out, result.model, result.meta)}; logs in {log_dir}")
    print("validation (calibrated, at the stored threshold):")
    print(format_summary(result.meta["validation"]))
    print(f"training time {result.meta['training_seconds']:.0f} s")
    return 0


def cmd_train_multi(args: argparse.Namespace) -> int:
    from ml.multitask import MultiTaskConfig, train

    cfg = config_from_args(args, MultiTaskConfig)
    result = train(cfg, args.data, args.scope_data, command=_command_line(args.argv))
    print(_save_trained(Path(args.out), result.model, result.meta))
    print(json.dumps(result.meta["validation"], indent=1, default=str))
    print(f"training time {result.meta['training_seconds']:.0f} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ml.evaluate import evaluate_checkpoint, write_json
    from ml.metrics import format_summary

    ckpt = checkpoint_from_args(args)
    rep = evaluate_checkpoint(
        ckpt,
        args.data,
        split=args.split,
        n_boot=args.bootstrap,
        plots_dir=args.plots,
        batch_size=args.batch_size,
        threshold=args.threshold,
        task=args.task,
    )
    print(f"checkpoint {ckpt} on {args.data}:")
    print(format_summary(rep))
    if args.json:
        write_json(rep, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ml.evaluate import recalibrate_checkpoint

    ckpt = checkpoint_from_args(args)
    meta = recalibrate_checkpoint(
        ckpt,
        args.data,
        args.out,
        sensitivity=args.sensitivity,
        fit_temperature_too=not args.keep_temperature,
        task=args.task,
    )
    print(
        f"wrote {args.out}: threshold {meta['threshold']:.4f}, temperature "
        f"{meta['temperature']:.3f} (fitted on {meta['calibration']['n']} site images)"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ml.cam import overlay_png
    from ml.predictor import Predictor
    from ml.preprocess import ImageDecodeError, decode_image

    ckpt = checkpoint_from_args(args)
    pred = Predictor.from_checkpoint(ckpt, device=args.device, head=args.task)
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    status = 0
    for path in args.images:
        try:
            decoded = decode_image(path)
        except ImageDecodeError as exc:
            rows.append({"image": path, "error": str(exc)})
            status = 1
            continue
        (p,) = pred.predict([decoded.pixels], with_cam=heat_dir is not None,
                            metadata=[decoded.metadata])
        # Out of scope: no label unless asked for (--scope warn), as in the product.
        withheld = p.scope is not None and not p.scope.in_scope and args.scope == "enforce"
        row: dict[str, object] = {
            "image": path,
            "label": None if withheld else p.label,
            "score": round(p.score, 4),
            "threshold": round(p.threshold, 4),
            "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()},
            "bbox": [round(v, 3) for v in p.bbox] if p.bbox else None,
        }
        if p.etiology is not None:
            row["etiology"] = {"label": None if withheld else p.etiology.label,
                               "probabilities": {k: round(v, 4) for k, v in
                                                 p.etiology.probabilities.items()}}
        if p.scope is not None:
            row["scope"] = {"in_scope": p.scope.in_scope, "reason": p.scope.reason}
        if heat_dir and p.heatmap is not None:
            out = heat_dir / (Path(path).stem + "_cam.png")
            out.write_bytes(overlay_png(decoded.pixels, p.heatmap, bbox=p.bbox))
            row["heatmap"] = str(out)
        rows.append(row)
    for row in rows:
        print(json.dumps(row))
    return status


def cmd_compare(args: argparse.Namespace) -> int:
    from ml.compare import run_compare

    run_compare(
        data=args.data,
        archs=args.archs,
        out_dir=Path(args.out),
        epochs=args.epochs,
        input_size=args.input_size,
        max_train_images=args.max_train_images,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        task=args.task,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ml.bench import run_bench, run_versus
    from ml.evaluate import write_json

    ckpt = checkpoint_from_args(args)
    if args.versus:
        result = run_versus(ckpt, args.versus, data=args.data, batch_size=args.batch_sizes[-1],
                            rounds=args.repeats, device=args.device, threads=args.threads)
        if args.json:
            write_json(result, args.json)
        return 0
    rows = run_bench(
        ckpt,
        data=args.data,
        batch_sizes=args.batch_sizes,
        with_cam=not args.no_cam,
        repeats=args.repeats,
        device=args.device,
        threads=args.threads,
    )
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_stress(args: argparse.Namespace) -> int:
    from ml.evaluate import write_json
    from ml.stress import format_table, stress_test

    ckpt = args.checkpoint or default_checkpoint("binary")
    rows = stress_test(ckpt, args.data, threads=args.threads)
    print(f"stress test of {ckpt} on its validation split of {args.data}:")
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def cmd_heatmaps(args: argparse.Namespace) -> int:
    from ml.evaluate import write_json
    from ml.stress import format_framing, heatmap_framing

    ckpt = args.checkpoint or default_checkpoint("binary")
    rows = heatmap_framing(ckpt, args.data, threads=args.threads)
    print(f"where the heatmaps of {ckpt} put their weight, on its validation split of "
          f"{args.data}:")
    print(format_framing(rows))
    if args.json:
        write_json(rows, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description="Pneumonia CXR models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write a checkpoint")
    from ml.engine import TrainConfig

    p.add_argument(
        "--data",
        required=True,
        help="data root (NORMAL/PNEUMONIA folders, train/val/test splits, or a path,label CSV)",
    )
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--log-dir", default=None, help="history/curves dir (default <out>_train/)")
    add_config_args(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "train-multi",
        help="train the shipped model: binary, etiology and scope heads on one network",
    )
    from ml.multitask import MultiTaskConfig

    p.add_argument("--data", required=True, help="paediatric data root (as for train)")
    p.add_argument("--scope-data", required=True,
                   help="out-of-scope examples (e.g. ../shared/data/adult-cxr)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    add_config_args(p, MultiTaskConfig)
    p.set_defaults(func=cmd_train_multi)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a labelled folder")
    add_checkpoint_args(p, checkpoint_help="default: the shipped model of --task")
    p.add_argument("--data", required=True)
    p.add_argument(
        "--split",
        default=None,
        help="with a train/val/test layout: which split (default: test if present)",
    )
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--plots", default=None, help="directory for ROC/PR/confusion PNGs")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: off)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--threshold", type=float, default=None, help="override the stored decision threshold"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="refit temperature + threshold on site data")
    add_checkpoint_args(p)
    p.add_argument("--data", required=True, help="labelled local images (same layouts)")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--sensitivity",
        type=float,
        default=None,
        help="target sensitivity (default: the checkpoint's operating point)",
    )
    p.add_argument("--keep-temperature", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("predict", help="classify images (JPEG/PNG/DICOM)")
    p.add_argument("images", nargs="+")
    add_checkpoint_args(p)
    p.add_argument("--heatmaps", default=None, help="write CAM overlays (PNG) here")
    p.add_argument(
        "--scope", choices=("enforce", "warn"), default="enforce",
        help="out-of-scope images: enforce = no label (default), warn = label and verdict",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("compare", help="train/evaluate several architectures, same protocol")
    p.add_argument("--data", required=True)
    p.add_argument("--task", choices=TASKS, default="binary")
    p.add_argument(
        "--archs",
        nargs="+",
        default=["pneumonet", "resnet18", "mobilenet_v3_small", "efficientnet_b0"],
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--max-train-images", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="ml/compare_results")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="throughput (images/s) per batch size")
    add_checkpoint_args(p)
    p.add_argument(
        "--data",
        default=None,
        help="images to decode (default: Kermany train "
        "folder under PNEUMO_DATA_DIR or ../shared/data, else synthetic PNGs)",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--no-cam", action="store_true", help="exclude CAM (serving includes it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--versus", nargs="+", default=None, metavar="CHECKPOINT",
        help="compare, side by side, with the pipeline of these checkpoints (first one with "
        "CAM), e.g. ml/weights/v1/binary.pt ml/weights/v1/etiology.pt; batch: last of "
        "--batch-sizes",
    )
    p.set_defaults(func=cmd_bench)

    # Both rebuild a checkpoint's validation split and report on it.
    for name, func, text in (
        ("stress", cmd_stress, "metrics on the validation split under exposure, contrast, "
         "framing, mirror and blur changes (any checkpoint)"),
        ("heatmaps", cmd_heatmaps, "where the heatmaps put their weight on the validation "
         "split: the share in the top and bottom sixth (neck, abdomen) per predicted class"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--checkpoint", default=None)
        p.add_argument("--data", required=True,
                       help="the training data root (its split is rebuilt)")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--json", default=None)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in checkpoints so every model says how it was made
    return int(args.func(args) or 0)
