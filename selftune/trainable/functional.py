"""Small pure functions of the self-training loop, each written once and testable on 2x2 tensors.

- pseudo-labels: `pseudo_labels`, `binary_pseudo_labels`, `align_distribution`, `class_floor_thresholds`,
  `pseudo_label_counts`, `acceptance_ratio`, `valid_share`; `class_probs` (softmax, or a one-channel sigmoid
  as two classes), `two_class_logits`
- schedules: `threshold_at`, `relaxed_thresholds`, `st_weight_at`, `lr_factor`
- losses: `SegmentationLoss` (ce*CE + focal*Focal + dice*Dice; the same object scores labelled
  batches and pseudo-labelled ones, whose rejected pixels carry `ignore_index`), `BinaryLoss` (the same on one
  sigmoid channel, with pos_weight), `loss_from_config`, `class_weights_for`
- metrics: `confusion_matrix`, `iou_per_class`, `mean_iou`; two classes: `binary_scores` (precision, recall,
  F1, IoU of the positive class), `roc_histograms` and `auc_from_histograms`
- teacher: `ema_update`

Nothing here reads the config object except the `from_config` helpers; every function takes
plain numbers and tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss
from segmentation_models_pytorch.losses._functional import focal_loss_with_logits

from selftune.errors import ConfigError

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig

# ---------------------------------------------------------------------------- pseudo-labels


class PseudoLabels(NamedTuple):
    labels: torch.Tensor  # int64 [B, H, W]: the teacher's class, or ignore_index where rejected
    accepted: torch.Tensor  # bool [B, H, W]: confidence >= the threshold of the predicted class
    confidence: torch.Tensor  # float [B, H, W]: the top class probability
    predicted: torch.Tensor  # int64 [B, H, W]: the teacher's class before rejection


def pseudo_labels(
    probs: torch.Tensor, thresholds: torch.Tensor, ignore_index: int = 255, min_accept_ratio: float = 0.0
) -> PseudoLabels:
    """Per-class confidence masking of a teacher's class probabilities.

    A pixel is accepted when its top probability is at least the threshold of its top class
    (threshold 0 accepts every pixel, 1 only certain ones); rejected pixels get `ignore_index`.
    With `min_accept_ratio` r > 0, a class's threshold is lowered where needed so that at least
    the most confident fraction r of the pixels predicted as that class is accepted
    (`class_floor_thresholds`).

    Args:
        probs: softmax probabilities [B, K, H, W].
        thresholds: one threshold per class [K], on any device.
        ignore_index: label of rejected pixels.
        min_accept_ratio: per-class acceptance floor in [0, 1]; 0 leaves the thresholds as they are.
    """
    confidence, predicted = probs.max(dim=1)
    thresholds = thresholds.to(device=probs.device, dtype=confidence.dtype)
    if min_accept_ratio > 0:
        floor = class_floor_thresholds(confidence, predicted, probs.shape[1], min_accept_ratio)
        thresholds = torch.minimum(thresholds, floor.to(confidence.dtype))
    thr = thresholds[predicted]
    accepted = confidence >= thr
    labels = torch.where(accepted, predicted, torch.full_like(predicted, ignore_index))
    return PseudoLabels(labels, accepted, confidence, predicted)


def binary_pseudo_labels(probs_pos: torch.Tensor, pos_threshold: float, neg_threshold: float,
                         ignore_index: int = 255) -> PseudoLabels:
    """Binary pseudo-labels from the positive-class probability [B, H, W] (seed 003).

    Positive (1) where the probability is >= `pos_threshold`, negative (0) where it is <= `neg_threshold`,
    `ignore_index` in between (0 <= neg_threshold < pos_threshold <= 1). `predicted` is the teacher's class
    at 0.5 and `confidence` the probability of that class, as `pseudo_labels` gives them.
    """
    positive = probs_pos >= pos_threshold
    accepted = positive | (probs_pos <= neg_threshold)
    labels = torch.where(accepted, positive.long(), torch.full_like(positive, ignore_index, dtype=torch.long))
    predicted = (probs_pos >= 0.5).long()
    confidence = torch.where(predicted.bool(), probs_pos, 1 - probs_pos)
    return PseudoLabels(labels, accepted, confidence, predicted)


def class_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities [B, K, H, W] from logits: softmax over K channels, or, for a binary model's one
    channel, the sigmoid as two classes (1 - p, p)."""
    if logits.shape[1] == 1:
        p = logits.sigmoid()
        return torch.cat([1 - p, p], dim=1)
    return logits.softmax(dim=1)


