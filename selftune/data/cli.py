"""`selftune data check ROOT` and `selftune data demo ROOT`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CHECK_HELP = """\
Validate a dataset before training: classes.csv, every labelled image and mask (readable, same
size, known class ids or colours) and, unless --no-unlabeled, the unlabelled pool (non-empty,
first files decode). Prints image counts, per-class train pixel statistics with suggested
inverse-frequency class weights, and warnings. Exits 2 with a message naming the bad file.
"""

DEMO_HELP = """\
Generate the procedural demo dataset (aerial plantation tiles, 7 classes) into ROOT. The same
options always give byte-identical files. `selftune train` and `selftune sweep` use a default
demo set in ~/.cache/selftune/demo when no --data is given.
"""


def register(subparsers: Any) -> None:
    """Add the `data` command and its `check` and `demo` subcommands."""
    data = subparsers.add_parser(
        "data", help="check a dataset, or generate the demo dataset",
        description="Dataset tools. The format is described in docs/data.md.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    check = sub.add_parser("check", help="validate a dataset and print class statistics", description=CHECK_HELP)
    check.add_argument("root", type=Path, metavar="ROOT", help="dataset folder (holds classes.csv, train/, val/ ...)")
    check.add_argument("--no-unlabeled", action="store_true",
                       help="skip the unlabelled pool (for supervised-only training)")
    check.add_argument("--preview", type=Path, metavar="PNG", default=None,
                       help="also write a picture of train images over their masks (and unlabelled samples)")
    check.add_argument("--preview-count", type=int, default=8, metavar="N", help="images per row of the preview")
    check.set_defaults(func=run_check)

    from selftune.data.demo import N_STYLES, DemoSpec  # light: numpy only

    d = DemoSpec()
    demo = sub.add_parser("demo", help="generate the procedural demo dataset", description=DEMO_HELP)
    demo.add_argument("root", type=Path, metavar="ROOT", help="output folder (must be empty or absent)")
    demo.add_argument("--size", type=int, default=d.size, help=f"tile side in pixels (default {d.size})")
    demo.add_argument("--n-train", type=int, default=d.n_train, help=f"labelled training tiles (default {d.n_train})")
    demo.add_argument("--n-val", type=int, default=d.n_val, help=f"validation tiles (default {d.n_val})")
    demo.add_argument("--n-test", type=int, default=d.n_test, help=f"test tiles; 0 for none (default {d.n_test})")
    demo.add_argument("--n-unlabeled", type=int, default=d.n_unlabeled,
                      help=f"unlabelled tiles (default {d.n_unlabeled})")
    demo.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    demo.add_argument("--train-surveys", type=int, default=d.train_surveys,
                      help=f"the labelled tiles come from this many of the {N_STYLES} surveys; val, test and the "
                           f"unlabelled pool from all (default {d.train_surveys})")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an existing dataset in ROOT (removes its classes.csv, train/, val/, test/, unlabeled/)")
    demo.add_argument("--unlabeled-masks", action="store_true",
                      help="also write masks of the unlabelled tiles to ROOT/unlabeled/masks (oracle experiments only)")
    demo.add_argument("--workers", type=int, default=None,
                      help="processes that render tiles (default: the CPU count); the output is the same")
    demo.set_defaults(func=run_demo)


def run_check(args: argparse.Namespace) -> int:
    from selftune.data.validate import dataset_fingerprint, validate_dataset

    summary = validate_dataset(args.root, need_unlabeled=not args.no_unlabeled)
    print(format_summary(summary, fingerprint=dataset_fingerprint(args.root)))
    if args.preview is not None:
        write_preview(args.root, args.preview, count=args.preview_count, unlabeled=not args.no_unlabeled)
        print(f"Preview written to {args.preview}")
    return 0


def write_preview(root: Path, path: Path, *, count: int = 8, unlabeled: bool = True) -> None:
    """A PNG of the first `count` train images, their masks in class colours (with a legend) and,
    with `unlabeled`, `count` images spread over the unlabelled pool; written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from selftune.data.format import IGNORE_VALUE, list_pairs, read_classes, read_image, read_mask
    from selftune.data.index import unlabeled_index
    from selftune.data.palette import class_palette
    from selftune.errors import DataError
    from selftune.fileio import write_atomic

    if count < 1:
        raise DataError(f"--preview-count must be >= 1, got {count}")
    classes = read_classes(root)
    palette = class_palette(classes.colors, len(classes.names)).numpy()
    pairs = list_pairs(root, "train")[:count]
    rows: list[tuple[str, list[np.ndarray]]] = [
        ("train images", [read_image(img) for img, _ in pairs]),
        ("train masks", [palette[np.where(m == IGNORE_VALUE, len(classes.names), m)] for m in
                         (read_mask(mask, classes) for _, mask in pairs)]),
    ]
    if unlabeled:
        index = unlabeled_index(root)
        picks = [index[i] for i in np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(int)]
        rows.append(("unlabelled", [read_image(Path(root) / "unlabeled" / "images" / rel) for rel in picks]))
    cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.6 * len(rows) + 0.6), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=8)
    handles = [Patch(color=palette[i] / 255, label=f"{i} {name}") for i, name in enumerate(classes.names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    fig.suptitle(f"{Path(root).name}: train images, masks and unlabelled samples", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(Path(path), buf.getvalue())


def format_summary(summary: Any, *, fingerprint: str | None = None) -> str:
    """The `data check` report: counts, a per-class table, warnings."""
    lines = [f"Dataset {summary.root}" + (f"  (fingerprint {fingerprint})" if fingerprint else "")]
    sizes = ", ".join(f"{w}x{h}" for h, w in summary.image_sizes[:4]) + (" ..." if len(summary.image_sizes) > 4 else "")
    for split in ("train", "val", "test", "unlabeled"):
        if split in summary.counts:
            lines.append(f"  {split:<10} {summary.counts[split]:>8,} images")
        elif split == "test":
            lines.append(f"  {'test':<10} {'-':>8}  (no test split)")
        else:
            lines.append(f"  {'unlabeled':<10} {'-':>8}  (not checked)")
    lines.append(f"  labelled image sizes (width x height): {sizes}")
    lines.append("")
    total = sum(summary.pixel_counts)
    lines.append(f"Classes: train pixels ({total:,} labelled, {summary.ignored_pixels:,} ignored)")
    width = max(len("name"), *(len(n) for n in summary.class_names))
    lines.append(f"  {'id':>3}  {'name':<{width}}  {'pixels':>12}  {'freq %':>7}  {'weight':>7}")
    for i, name in enumerate(summary.class_names):
        lines.append(
            f"  {i:>3}  {name:<{width}}  {summary.pixel_counts[i]:>12,}  {100 * summary.frequencies[i]:>7.2f}"
            f"  {summary.suggested_weights[i]:>7.3f}"
        )
    lines.append("  weight: inverse frequency, mean 1 over classes present in train; 0 for absent classes")
    if summary.warnings:
        lines.append("")
        lines.append("Warnings:")
        lines += [f"  - {w}" for w in summary.warnings]
    lines.append("")
    lines.append("OK")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from selftune.data.demo import DemoSpec, generate_demo

    spec = DemoSpec(
        size=args.size, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
        n_unlabeled=args.n_unlabeled, seed=args.seed, train_surveys=args.train_surveys,
        unlabeled_masks=args.unlabeled_masks,
    )
    root = generate_demo(args.root, spec, overwrite=args.overwrite, progress=True, workers=args.workers)
    print(
        f"Demo dataset written to {root}: {spec.n_train} train, {spec.n_val} val, {spec.n_test} test, "
        f"{spec.n_unlabeled} unlabelled tiles of {spec.size}x{spec.size} px"
        + (" (with unlabelled masks)" if spec.unlabeled_masks else "")
    )
    print(f"Check it with: selftune data check {root}")
    return 0


__all__ = ["format_summary", "register", "run_check", "run_demo", "write_preview"]
