"""How sure is a difference between two arms? Paired seeds, a bootstrap over test images, three words.

Each arm is trained once per seed (the same seeds for both: pairs) and each run's model is scored image by
image: one confusion matrix per test image. A statistic (mIoU, one class's IoU, F1, ...) is computed from a
run's confusion matrices summed over images. The difference of the arms is the mean over seeds of
(self-training - supervised) on each seed.

Two sources of uncertainty, independent, so their variances add:
- seeds: the paired differences' spread, a Student t interval over seeds (nothing with one seed);
- test images: the test set is a sample too. A paired bootstrap resamples the images (the same draw for
  every run) and recomputes the mean difference; its 2.5% and 97.5% percentiles give each side's width.
The interval is the mean minus/plus the root of the sum of the squared half-widths, each side on its own
(Bouthillier et al. 2021: vary every source, pair the arms, report an interval), at 95% or at a sequential
look's own level (`selftune.search.sequential`). "helps" / "hurts" only when the interval excludes 0, else "no
clear difference" (../docs/methods.md#the-verdict).

A source of variance that cannot be estimated widens the interval to the whole scale, never shrinks it to 0:
one seed sees no training noise, and fewer than MIN_IMAGES test images no test-set noise. Per class, a class
is called helped or hurt only under Holm's step-down over the classes present (the family-wise error at the
look's level), never by its own unadjusted interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

HELPS, HURTS, UNCLEAR = "helps", "hurts", "no clear difference"
CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 4000  # enough for the tails of a Holm-adjusted or an early sequential look's level
MIN_IMAGES = 5  # fewer scored images cannot estimate the test set's own variance: the interval is the whole scale

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
    """Arm A minus arm B: the mean over paired seeds, its interval, and where the width comes from."""

    mean: float
    low: float
    high: float
    per_seed: list[float]
    seed_half_width: float  # t interval over seeds; inf with one seed (training noise unseen)
    image_low: float  # the image bootstrap's own interval around the mean (-inf/inf below MIN_IMAGES images)
    image_high: float
    seeds: int
    images: int
    confidence: float = CONFIDENCE  # the interval's level (a sequential look's own level, or 95%)
    spread: float = float("nan")  # standard deviation of the paired per-seed differences (NaN with one seed)

    @property
    def outcome(self) -> str:
        """helps / hurts only when the interval excludes 0 (never with one seed or too few images)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.seeds < 2 or self.images < MIN_IMAGES:
            return UNCLEAR
        return HELPS if self.low > 0 else HURTS if self.high < 0 else UNCLEAR

    @property
    def image_half_width(self) -> float:
        """The wider side of the image bootstrap's interval (at this difference's `confidence`)."""
        return max(self.mean - self.image_low, self.image_high - self.mean)

    def image_half_width_at(self, confidence: float) -> float:
        """The images' half-width at another level, scaled by the normal quantiles (a look at 98.9% projected to
        the last look's 95.4%, or to 95% for the seeds an effect would need)."""
        from scipy.stats import norm

        return self.image_half_width * float(norm.ppf(0.5 + confidence / 2) / norm.ppf(0.5 + self.confidence / 2))

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "per_seed": self.per_seed,
                "seed_half_width": _finite_or_none(self.seed_half_width),
                "image_interval": [_finite_or_none(self.image_low), _finite_or_none(self.image_high)],
                "seeds": self.seeds, "images": self.images, "outcome": self.outcome, "confidence": self.confidence,
                "spread": _finite_or_none(self.spread)}


def _finite_or_none(x: float) -> float | None:
    """JSON has no infinity: an unestimated width is stored as null."""
    return float(x) if math.isfinite(x) else None