def two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """A binary model's one logit channel z [B, 1, H, W] as two-class logits (0, z): their softmax is (1 - s, s)
    with s = sigmoid(z) and their argmax is z > 0, so scoring and the confusion matrix treat it as 2 classes.
    Logits of K > 1 channels are returned as they are."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1) if logits.shape[1] == 1 else logits


def tta_probs(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Class probabilities [B, K, H, W] of `model` on `images` (`class_probs`: a binary model's sigmoid as two
    classes), averaged over symmetric views.

    `mode`: none (one pass) | flip (the images and their horizontal, vertical and double flips) |
    d4 (those four and their transposes: the 8 symmetries of the square, for top-down imagery).
    The views go through the model as one batch; each view's output is mapped back before averaging.
    d4 needs square images.
    """
    if mode == "none":
        return class_probs(model(images).float())
    views = [(dims, t) for t in ((False, True) if mode == "d4" else (False,))
             for dims in ((), (-1,), (-2,), (-2, -1))]

    def view(x: torch.Tensor, dims: tuple[int, ...], t: bool) -> torch.Tensor:  # flip, then transpose
        x = x.flip(dims) if dims else x
        return x.transpose(-1, -2) if t else x

    def unview(x: torch.Tensor, dims: tuple[int, ...], t: bool) -> torch.Tensor:  # its inverse
        x = x.transpose(-1, -2) if t else x
        return x.flip(dims) if dims else x

    probs = class_probs(model(torch.cat([view(images, d, t) for d, t in views])).float())
    back = [unview(p, d, t) for p, (d, t) in zip(probs.chunk(len(views)), views, strict=True)]
    return torch.stack(back).mean(dim=0)


def align_distribution(probs: torch.Tensor, prior: torch.Tensor, predicted_mean: torch.Tensor) -> torch.Tensor:
    """Distribution alignment (ReMixMatch; AdaMatch): scale the teacher's class probabilities
    [B, K, H, W] by prior / predicted_mean per class and renormalise over classes.

    `prior` is the labelled class distribution and `predicted_mean` the running mean of the
    teacher's probabilities on unlabelled data, both [K]. A class the teacher predicts more often
    than the labels hold it loses probability mass; a rare class it neglects gains it, so
    self-training does not drift towards the classes it already favours.
    """
    ratio = prior.to(probs) / predicted_mean.to(probs).clamp_min(1e-6)
    aligned = probs * ratio.view(1, -1, *([1] * (probs.dim() - 2)))
    return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(1e-12)


def class_floor_thresholds(
    confidence: torch.Tensor, predicted: torch.Tensor, num_classes: int, ratio: float
) -> torch.Tensor:
    """Per class, the confidence of its ceil(ratio * n)-th most confident pixel, n being the pixels
    predicted as that class (float64 [K]; 1.0 for a class predicted nowhere).

    Used as a threshold it accepts at least that fraction of every predicted class: the class-balanced
    selection of CBST (Zou et al., 2018), which keeps rare classes in the pseudo-labels when a fixed
    high threshold would accept only the frequent ones. One sort, no host-device sync.
    """
    classes = torch.arange(num_classes, device=confidence.device, dtype=torch.float64)
    if confidence.numel() == 0:
        return torch.ones_like(classes)
    key = predicted.flatten().double() * 2 + confidence.flatten().double()  # classes in blocks, 2 apart
    ordered = key.sort().values  # by class, then by confidence, ascending
    counts = _count(predicted, num_classes)
    take = torch.ceil(counts.double() * ratio).long().clamp_min(1)
    pos = (counts.cumsum(0) - take).clamp(0, key.numel() - 1)  # the take-th largest of each class block
    return torch.where(counts > 0, ordered[pos] - 2 * classes, torch.ones_like(classes))


