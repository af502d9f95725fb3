"""`selftune data check ROOT` and `selftune data demo ROOT`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CHECK_HELP = """\
Validate a dataset before training: classes.csv, every labelled image and mask (readable, same
size, known class ids or colours) or points.json (known image names, well-formed points inside
their image) and, unless --no-unlabeled, the unlabelled pool (non-empty, first files decode).
Prints image counts, per-class train pixel statistics with suggested inverse-frequency class
weights, points per image and the positive-pixel share of splits labelled by points, and
warnings. Exits 2 with a message naming the bad file (and entry).
"""

DEMO_HELP = """\
Generate a procedural demo dataset into ROOT: --task plantation (the default: aerial plantation
tiles, 7 classes, masks) or --task particles (micrograph-like images, binary: particle centres as
points.json, few labelled images and a large unlabelled pool). The same options always give
byte-identical files. `selftune train` and `selftune sweep` use a default plantation set in
~/.cache/selftune/demo when no --data is given.
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
    from selftune.data.points import POINT_RADIUS, POINT_RING  # light: numpy only

    check.add_argument("--point-radius", type=float, default=POINT_RADIUS, metavar="PX",
                       help=f"splits labelled by points.json: disk radius around each point without its own "
                            f"(the train config's point_radius; default {POINT_RADIUS:g})")
    check.add_argument("--point-ring", type=float, default=POINT_RING, metavar="PX",
                       help=f"splits labelled by points.json: width of the ignored ring beyond each disk (the train "
                            f"config's point_ring; default {POINT_RING:g})")
    check.set_defaults(func=run_check)

    from selftune.data.demo import N_STYLES, DemoSpec  # light: numpy only
    from selftune.data.particles import ParticleSpec

    d, q = DemoSpec(), ParticleSpec()

    def both(field: str) -> str:
        return f"plantation {getattr(d, field)}, particles {getattr(q, field)}"

    demo = sub.add_parser("demo", help="generate a procedural demo dataset", description=DEMO_HELP)
    demo.add_argument("root", type=Path, metavar="ROOT", help="output folder (must be empty or absent)")
    demo.add_argument("--task", choices=("plantation", "particles"), default="plantation",
                      help="plantation: 7-class aerial tiles with masks (default); particles: binary micrographs "
                           "with point labels")
    demo.add_argument("--size", type=int, default=None, help=f"tile side in pixels (default {both('size')})")
    demo.add_argument("--n-train", type=int, default=None, help=f"labelled training tiles (default {both('n_train')})")
    demo.add_argument("--n-val", type=int, default=None, help=f"validation tiles (default {both('n_val')})")
    demo.add_argument("--n-test", type=int, default=None, help=f"test tiles; 0 for none (default {both('n_test')})")
    demo.add_argument("--n-unlabeled", type=int, default=None,
                      help=f"unlabelled tiles (default {both('n_unlabeled')})")
    demo.add_argument("--seed", type=int, default=None, help=f"random seed (default {both('seed')})")
    demo.add_argument("--train-surveys", type=int, default=None,
                      help=f"plantation: the labelled tiles come from this many of the {N_STYLES} surveys; val, test "
                           f"and the unlabelled pool from all (default {d.train_surveys})")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an existing dataset in ROOT (removes its classes.csv, train/, val/, test/, unlabeled/)")
    demo.add_argument("--unlabeled-masks", action="store_true",
                      help="plantation: also write masks of the unlabelled tiles to ROOT/unlabeled/masks (oracle "
                           "experiments only)")
    demo.add_argument("--workers", type=int, default=None,
                      help="processes that render tiles (default: the CPU count); the output is the same")
    demo.set_defaults(func=run_demo)


def run_check(args: argparse.Namespace) -> int:
    import math

    from selftune.data.points import PointTargets
    from selftune.data.validate import dataset_fingerprint, validate_dataset
    from selftune.errors import DataError

    for flag, value in (("--point-radius", args.point_radius), ("--point-ring", args.point_ring)):
        if not (math.isfinite(value) and value >= 0):
            raise DataError(f"{flag} must be a number of pixels >= 0, got {value:g}")
    targets = PointTargets(args.point_radius, args.point_ring)
    summary = validate_dataset(args.root, need_unlabeled=not args.no_unlabeled, points=targets)
    print(format_summary(summary, fingerprint=dataset_fingerprint(args.root)))
    if args.preview is not None:
        write_preview(args.root, args.preview, count=args.preview_count, unlabeled=not args.no_unlabeled,
                      points=targets)
        print(f"Preview written to {args.preview}")
    return 0


