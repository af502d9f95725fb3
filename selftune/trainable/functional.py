"""Small pure functions of the self-training loop, each written once and testable on 2x2 tensors.

- pseudo-labels: `pseudo_labels`, `align_distribution`, `class_floor_thresholds`, `pseudo_label_counts`, `acceptance_ratio`,
  `valid_share`
- schedules: `threshold_at`, `st_weight_at`, `lr_factor`
- losses: `SegmentationLoss` (ce*CE + focal*Focal + dice*Dice; the same object scores labelled
  batches and pseudo-labelled ones, whose rejected pixels carry `ignore_index`), `class_weights_for`
- metrics: `confusion_matrix`, `iou_per_class`, `mean_iou`
- teacher: `ema_update`

Nothing here reads the config object except the two `from_config` helpers; every function takes
plain numbers and tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

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


def tta_probs(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Softmax probabilities [B, K, H, W] of `model` on `images`, averaged over symmetric views.

    `mode`: none (one pass) | flip (the images and their horizontal, vertical and double flips) |
    d4 (those four and their transposes: the 8 symmetries of the square, for top-down imagery).
    The views go through the model as one batch; each view's output is mapped back before averaging.
    d4 needs square images.
    """
    if mode == "none":
        return model(images).float().softmax(dim=1)
    views = [(dims, t) for t in ((False, True) if mode == "d4" else (False,))
             for dims in ((), (-1,), (-2,), (-2, -1))]

    def view(x: torch.Tensor, dims: tuple[int, ...], t: bool) -> torch.Tensor:  # flip, then transpose
        x = x.flip(dims) if dims else x
        return x.transpose(-1, -2) if t else x

    def unview(x: torch.Tensor, dims: tuple[int, ...], t: bool) -> torch.Tensor:  # its inverse
        x = x.transpose(-1, -2) if t else x
        return x.flip(dims) if dims else x

    probs = model(torch.cat([view(images, d, t) for d, t in views])).float().softmax(dim=1)
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
    "PseudoLabels",
    "SegmentationLoss",
    "acceptance_ratio",
    "align_distribution",
    "class_floor_thresholds",
    "class_weights_for",
    "confusion_matrix",
    "ema_decay_at",
    "ema_update",
    "feature_dropout",
    "iou_per_class",
    "lr_factor",
    "mean_iou",
    "pseudo_label_counts",
    "pseudo_labels",
    "st_weight_at",
    "threshold_at",
    "valid_share",
]
