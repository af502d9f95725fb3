"""Checking a dataset before training (`validate_dataset`, its `DatasetSummary`) and its fingerprint.

`validate_dataset` checks all of the format (`selftune.data.format`) and raises one `DataError`
naming the first bad file; `dataset_fingerprint` tells datasets apart in exported provenance.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selftune.data.datasets import LabeledDataset
from selftune.data.format import (
    IGNORE_VALUE,
    LABELED_SPLITS,
    POINTS_FILE,
    REQUIRED_SPLITS,
    _orphan_masks,
    read_classes,
    read_image,
)
from selftune.data.index import unlabeled_index
from selftune.data.points import PointTargets
from selftune.errors import DataError

UNLABELED_SAMPLE = 8  # unlabelled files decoded by validate_dataset


@dataclass(frozen=True)
class PointStats:
    """A split labelled by points: its points per image and the share of pixels the targets make positive
    (any non-background class) and ignored (the rings)."""

    images: int
    points: int
    min_per_image: int
    max_per_image: int
    positive_share: float  # positive target pixels / all pixels of the split
    ignored_share: float  # ignored (ring) pixels / all pixels of the split

    @property
    def mean_per_image(self) -> float:
        return self.points / max(1, self.images)


@dataclass
class DatasetSummary:
    """What `validate_dataset` found: counts, class pixel statistics (train split) and warnings."""

    root: Path
    counts: dict[str, int]  # images per split: train, val, [test], [unlabeled (when checked)]
    class_names: tuple[str, ...]
    pixel_counts: tuple[int, ...]  # train pixels per class (ignore pixels excluded)
    frequencies: tuple[float, ...]  # pixel_counts / sum
    suggested_weights: tuple[float, ...]  # inverse frequency, mean 1 over present classes, 0 if absent
    ignored_pixels: int = 0  # train pixels marked 255
    image_sizes: tuple[tuple[int, int], ...] = ()  # distinct (height, width) of labelled images
    warnings: list[str] = field(default_factory=list)
    points: dict[str, PointStats] = field(default_factory=dict)  # splits labelled by points.json
    point_targets: PointTargets | None = None  # the radius and ring their targets were drawn with
    classes_in: dict[str, tuple[bool, ...]] = field(default_factory=dict)  # split -> does each class occur in it

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def class_frequencies(pixel_counts: Sequence[int] | np.ndarray) -> tuple[float, ...]:
    """Each class's share of the labelled pixels; all zeros when there are none."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    total = counts.sum()
    return tuple(float(x) for x in (counts / total if total > 0 else np.zeros_like(counts)))