def t_quantile(df: int, p: float = 0.5 + CONFIDENCE / 2) -> float:
    """Student t's quantile (scipy's t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(a: np.ndarray, b: np.ndarray, statistic: Statistic = miou, *, draws: int = BOOTSTRAP_DRAWS,
                      seed: int = 0, confidence: float = CONFIDENCE) -> Difference:
    """`a`, `b`: per-image confusion matrices [seeds, images, K, K] of the two arms, seed i of `a` paired with seed
    i of `b`, image j the same image in every run. The mean over seeds of statistic(a) - statistic(b) and its
    `confidence` interval (seeds: t; images: paired bootstrap, the same draw for every run)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"per-image confusion matrices must be [seeds, images, K, K] and alike, got {a.shape} "
                         f"and {b.shape}")
    n, m = a.shape[:2]
    per_seed = statistic(a.sum(1)) - statistic(b.sum(1))  # [seeds]
    kept = per_seed[np.isfinite(per_seed)]
    mean = float(kept.mean()) if len(kept) else float("nan")
    spread = float(kept.std(ddof=1)) if len(kept) > 1 else float("nan")
    seed_hw = t_quantile(len(kept) - 1, 0.5 + confidence / 2) * spread / math.sqrt(len(kept)) if len(kept) > 1 \
        else math.inf
    alpha = (1 - confidence) / 2
    img_lo, img_hi = _image_interval(a, b, statistic, draws, seed, alpha) if m >= MIN_IMAGES else (-math.inf, math.inf)
    if not math.isfinite(mean):
        img_lo = img_hi = float("nan")
    low = max(-1.0, mean - math.hypot(seed_hw, max(0.0, mean - img_lo)))  # a difference of two scores in [0, 1]
    high = min(1.0, mean + math.hypot(seed_hw, max(0.0, img_hi - mean)))
    return Difference(mean=mean, low=low, high=high, per_seed=[float(x) for x in per_seed], seed_half_width=seed_hw,
                      image_low=img_lo, image_high=img_hi, seeds=n, images=m, confidence=confidence, spread=spread)


def _image_interval(a: np.ndarray, b: np.ndarray, statistic: Statistic, draws: int, seed: int, alpha: float
                    ) -> tuple[float, float]:
    """The paired bootstrap over images of the mean difference: its alpha and 1 - alpha quantiles."""
    n, m, k, _ = a.shape
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
    if not len(boot):
        return float("nan"), float("nan")
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi)


def per_class_differences(a: np.ndarray, b: np.ndarray, class_names: Sequence[str], *, draws: int = BOOTSTRAP_DRAWS,
                          seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Difference]:
    """`paired_difference` of each class's IoU; a class absent from the split (NaN on every seed) is left out."""
    out = {}
    for c, name in enumerate(class_names):
        d = paired_difference(a, b, one_class(c), draws=draws, seed=seed, confidence=confidence)
        if math.isfinite(d.mean):
            out[name] = d
    return out


def holm_calls(a: np.ndarray, b: np.ndarray, class_names: Sequence[str], *, alpha: float = 1 - CONFIDENCE,
               draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict[str, dict[str, object]]:
    """Each present class's difference at 1 - alpha, and "helped" / "hurt" only under Holm's step-down (the chance
    of any false call over the m classes stays <= alpha): the classes in order of evidence (|mean| / half-width),
    the j-th (from 0) called only if its interval at 1 - alpha / (m - j) excludes 0 and every earlier one was
    called. Each entry: the unadjusted difference, and for a tested class the level and interval it was tested at."""
    plain = per_class_differences(a, b, class_names, draws=draws, seed=seed, confidence=1 - alpha)
    evidence = {n: abs(d.mean) / max(1e-12, (d.high - d.low) / 2) for n, d in plain.items()}
    order = sorted(plain, key=lambda n: -evidence[n])
    out: dict[str, dict[str, object]] = {n: {**d.to_dict(), "word": ""} for n, d in plain.items()}
    names = list(class_names)
    for j, name in enumerate(order):
        level = 1 - alpha / (len(order) - j)
        d = paired_difference(a, b, one_class(names.index(name)), draws=draws, seed=seed, confidence=level)
        out[name]["holm"] = {"confidence": level, "low": d.low, "high": d.high}
        if d.outcome == UNCLEAR:
            break
        out[name]["word"] = "helped" if d.outcome == HELPS else "hurt"
    return out


__all__ = ["BOOTSTRAP_DRAWS", "CONFIDENCE", "HELPS", "HURTS", "MIN_IMAGES", "UNCLEAR", "Difference", "binary",
           "class_iou", "holm_calls", "miou", "one_class", "paired_difference", "per_class_differences",
           "statistic_for", "t_quantile"]