def write_preview(root: Path, path: Path, *, count: int = 8, unlabeled: bool = True, points: Any = None) -> None:
    """A PNG of the first `count` train images, their masks in class colours (with a legend) and,
    with `unlabeled`, `count` images spread over the unlabelled pool; written atomically. A train split
    labelled by points shows them as circles on the images, and as masks the targets drawn from them with
    `points` (a PointTargets; the defaults when None): disks in the class colour, ignored rings in white."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    from selftune.data.datasets import LabeledDataset
    from selftune.data.format import IGNORE_VALUE, read_classes, read_image
    from selftune.data.index import unlabeled_index
    from selftune.data.palette import class_palette
    from selftune.errors import DataError
    from selftune.fileio import write_atomic

    if count < 1:
        raise DataError(f"--preview-count must be >= 1, got {count}")
    classes = read_classes(root)
    palette = class_palette(classes.colors, len(classes.names)).numpy()
    train = LabeledDataset(root, "train", classes, cache=False, points=points)
    shown = [train.arrays(i) for i in range(min(count, len(train)))]
    by_points = train.kind == "points"
    rows: list[tuple[str, list[np.ndarray]]] = [
        ("train images + points" if by_points else "train images", [image for image, _ in shown]),
        ("targets from points" if by_points else "train masks",
         [palette[np.where(m == IGNORE_VALUE, len(classes.names), m)] for _, m in shown]),
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
                if by_points and r == 0 and train.points[c]:  # the annotated centres, in their class colour
                    pts = train.points[c]
                    ax.scatter([p.x for p in pts], [p.y for p in pts], s=14, facecolors="none", linewidths=0.8,
                               edgecolors=[palette[p.cls] / 255 for p in pts])
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=8)
    handles = [Patch(color=palette[i] / 255, label=f"{i} {name}") for i, name in enumerate(classes.names)]
    if by_points:
        handles.append(Patch(facecolor=palette[len(classes.names)] / 255, edgecolor="grey", label="ignored ring"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    what = "points and their targets" if by_points else "masks"
    fig.suptitle(f"{Path(root).name}: train images, {what} and unlabelled samples", fontsize=9)
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
    if summary.points:
        t = summary.point_targets
        lines.append("")
        lines.append(f"Points (points.json; targets: disk radius {t.radius:g} px, ignored ring {t.ring:g} px)")
        lines.append(f"  {'split':<10} {'images':>7} {'points':>8} {'per image (min/mean/max)':>25} "
                     f"{'positive %':>10} {'ignored %':>9}")
        for split, p in summary.points.items():
            per = f"{p.min_per_image} / {p.mean_per_image:.1f} / {p.max_per_image}"
            lines.append(f"  {split:<10} {p.images:>7,} {p.points:>8,} {per:>25} {100 * p.positive_share:>10.2f} "
                         f"{100 * p.ignored_share:>9.2f}")
        lines.append("  positive %: pixels inside a point's disk; ignored %: pixels in the rings (not trained on, "
                     "not scored)")
    if summary.warnings:
        lines.append("")
        lines.append("Warnings:")
        lines += [f"  - {w}" for w in summary.warnings]
    lines.append("")
    lines.append("OK")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from selftune.errors import DataError

    given = {k: getattr(args, k) for k in ("size", "n_train", "n_val", "n_test", "n_unlabeled", "seed")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.task == "particles":
        from selftune.data.particles import ParticleSpec, generate_particles

        for flag, value in (("--train-surveys", args.train_surveys), ("--unlabeled-masks", args.unlabeled_masks)):
            if value:
                raise DataError(f"{flag} is an option of --task plantation, not of --task particles")
        pspec = ParticleSpec(**given)
        root = generate_particles(args.root, pspec, overwrite=args.overwrite, progress=True)
        print(f"Particle demo dataset written to {root}: {pspec.n_train} train, {pspec.n_val} val, {pspec.n_test} "
              f"test micrographs with points.json, {pspec.n_unlabeled} unlabelled, {pspec.size}x{pspec.size} px")
        print(f"Check it with: selftune data check {root} --preview preview.png")
        return 0
    from selftune.data.demo import DemoSpec, generate_demo

    if args.train_surveys is not None:
        given["train_surveys"] = args.train_surveys
    spec = DemoSpec(**given, unlabeled_masks=args.unlabeled_masks)
    root = generate_demo(args.root, spec, overwrite=args.overwrite, progress=True, workers=args.workers)
    print(
        f"Demo dataset written to {root}: {spec.n_train} train, {spec.n_val} val, {spec.n_test} test, "
        f"{spec.n_unlabeled} unlabelled tiles of {spec.size}x{spec.size} px"
        + (" (with unlabelled masks)" if spec.unlabeled_masks else "")
    )
    print(f"Check it with: selftune data check {root}")
    return 0


__all__ = ["format_summary", "register", "run_check", "run_demo", "write_preview"]