def suggested_class_weights(frequencies: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Inverse-frequency class weights normalised to mean 1 over the present classes.

    As in seed 004's imbalance fix (weight ~ 1/frequency, normalised). A class with no pixels
    gets weight 0: there is nothing to weight, and 1/0 would be infinite.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    present = f > 0
    w = np.zeros_like(f)
    if present.any():
        w[present] = 1.0 / f[present]
        w[present] /= w[present].mean()
    return tuple(float(x) for x in w)


def validate_dataset(root: Path, *, need_unlabeled: bool, num_classes: int | None = None,
                     points: PointTargets | None = None) -> DatasetSummary:
    """Check a dataset before training; raise one DataError naming the first bad file or folder.

    Reads classes.csv and every labelled image and mask in full (sizes must match, ids/colours
    must be known, files must decode). A split labelled by points.json has its points checked (names,
    entries, inside their image) and its targets drawn with `points` (radius and ring; the defaults when
    None), which the pixel statistics count. For the unlabelled pool (only when `need_unlabeled`) it
    checks the folder is there and non-empty and decodes the first few files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = read_classes(root)
    if num_classes is not None and num_classes != classes.num_classes:
        raise DataError(
            f"{root / 'classes.csv'} defines {classes.num_classes} classes but {num_classes} were expected"
        )
    k = classes.num_classes
    counts: dict[str, int] = {}
    notes: list[str] = []
    pixels = np.zeros(k, dtype=np.int64)
    ignored = 0
    sizes: set[tuple[int, int]] = set()
    seen_in: dict[str, np.ndarray] = {}
    point_stats: dict[str, PointStats] = {}
    for split in LABELED_SPLITS:
        if split not in REQUIRED_SPLITS and not (root / split).exists():
            continue
        ds = LabeledDataset(root, split, classes, cache=False, points=points)
        counts[split] = len(ds)
        present = np.zeros(k, dtype=bool)
        split_hist = np.zeros(256, dtype=np.int64)
        for i in range(len(ds)):
            image, mask = ds.arrays(i)
            sizes.add(image.shape[:2])
            hist = np.bincount(mask.ravel(), minlength=256)
            present |= hist[:k] > 0
            split_hist += hist
            if split == "train":
                pixels += hist[:k]
                ignored += int(hist[IGNORE_VALUE])
        seen_in[split] = present
        if split_hist[:k].sum() == 0 and ds.kind == "masks":  # nothing to train on, or to score (mIoU -inf)
            raise DataError(f"every mask pixel of split {split!r} is {IGNORE_VALUE} (ignore) in {root / split / 'masks'}: "
                            f"it has nothing to {'train on' if split == 'train' else 'score'}; label some pixels "
                            f"with class ids 0-{k - 1}")
        if ds.kind == "points":
            per_image = [len(p) for p in ds.points]
            total = max(1, int(split_hist.sum()))
            point_stats[split] = PointStats(len(ds), sum(per_image), min(per_image), max(per_image),
                                            float(split_hist[1:k].sum()) / total,
                                            float(split_hist[IGNORE_VALUE]) / total)
            if sum(per_image) == 0:
                notes.append(f"{split}: {root / split / POINTS_FILE} has no point at all: every pixel is background")
            continue
        orphans = _orphan_masks(root, split)
        if orphans:
            notes.append(f"{split}: {len(orphans)} mask(s) without an image, e.g. {root / split / 'masks' / orphans[0]}")
    if need_unlabeled:
        top = root / "unlabeled" / "images"
        index = unlabeled_index(root)
        if not index:
            raise DataError(f"no images in {top}: self-training needs an unlabelled pool (or use method=supervised)")
        counts["unlabeled"] = len(index)
        for rel in index[:UNLABELED_SAMPLE]:
            read_image(top / rel)
    freqs = class_frequencies(pixels)
    weights = suggested_class_weights(freqs)
    for c in range(k):
        if pixels[c] == 0:
            notes.append(f"class {c} ({classes.names[c]!r}) has no train pixels: its suggested weight is 0")
        absent = [split for split, seen in seen_in.items() if split != "train" and not seen[c]]
        if absent:  # val and test each: a sweep ranks on val, its verdict scores on test
            notes.append(f"class {c} ({classes.names[c]!r}) does not occur in {' or '.join(absent)}: its IoU cannot "
                         f"be measured there, and {'that split' if len(absent) == 1 else 'each'}'s mIoU leaves it out")
    if len(sizes) > 1:
        notes.append(f"labelled images come in {len(sizes)} sizes ({_sizes_text(sizes)}); crops handle that")
    return DatasetSummary(
        root=root, counts=counts, class_names=classes.names, pixel_counts=tuple(int(x) for x in pixels),
        frequencies=freqs, suggested_weights=weights, ignored_pixels=ignored,
        image_sizes=tuple(sorted(sizes)), warnings=notes, points=point_stats,
        point_targets=(points or PointTargets()) if point_stats else None,
        classes_in={split: tuple(bool(x) for x in seen) for split, seen in seen_in.items()},
    )


MIN_RESCALED_SIDE = 2  # px: torch's uint8 bilinear resize fails inside (an internal assert) on a 1 px output
CROP_MULTIPLE = 32  # the crop the suggestions round down to: what most encoders need


def check_crop(crop_size: int, scale_min: float, scale_max: float, image_sizes: Sequence[tuple[int, int]]) -> None:
    """Refuse, naming the key, a crop no labelled image can fill and a rescale no image can take (one ConfigError),
    before anything is trained. `image_sizes` are the (height, width) of the labelled images (`validate_dataset`).

    A `crop_size` larger than every image's shorter side even at `scale_max` (the largest rescale) makes every
    training crop mostly padding: slower steps on the same pixels (512 on 64 px tiles: 3.6x the time). A
    `scale_min` that shrinks the smallest image under 2 px fails inside torch's resize. The loop (`selftune
    train`, each trial) and the sweep's planner (over the crop and rescale range its space can give) both call
    this, so a sweep refuses what its trials would."""
    from selftune.errors import ConfigError

    if not image_sizes:
        return
    fill = max(min(h, w) for h, w in image_sizes)  # the largest square crop an image can fill, at scale 1
    if crop_size > fill * scale_max:
        h, w = max(image_sizes, key=min)
        limit = int(fill * scale_max)
        suggest = limit - limit % CROP_MULTIPLE if limit >= CROP_MULTIPLE else limit
        raise ConfigError(
            f"crop_size {crop_size} is larger than any labelled image can fill: the largest is {w}x{h} px, {limit} px "
            f"on its shorter side at scale_max {scale_max:g}; every training crop would be mostly padding "
            f"({crop_size ** 2 / max(1, limit) ** 2:.1f}x the pixels an image fills) and each step slower for nothing; "
            f"set crop_size to {max(1, suggest)} or less (or raise scale_max)")
    small = min(min(h, w) for h, w in image_sizes)
    if small * scale_min < MIN_RESCALED_SIDE:
        h, w = min(image_sizes, key=min)
        raise ConfigError(
            f"scale_min {scale_min:g} shrinks the smallest labelled image ({w}x{h} px) to under {MIN_RESCALED_SIDE} "
            f"px, which the rescale cannot make; set scale_min to at least {MIN_RESCALED_SIDE / small:.2g}")


def _sizes_text(sizes: set[tuple[int, int]]) -> str:
    shown = sorted(sizes)[:3]
    more = ", ..." if len(sizes) > 3 else ""
    return ", ".join(f"{w}x{h}" for h, w in shown) + more


def dataset_fingerprint(root: Path) -> str:
    """A short sha256 over classes.csv, the labelled file list with sizes, the labels' bytes (masks and
    points.json: a relabelled mask often keeps its size) and the unlabelled count.

    Cheap (no image is decoded; labelled images count by size; the unlabelled pool is counted from its index):
    recorded in a sweep (and a run) and compared on resume (`fingerprint_matches`).
    """
    return _fingerprint(Path(root), label_bytes=True)


def fingerprint_matches(root: Path, recorded: str) -> bool:
    """Whether the dataset at `root` is the one `recorded` was taken of: today's fingerprint, or the one selftune
    recorded before the labels' bytes counted (file names and sizes only)."""
    return recorded in (dataset_fingerprint(root), _fingerprint(Path(root), label_bytes=False))


def _fingerprint(root: Path, *, label_bytes: bool) -> str:
    h = hashlib.sha256()
    classes_csv = root / "classes.csv"
    h.update(classes_csv.read_bytes() if classes_csv.is_file() else b"")
    for split in LABELED_SPLITS:
        for sub in ("images", "masks"):
            d = root / split / sub
            if not d.is_dir():
                continue
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                if e.is_file() and not e.name.startswith("."):
                    h.update(f"\n{split}/{sub}/{e.name}\t{e.stat().st_size}".encode())
                    if label_bytes and sub == "masks":
                        h.update(hashlib.sha256(Path(e.path).read_bytes()).digest())
        points_file = root / split / POINTS_FILE
        if points_file.is_file():  # its bytes: moving one point changes the labels but maybe not the size
            h.update(f"\n{split}/{POINTS_FILE}\t".encode() + hashlib.sha256(points_file.read_bytes()).digest())
    n_unlabeled = len(unlabeled_index(root)) if (root / "unlabeled" / "images").is_dir() else 0
    h.update(f"\nunlabeled\t{n_unlabeled}".encode())
    return h.hexdigest()[:16]


__all__ = [
    "DatasetSummary",
    "PointStats",
    "check_crop",
    "class_frequencies",
    "dataset_fingerprint",
    "fingerprint_matches",
    "suggested_class_weights",
    "validate_dataset",
]