def pseudo_label_counts(pl: PseudoLabels, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted pixels per class, predicted pixels per class), int64 [K] each, on pl's device."""
    accepted = _count(torch.where(pl.accepted, pl.predicted, num_classes), num_classes + 1)[:num_classes]
    return accepted, _count(pl.predicted, num_classes)


def acceptance_ratio(accepted: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """accepted / predicted per class (float64); 0 where the teacher predicted no pixel of a class.

    Also works on totals (0-d tensors): the overall share of unlabelled pixels accepted.
    """
    accepted, predicted = accepted.double(), predicted.double()
    return torch.where(predicted > 0, accepted / predicted.clamp_min(1), torch.zeros_like(accepted))


def valid_share(labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The share of pixels in `labels` that are not `ignore_index` (0-d float32, no host sync).

    A loss averaged over the valid pixels, times this share, is the same loss averaged over all
    pixels with the ignored ones counting 0: FixMatch's and UniMatch's unlabelled loss.
    """
    return (labels != ignore_index).float().mean()


def _count(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Histogram of int64 values in [0, n): like `torch.bincount`, but without the device sync
    that bincount needs on CUDA to size its output."""
    idx = idx.flatten()
    out = torch.zeros(n, dtype=torch.int64, device=idx.device)
    return out.index_add_(0, idx, torch.ones_like(idx))


# ---------------------------------------------------------------------------- schedules


def threshold_at(
    it: int,
    thresholds: Sequence[float],
    *,
    schedule: str,
    start_offset: float,
    ramp_iters: int,
    start_iter: int,
) -> list[float]:
    """Per-class thresholds at step `it` (0-based).

    constant: `thresholds` throughout. linear: from `thresholds + start_offset` at `start_iter`
    (when self-training starts) to `thresholds` at `start_iter + ramp_iters`, then constant.
    Values are clipped to [0, 1].
    """
    if schedule == "constant" or ramp_iters <= 0:
        frac = 1.0
    elif schedule == "linear":
        frac = min(1.0, max(0.0, (it - start_iter) / ramp_iters))
    else:
        raise ConfigError(f"threshold_schedule must be constant or linear, got {schedule!r}")
    offset = start_offset * (1.0 - frac)
    return [min(1.0, max(0.0, t + offset)) for t in thresholds]


def relaxed_thresholds(pos_threshold: float, neg_threshold: float, decay: float, steps: int) -> tuple[float, float]:
    """Binary thresholds after `steps` relaxations (seed 003's adaptive thresholds): each moves `decay` towards
    0.5 per step, and stops there (0.95/0.05 with decay 0.02: 0.93/0.07 after one, 0.91/0.09 after two)."""
    shift = decay * max(0, steps)
    return round(max(0.5, pos_threshold - shift), 10), round(min(0.5, neg_threshold + shift), 10)


def st_weight_at(it: int, *, weight: float, start_iter: int, rampup_iters: int) -> float:
    """Weight of the pseudo-label loss at step `it` (0-based).

    0 before `start_iter`; then rises linearly and reaches `weight` at step
    `start_iter + rampup_iters - 1` (the first self-training step already has weight/rampup_iters).
    """
    if it < start_iter:
        return 0.0
    if rampup_iters <= 0:
        return weight
    return weight * min(1.0, (it - start_iter + 1) / rampup_iters)


def lr_factor(it: int, *, warmup_iters: int, max_iters: int, schedule: str, poly_power: float) -> float:
    """Multiplier of the peak LR at step `it` (0-based): linear warmup, then decay.

    Warmup: (it+1)/warmup_iters for the first `warmup_iters` steps. Then, with progress p going
    from 0 (end of warmup) to 1 (max_iters): cosine 0.5*(1+cos(pi*p)), poly (1-p)^poly_power,
    constant 1.
    """
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    if schedule == "constant":
        return 1.0
    p = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "poly":
        return (1.0 - p) ** poly_power
    raise ConfigError(f"lr_schedule must be cosine, poly or constant, got {schedule!r}")


# ---------------------------------------------------------------------------- losses


def class_weights_for(
    weighting: str,
    num_classes: int,
    *,
    explicit: Sequence[float] | None = None,
    suggested: Sequence[float] | None = None,
) -> torch.Tensor | None:
    """Loss class weights [K] (float32), or None for unweighted losses.

    none: None. inverse_freq: the dataset's `suggested_weights` (inverse pixel frequency of the
    train masks, from `validate_dataset`). explicit: the config's `class_weights`.
    """
    if weighting == "none":
        return None
    values = {"explicit": explicit, "inverse_freq": suggested}.get(weighting)
    if weighting not in ("explicit", "inverse_freq"):
        raise ConfigError(f"class_weighting must be none, inverse_freq or explicit, got {weighting!r}")
    if values is None or len(values) != num_classes:
        have = None if values is None else len(values)
        raise ConfigError(f"class_weighting {weighting!r} needs {num_classes} weights, got {have}")
    w = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"class weights must be finite, >= 0 and not all zero, got {list(values)}")
    return w


class SegmentationLoss:
    """ce_weight * CE + focal_weight * Focal + dice_weight * Dice over pixels whose label is not
    `ignore_index`; terms with weight 0 are not computed.

    CE is torch's (class-weighted mean over valid pixels); Focal and Dice are smp's multiclass
    `FocalLoss` (one-vs-rest sigmoid focal per class) and `DiceLoss` (soft Dice on softmax), with
    the same class weights. The same object scores pseudo-labels: rejected pixels carry
    `ignore_index`. A batch without a single valid pixel has loss 0 (not NaN) and zero gradients.
    Losses are computed in float32 whatever the logits' dtype (AMP).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ce_weight: float = 1.0,
        focal_weight: float = 0.0,
        dice_weight: float = 0.0,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = 255,
    ):
        self.num_classes = num_classes
        self.ce_weight, self.focal_weight, self.dice_weight = ce_weight, focal_weight, dice_weight
        self.ignore_index = ignore_index
        self.class_weights = class_weights
        weights_list = None if class_weights is None else class_weights.tolist()
        self.focal = FocalLoss(
            "multiclass", alpha=focal_alpha, gamma=focal_gamma, ignore_index=ignore_index,
            class_weights=weights_list,
        )
        self.dice = DiceLoss("multiclass", ignore_index=ignore_index, class_weights=weights_list)

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int, class_weights: torch.Tensor | None) -> SegmentationLoss:
        return cls(
            num_classes, ce_weight=cfg.ce_weight, focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight,
            focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha, class_weights=class_weights,
            ignore_index=cfg.ignore_index,
        )

    def to(self, device: torch.device | str) -> SegmentationLoss:
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        return self

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits [B, K, H, W], target int64 [B, H, W] -> scalar float32 loss."""
        logits = logits.float()
        valid = target != self.ignore_index
        loss = logits.new_zeros(())
        if self.ce_weight:
            # reduction="mean" divides by the weight of the valid pixels and gives NaN when there
            # are none; the same sum over a denominator clamped away from 0 gives 0 instead.
            ce_sum = F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="sum"
            )
            if self.class_weights is None:
                denom = valid.sum()
            else:
                denom = (self.class_weights[target.clamp(0, self.num_classes - 1)] * valid).sum()
            loss = loss + self.ce_weight * ce_sum / denom.clamp_min(1e-12)
        if self.focal_weight:
            focal = self.focal(logits, target)  # mean over an empty selection is NaN: keep 0 instead
            loss = loss + self.focal_weight * torch.where(valid.any(), focal, torch.zeros_like(focal))
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)  # already 0 without valid pixels
        return loss


