"""How sure is a difference between two arms? Paired seeds, a bootstrap over test images, three words.

Each arm is trained once per seed (the same seeds for both: pairs) and each run's model is scored image by
image: one confusion matrix per test image. A statistic (mIoU, one class's IoU, F1, ...) is computed from a
run's confusion matrices summed over images. The difference of the arms is the mean over seeds of
(self-training - supervised) on each seed.

Two sources of uncertainty, independent, so their variances add:
- seeds: the paired differences' spread, a Student t interval over seeds (nothing with one seed);
- test images: the test set is a sample too. A paired bootstrap resamples the images (the same draw for
  every run) and recomputes the mean difference; its 2.5% and 97.5% percentiles give each side's width.
The 95% interval is the mean minus/plus the root of the sum of the squared half-widths, each side on its own
(Bouthillier et al. 2021: vary every source, pair the arms, report an interval). "helps" / "hurts" only when
the interval excludes 0, else "no clear difference" (../docs/methods.md#the-verdict).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

HELPS, HURTS, UNCLEAR = "helps", "hurts", "no clear difference"
CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 2000

# a statistic of one confusion matrix [..., K, K] (rows: truth), broadcast over leading axes
Statistic = Callable[[np.ndarray], np.ndarray]


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU [..., K] of confusion matrices [..., K, K]; NaN for a class in neither truth nor prediction."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def miou(cm: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present (NaN-aware), as the loop's `functional.mean_iou` computes it."""
    iou = class_iou(cm)
    present = ~np.isnan(iou)
    with np.errstate(invalid="ignore"):
        return np.where(present.any(-1), np.nansum(iou, -1) / np.maximum(present.sum(-1), 1), np.nan)


def one_class(c: int) -> Statistic:
    """Class `c`'s IoU."""
    return lambda cm: class_iou(cm)[..., c]


def binary(kind: str) -> Statistic:
    """precision, recall, f1 or pos_iou of the positive class (1) of 2-class confusion matrices."""
    def stat(cm: np.ndarray) -> np.ndarray:
        tp, fp, fn = cm[..., 1, 1].astype(float), cm[..., 0, 1].astype(float), cm[..., 1, 0].astype(float)
        num, den = {"precision": (tp, tp + fp), "recall": (tp, tp + fn), "f1": (2 * tp, 2 * tp + fp + fn),
                    "pos_iou": (tp, tp + fp + fn)}[kind]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return stat


def statistic_for(metric: str, class_names: Sequence[str]) -> tuple[str, Statistic]:
    """The test statistic that matches the sweep's metric: (its name, the function). val_miou -> mIoU, val_f1 ->
    F1, val_iou/<class> -> that class's IoU; metrics a confusion matrix cannot give (AUC) fall back to mIoU."""
    name = metric.removeprefix("val_").removesuffix("_raw")
    if name.startswith("iou/"):
        from selftune.trainable.records import metric_names

        keys = metric_names(list(class_names))
        cls = name.split("/", 1)[1]
        if cls in keys:
            return f"IoU of {class_names[keys.index(cls)]}", one_class(keys.index(cls))
    if name in ("precision", "recall", "f1", "pos_iou") and len(class_names) == 2:
        return name.replace("pos_iou", "positive-class IoU"), binary(name)
    return "mIoU", miou


@dataclass(frozen=True)
class Difference:
    """Arm A minus arm B: the mean over paired seeds, its 95% interval, and where the width comes from."""

    mean: float
    low: float
    high: float
    per_seed: list[float]
    seed_half_width: float  # t interval over seeds; NaN with one seed
    image_low: float  # the image bootstrap's own interval around the mean
    image_high: float
    seeds: int
    images: int

    @property
    def outcome(self) -> str:
        """helps / hurts only when the interval excludes 0."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return UNCLEAR
        return HELPS if self.low > 0 else HURTS if self.high < 0 else UNCLEAR

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "per_seed": self.per_seed,
                "seed_half_width": self.seed_half_width, "image_interval": [self.image_low, self.image_high],
                "seeds": self.seeds, "images": self.images, "outcome": self.outcome, "confidence": CONFIDENCE}


def t_quantile(df: int, p: float = 0.5 + CONFIDENCE / 2) -> float:
    """Student t's quantile (scipy's t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(a: np.ndarray, b: np.ndarray, statistic: Statistic = miou, *, draws: int = BOOTSTRAP_DRAWS,
                      seed: int = 0) -> Difference:
    """`a`, `b`: per-image confusion matrices [seeds, images, K, K] of the two arms, seed i of `a` paired with seed
    i of `b`, image j the same image in every run. The mean over seeds of statistic(a) - statistic(b) and its 95%
    interval (seeds: t; images: paired bootstrap, the same draw for every run)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"per-image confusion matrices must be [seeds, images, K, K] and alike, got {a.shape} "
                         f"and {b.shape}")
    n, m, k, _ = a.shape
    per_seed = statistic(a.sum(1)) - statistic(b.sum(1))  # [seeds]
    kept = per_seed[np.isfinite(per_seed)]
    mean = float(kept.mean()) if len(kept) else float("nan")
    seed_hw = float(t_quantile(len(kept) - 1) * kept.std(ddof=1) / math.sqrt(len(kept))) if len(kept) > 1 else 0.0

    rng = np.random.default_rng(seed)
    weights = rng.multinomial(m, np.full(m, 1.0 / m), size=draws).astype(np.int64)  # [draws, images]
    flat_a, flat_b = a.reshape(n, m, k * k), b.reshape(n, m, k * k)
    boot_a = np.einsum("dm,smx->dsx", weights, flat_a).reshape(draws, n, k, k)
    boot_b = np.einsum("dm,smx->dsx", weights, flat_b).reshape(draws, n, k, k)
    diffs = statistic(boot_a) - statistic(boot_b)  # [draws, seeds]
    with warnings.catch_warnings():  # a draw without a class (its IoU NaN on every seed) is dropped below
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nanmean(np.where(np.isfinite(diffs), diffs, np.nan), axis=1)
    boot = boot[np.isfinite(boot)]
    alpha = (1 - CONFIDENCE) / 2
    if len(boot) and math.isfinite(mean):
        img_lo, img_hi = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
    else:
        img_lo = img_hi = float("nan")
    low = max(-1.0, mean - math.hypot(seed_hw, max(0.0, mean - img_lo)))  # a difference of two scores in [0, 1]
    high = min(1.0, mean + math.hypot(seed_hw, max(0.0, img_hi - mean)))
    return Difference(mean=mean, low=low, high=high, per_seed=[float(x) for x in per_seed],
                      seed_half_width=seed_hw if n > 1 else float("nan"), image_low=img_lo, image_high=img_hi,
                      seeds=n, images=m)


def per_class_differences(a: np.ndarray, b: np.ndarray, class_names: Sequence[str], *, draws: int = BOOTSTRAP_DRAWS,
                          seed: int = 0) -> dict[str, Difference]:
    """`paired_difference` of each class's IoU; a class absent from the split (NaN on every seed) is left out."""
    out = {}
    for c, name in enumerate(class_names):
        d = paired_difference(a, b, one_class(c), draws=draws, seed=seed)
        if math.isfinite(d.mean):
            out[name] = d
    return out


__all__ = ["BOOTSTRAP_DRAWS", "CONFIDENCE", "HELPS", "HURTS", "UNCLEAR", "Difference", "binary", "class_iou",
           "miou", "one_class", "paired_difference", "per_class_differences", "statistic_for", "t_quantile"]
