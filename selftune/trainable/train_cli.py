"""`selftune train` and `selftune evaluate`: one training run, and scoring a saved model.

Heavy imports (torch, smp, matplotlib) happen inside the command functions, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from selftune.errors import ConfigError
from selftune.status import DIVERGED
from selftune.trainable.config import TEACHER_TTAS, parse_sets

EXIT_DIVERGED = 3


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one configuration (no Ray)",
        description="Train one configuration with the self-training loop. Without --config, the demo config; "
        "without --data, the built-in demo dataset (generated on first use).",
    )
    p.add_argument("--config", type=Path, help="YAML config (plain keys, or an exported file with a 'config:' section)")
    p.add_argument("--data", type=Path, help="dataset root (default: the demo dataset)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/train-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key; VALUE is YAML (e.g. --set lr=1e-3 --set thresholds=[0.5,0.6])")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "evaluate",
        help="score a saved model on a labelled split",
        description="Per-class IoU and mIoU of best_model_ema.pt (or the EMA weights of a checkpoint state.pt) "
        "on a labelled split.",
    )
    e.add_argument("--checkpoint", type=Path, required=True,
                   help="best_model_ema.pt, a checkpoint state.pt, or a run folder holding one")
    e.add_argument("--data", type=Path, help="dataset root (default: the demo dataset)")
    e.add_argument("--split", default="test", help="labelled split to score (default: test)")
    e.add_argument("--confusion", type=Path, metavar="PNG", help="also write a row-normalised confusion-matrix plot")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    e.add_argument("--tta", default="none", choices=TEACHER_TTAS,
                   help="test-time augmentation: average the class probabilities over the flips (flip) or all 8 "
                   "symmetries of a square image (d4; square images only); default: none")
    e.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from selftune.data.demo import ensure_demo
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.config import TrainConfig, demo_config
    from selftune.trainable.loop import metric_label, train

    cfg = _in_its_sweep_folder(args.config, TrainConfig.from_yaml(args.config)) if args.config else demo_config()
    overrides = parse_sets(args.overrides)
    if overrides:
        cfg = cfg.replace(**overrides)
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out, the folder of the run to continue")
    out = args.out or Path("runs") / f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    data = args.data or ensure_demo()
    resume_from = out / ckpt.CHECKPOINT_DIR if args.resume else None  # the loop falls back to state.prev.pt
    result = train(cfg, data, out, resume_from=resume_from, progress=args.progress)
    print(f"status: {result.status} ({result.message})")
    print(f"best {metric_label(cfg.select_metric)}: {result.best_val_miou:.4f} at iteration {result.best_iteration}")
    best = result.out_dir / ckpt.BEST_FILE
    if best.is_file():
        print(f"best EMA model: {best}")
    print(f"run folder: {result.out_dir} (tensorboard --logdir {result.out_dir})")
    return EXIT_DIVERGED if result.status == DIVERGED else 0


def _in_its_sweep_folder(config_file: Path, cfg: Any) -> Any:
    """A config inside a sweep folder (its best_config.yaml) of a sweep that was copied or moved: its checkpoint
    paths into the folder where the sweep ran are read as paths into the folder it is in now (the shared stage of
    the copy, not of the original, which may be gone or be another sweep's)."""
    import yaml

    from selftune.sweepfolder import SWEEP_FILE, rebase_config, recorded_folder

    folder = config_file.expanduser().resolve().parent
    try:
        meta = yaml.safe_load((folder / SWEEP_FILE).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return cfg  # not in a sweep folder (or its record is unreadable: then the paths are read as written)
    recorded = recorded_folder(meta) if isinstance(meta, dict) else None
    if recorded is None or recorded.rstrip("/") == str(folder):
        return cfg
    changed = {k: v for k, v in rebase_config(cfg.to_dict(), recorded, str(folder)).items() if v != getattr(cfg, k)}
    return cfg.replace(**changed) if changed else cfg


def run_evaluate(args: argparse.Namespace) -> int:
    import math

    from selftune.data import LabeledDataset, read_classes
    from selftune.data.demo import ensure_demo
    from selftune.errors import DataError
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.device import DeviceBatch, make_autocast, memory_format_for, resolve_amp, resolve_device
    from selftune.trainable.evaluation import load_eval_batches, score

    if args.confusion is not None and (args.confusion.is_dir() or str(args.confusion).endswith(("/", "\\"))):
        raise DataError(f"--confusion {args.confusion} is a folder; give a PNG path such as "
                        f"{args.confusion / 'confusion.png'}")
    from selftune.trainable.functional import iou_per_class, mean_iou
    from selftune.trainable.model import build_model

    cfg, saved_names, weights, info = ckpt.load_model_file(args.checkpoint)
    data = args.data or ensure_demo()
    classes = read_classes(data)
    if saved_names is not None and tuple(saved_names) != classes.names:
        raise DataError(f"{data / 'classes.csv'} lists {list(classes.names)} but the model was trained on "
                        f"{list(saved_names)}")
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(cfg, device)
    model = build_model(cfg, classes.num_classes)
    model.load_state_dict(weights)
    memory_format = memory_format_for(cfg, device)
    model = model.to(device, memory_format=memory_format).eval()
    dataset = LabeledDataset(data, args.split, classes)
    batches = load_eval_batches(dataset, 0, cfg.batch_size)
    if args.tta == "d4" and (sizes := {tuple(x.shape[-2:]) for x, _ in batches.batches if x.shape[-1] != x.shape[-2]}):
        raise DataError(f"--tta d4 needs square images; split {args.split!r} of {data} has images of "
                        f"{', '.join(f'{h}x{w}' for h, w in sorted(sizes))} (height x width); use --tta flip")
    to_device = DeviceBatch(device, memory_format, cfg.ignore_index)
    cm, _ = score(model, batches, classes.num_classes, to_device, make_autocast(device, amp_dtype), tta=args.tta)
    iou = iou_per_class(cm)

    where = f"iteration {info['iteration']}" if info.get("iteration") is not None else "unknown iteration"
    shown_tta = "" if args.tta == "none" else f"; test-time augmentation {args.tta}"
    print(f"model {info['file']} ({where}); split {args.split!r} of {data} ({len(dataset)} images){shown_tta}")
    width = max(len("class"), *(len(n) for n in classes.names))
    print(f"{'class':<{width}}  {'IoU':>7}  {'pixels':>10}")
    truth = cm.sum(1).tolist()
    for name, value, n in zip(classes.names, iou.tolist(), truth, strict=True):
        shown = "n/a" if math.isnan(value) else f"{value:.4f}"
        print(f"{name:<{width}}  {shown:>7}  {n:>10}")
    print(f"{'mIoU':<{width}}  {mean_iou(iou):>7.4f}")
    if any(math.isnan(v) for v in iou.tolist()):
        print("n/a: the class is in neither the truth nor the prediction; it is left out of the mIoU")
    if args.confusion:
        write_confusion_plot(cm, classes.names, args.confusion, title=f"{args.split}: mIoU {mean_iou(iou):.3f}")
        print(f"confusion matrix: {args.confusion}")
    return 0


def write_confusion_plot(cm: Any, names: tuple[str, ...], path: Path, *, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) as a PNG, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from selftune.fileio import write_atomic

    counts = cm.double()
    rows = counts.sum(1, keepdim=True)
    norm = (counts / rows.clamp_min(1)).numpy()
    k = len(names)
    size = max(5.0, 0.75 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=[f"{n} ({int(r)})" for n, r in zip(names, rows.flatten().tolist(), strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (pixels)")
    for i in range(k):
        for j in range(k):
            v = norm[i, j]
            if v >= 0.005:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(Path(path), buf.getvalue())


__all__ = ["register", "run_evaluate", "run_train", "write_confusion_plot"]