class BinaryLoss:
    """ce_weight * BCE + focal_weight * Focal + dice_weight * Dice on a binary model's one logit per pixel,
    over pixels whose label is not `ignore_index` (targets 0 = negative, 1 = positive); terms with weight 0
    are not computed. Seed 003's CombinedLoss is focal 0.7 + dice 0.3 with a pos_weight.

    BCE and Focal (smp's `focal_loss_with_logits`: (1 - p_t)^gamma * BCE, times alpha for positives and
    1 - alpha for negatives when `focal_alpha` is set) are sums over the valid pixels, each weighted by
    `pos_weight` if positive (and its class weight when given), divided by the number of valid pixels: with
    pos_weight 1 and no class weights they are the plain means (torch's BCE, smp's binary FocalLoss). Dice is
    smp's binary soft Dice of the positive class (0 for a batch without positive pixels). Two-class logits
    (l0, l1), as `evaluation.predict` gives them, are taken as the logit l1 - l0. A batch without a single
    valid pixel has loss 0 and zero gradients; losses are float32 whatever the logits' dtype (AMP).
    """

    def __init__(
        self,
        *,
        ce_weight: float = 1.0,
        focal_weight: float = 0.0,
        dice_weight: float = 0.0,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        pos_weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = 255,
    ):
        self.ce_weight, self.focal_weight, self.dice_weight = ce_weight, focal_weight, dice_weight
        self.focal_gamma, self.focal_alpha, self.pos_weight = focal_gamma, focal_alpha, pos_weight
        self.class_weights = class_weights
        self.ignore_index = ignore_index
        self.dice = DiceLoss("binary", from_logits=True, ignore_index=ignore_index)

    @classmethod
    def from_config(cls, cfg: TrainConfig, class_weights: torch.Tensor | None) -> BinaryLoss:
        return cls(ce_weight=cfg.ce_weight, focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight,
                   focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha, pos_weight=cfg.pos_weight,
                   class_weights=class_weights, ignore_index=cfg.ignore_index)

    def to(self, device: torch.device | str) -> BinaryLoss:
        if self.class_weights is not None:
            self.class_weights = self.class_weights.to(device)
        return self

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits [B, 1, H, W] (or two-class [B, 2, H, W]), target int64 [B, H, W] -> scalar float32 loss."""
        logits = logits.float()
        z = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        valid = target != self.ignore_index
        y = (target == 1).float()
        weight = valid.float() * torch.where(target == 1, self.pos_weight, 1.0)
        if self.class_weights is not None:
            weight = weight * self.class_weights[target.clamp(0, 1)]
        n = valid.sum().clamp_min(1)
        loss = logits.new_zeros(())
        if self.ce_weight:
            bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
            loss = loss + self.ce_weight * (weight * bce).sum() / n
        if self.focal_weight:
            focal = focal_loss_with_logits(z, y, gamma=self.focal_gamma, alpha=self.focal_alpha, reduction="none")
            loss = loss + self.focal_weight * (weight * focal).sum() / n
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(z.unsqueeze(1), target.unsqueeze(1))
        return loss


Loss = SegmentationLoss | BinaryLoss


def loss_from_config(cfg: TrainConfig, num_classes: int, class_weights: torch.Tensor | None) -> Loss:
    """The run's loss: `BinaryLoss` in binary mode, else `SegmentationLoss`."""
    if cfg.binary:
        return BinaryLoss.from_config(cfg, class_weights)
    return SegmentationLoss.from_config(cfg, num_classes, class_weights)


# ---------------------------------------------------------------------------- metrics


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [K, K] counts: rows are the true class, columns the predicted class.

    Pixels whose target is outside [0, K) (ignore_index among them) are left out.
    """
    target = target.flatten()
    pred = pred.flatten().to(target.device)
    valid = (target >= 0) & (target < num_classes)
    idx = torch.where(valid, target * num_classes + pred, num_classes * num_classes)  # invalid: extra bin
    return _count(idx, num_classes * num_classes + 1)[:-1].view(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU per class (float64 [K]) from a confusion matrix: TP / (TP + FP + FN).

    A class absent from both truth and prediction has 0/0: its IoU is NaN (not 0 and not 1),
    and `mean_iou` leaves it out.
    """
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(iou: torch.Tensor) -> float:
    """Mean of the defined (non-NaN) per-class IoUs; NaN when no class is defined."""
    defined = iou[~torch.isnan(iou)]
    return float(defined.mean()) if defined.numel() else float("nan")


def binary_scores(cm: torch.Tensor) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the positive class (1) from a 2-class confusion matrix [2, 2].

    precision = TP / (TP + FP) and recall = TP / (TP + FN), 0 when their denominator is 0 (nothing predicted,
    or nothing to find: sklearn's zero_division=0); F1 = 2 TP / (2 TP + FP + FN) and IoU = TP / (TP + FP + FN),
    NaN when there is no positive pixel in the truth or the prediction (0/0, like `iou_per_class`).
    """
    cm = cm.double()
    tp, fp, fn = float(cm[1, 1]), float(cm[0, 1]), float(cm[1, 0])
    nan = float("nan")
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
        "iou": tp / (tp + fp + fn) if tp + fp + fn else nan,
    }


def roc_histograms(probs_pos: torch.Tensor, target: torch.Tensor, bins: int) -> torch.Tensor:
    """int64 [2, bins]: histograms of the positive-class probability over the negative (row 0) and positive
    (row 1) pixels of `target` (others, ignore_index among them, left out); bin i holds [i/bins, (i+1)/bins),
    the last one 1.0 too. Summed over batches, they are all `auc_from_histograms` needs."""
    target, probs_pos = target.flatten(), probs_pos.flatten().to(target.device)
    b = (probs_pos.float() * bins).long().clamp(0, bins - 1)
    valid = (target == 0) | (target == 1)
    idx = torch.where(valid, target * bins + b, 2 * bins)  # invalid: an extra bin
    return _count(idx, 2 * bins + 1)[:-1].view(2, bins)


def auc_from_histograms(hist: torch.Tensor) -> float:
    """ROC AUC from `roc_histograms`: the probability that a random positive pixel scores above a random
    negative one, ties (the same bin) counting one half; the exact rank (Mann-Whitney) AUC when no bin holds
    both a positive and a negative. NaN without positive or without negative pixels."""
    neg, pos = hist[0].double(), hist[1].double()
    n_neg, n_pos = float(neg.sum()), float(pos.sum())
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    below = torch.cumsum(neg, 0) - neg  # negatives in lower bins
    return float(((pos * below).sum() + 0.5 * (pos * neg).sum()) / (n_neg * n_pos))


# ---------------------------------------------------------------------------- teacher


def ema_decay_at(it: int, decay: float, *, warmup: bool) -> float:
    """Teacher decay at step `it` (0-based). With warmup, min(decay, 1 - 1/(it+1)) (UniMatch V2):
    0 at the first step (the teacher becomes the student), then the plain running mean of the
    student's weights until that reaches `decay`."""
    return min(decay, 1.0 - 1.0 / (it + 1)) if warmup else decay


def feature_dropout(features: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Channel dropout (`nn.Dropout2d`) with its mask drawn from `generator`: each channel of each
    image of [B, C, H, W] `features` is zeroed with probability `p`, the rest scaled by 1/(1-p).
    UniMatch's feature perturbation; the mask is built on the CPU, so runs resume exactly."""
    if p <= 0:
        return features
    b, c = features.shape[:2]
    keep = (torch.rand(b, c, 1, 1, generator=generator) >= p).to(features.device, features.dtype)
    return features * keep / (1.0 - p)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, for parameters and floating-point
    buffers (BatchNorm running statistics); integer buffers (BN's batch counter) are copied."""
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    t_float, s_float = [], []
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        if tb.is_floating_point():
            t_float.append(tb)
            s_float.append(sb)
        else:
            tb.copy_(sb)
    if t_float:
        torch._foreach_lerp_(t_float, s_float, 1.0 - decay)


__all__ = [
    "BinaryLoss",
    "Loss",
    "PseudoLabels",
    "SegmentationLoss",
    "acceptance_ratio",
    "align_distribution",
    "auc_from_histograms",
    "binary_pseudo_labels",
    "binary_scores",
    "class_floor_thresholds",
    "class_probs",
    "class_weights_for",
    "confusion_matrix",
    "ema_decay_at",
    "ema_update",
    "feature_dropout",
    "iou_per_class",
    "loss_from_config",
    "lr_factor",
    "mean_iou",
    "pseudo_label_counts",
    "pseudo_labels",
    "relaxed_thresholds",
    "roc_histograms",
    "st_weight_at",
    "threshold_at",
    "two_class_logits",
    "valid_share",
]
