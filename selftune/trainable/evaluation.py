"""Scoring a model: evaluation images kept in memory, prediction at any size, confusion matrices, mIoU; on a
2-class dataset also precision, recall, F1, IoU of the positive class and AUC (`BINARY_METRICS`).

A binary model's one sigmoid channel becomes two-class logits here, at the evaluation boundary
(`functional.two_class_logits`), so the confusion matrix, mIoU and per-class IoU are computed the same way for
every model. `selectable_metrics` lists the metrics a sweep may optimise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from selftune.data import LabeledDataset
from selftune.trainable.device import DeviceBatch
from selftune.trainable.functional import (
    Loss,
    auc_from_histograms,
    binary_scores,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    roc_histograms,
    tta_probs,
    two_class_logits,
)
from selftune.trainable.model import input_multiple


@dataclass
class EvalBatches:
    """Whole images kept in memory as uint8 [B, 3, H, W] + int64 [B, H, W], same size within a batch."""

    batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(x) for x, _ in self.batches)


def load_eval_batches(dataset: LabeledDataset, limit: int, batch_size: int, *, center_crop: int = 0) -> EvalBatches:
    """The first `limit` images (0: all) of `dataset`, unaugmented (optionally centre-cropped)."""
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    out = EvalBatches()
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(n):
        image, mask = dataset[i]
        if center_crop:
            image, mask = _center_crop(image, mask, center_crop)
        if pending and (image.shape != pending[0][0].shape or len(pending) == batch_size):
            out.batches.append((torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])))
            pending = []
        pending.append((image, mask))
    if pending:
        out.batches.append((torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])))
    return out


def _center_crop(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = mask.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[:, top : top + size, left : left + size], mask[top : top + size, left : left + size]


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: torch.Tensor, to_device: DeviceBatch, autocast: Any, tta: str = "none"
) -> torch.Tensor:
    """float32 logits [B, K, H, W] for uint8 images of any size (padded to the model's multiple); with `tta`
    flip or d4, the log of the class probabilities averaged over those views (`functional.tta_probs`). A binary
    model's one channel comes back as two-class logits (K = 2, `functional.two_class_logits`)."""
    x = to_device.images(images)
    h, w = x.shape[-2:]
    m = input_multiple(model)
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    with autocast():
        logits = model(x) if tta == "none" else tta_probs(model, x, tta).clamp_min(1e-12).log()
    return two_class_logits(logits[..., :h, :w].float())


@dataclass
class Scored:
    """What `score_all` sums over a set of images."""

    cm: torch.Tensor  # int64 [K, K] confusion matrix (rows: truth)
    loss: float  # mean loss per image, NaN without a loss function
    roc: torch.Tensor | None  # int64 [2, bins] `functional.roc_histograms` (2 classes and roc_bins > 0), else None


@torch.no_grad()
def score_all(
    model: torch.nn.Module, data: EvalBatches, num_classes: int, to_device: DeviceBatch, autocast: Any,
    loss_fn: Loss | None = None, tta: str = "none", roc_bins: int = 0,
) -> Scored:
    """The confusion matrix over `data`, the mean loss (with `loss_fn`) and, on 2 classes with `roc_bins` > 0,
    the histograms of the positive-class probability behind the AUC; `tta` as in `predict`."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=to_device.device)
    loss_sum = torch.zeros((), device=to_device.device)
    roc = torch.zeros(2, roc_bins, dtype=torch.int64, device=to_device.device) if num_classes == 2 and roc_bins else None
    for images, masks in data.batches:
        logits = predict(model, images, to_device, autocast, tta)
        y = to_device.masks(masks)
        cm += confusion_matrix(logits.argmax(1), y, num_classes)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y) * len(images)
        if roc is not None:
            roc += roc_histograms(logits.softmax(dim=1)[:, 1], y, roc_bins)
    model.train(was_training)
    mean_loss = float(loss_sum) / max(1, data.num_images) if loss_fn is not None else float("nan")
    return Scored(cm.cpu(), mean_loss, None if roc is None else roc.cpu())


def score(
    model: torch.nn.Module, data: EvalBatches, num_classes: int, to_device: DeviceBatch, autocast: Any,
    loss_fn: Loss | None = None, tta: str = "none",
) -> tuple[torch.Tensor, float]:
    """(confusion matrix [K, K] summed over `data`, mean loss per image or NaN without loss_fn); `tta` as in
    `predict`."""
    scored = score_all(model, data, num_classes, to_device, autocast, loss_fn, tta)
    return scored.cm, scored.loss


BINARY_METRICS = ("precision", "recall", "f1", "pos_iou", "auc")  # val_<m> (and test_<m>) on 2-class datasets


def binary_metrics(scored: Scored, prefix: str) -> dict[str, float]:
    """`prefix`_precision, _recall, _f1, _pos_iou (`functional.binary_scores`) and _auc (NaN without histograms)."""
    b = binary_scores(scored.cm)
    auc = auc_from_histograms(scored.roc) if scored.roc is not None else float("nan")
    values = {"precision": b["precision"], "recall": b["recall"], "f1": b["f1"], "pos_iou": b["iou"], "auc": auc}
    return {f"{prefix}_{m}": values[m] for m in BINARY_METRICS}


def selectable_metrics(names: list[str]) -> list[str]:
    """The metrics a sweep may optimise (all maximised) on a dataset of classes `names` (metric keys): the EMA and
    raw model's val mIoU, each class's val IoU and, on 2 classes, `BINARY_METRICS` on val. Test metrics never."""
    out = ["val_miou", "val_miou_raw"]
    if len(names) == 2:
        out += [f"val_{m}" for m in BINARY_METRICS]
    out += [f"val_iou/{n}" for n in names] + [f"val_iou_raw/{n}" for n in names]
    return out


def evaluate(
    teacher: torch.nn.Module, model: torch.nn.Module, val: EvalBatches, train_subset: EvalBatches,
    loss_fn: Loss, to_device: DeviceBatch, autocast: Any, names: list[str], test: EvalBatches | None = None,
    roc_bins: int = 256,
) -> dict[str, Any]:
    """val mIoU and per-class IoU of the EMA and the raw model, val loss (EMA), train mIoU (EMA); on 2 classes
    the EMA model's val_precision, val_recall, val_f1, val_pos_iou and val_auc (over `roc_bins` bins); with
    `test` (cfg.report_test, benchmarks only: never used to select or stop), test_miou (EMA) and, on 2
    classes, the same binary metrics on test (test_f1, ...)."""
    num_classes = len(names)
    val_ema = score_all(teacher, val, num_classes, to_device, autocast, loss_fn, roc_bins=roc_bins)
    cm_ema, val_loss = val_ema.cm, val_ema.loss
    cm_raw, _ = score(model, val, num_classes, to_device, autocast)
    cm_train, _ = score(teacher, train_subset, num_classes, to_device, autocast)
    iou_ema, iou_raw = iou_per_class(cm_ema), iou_per_class(cm_raw)
    val_miou, train_miou = mean_iou(iou_ema), mean_iou(iou_per_class(cm_train))
    out: dict[str, Any] = {
        "val_miou": val_miou, "val_miou_raw": mean_iou(iou_raw), "val_loss": val_loss,
        "train_miou": train_miou, "train_val_gap": train_miou - val_miou,
    }
    if num_classes == 2:
        out.update(binary_metrics(val_ema, "val"))
    for name, a, b in zip(names, iou_ema.tolist(), iou_raw.tolist(), strict=True):
        out[f"val_iou/{name}"] = a
        out[f"val_iou_raw/{name}"] = b
    if test is not None:
        test_ema = score_all(teacher, test, num_classes, to_device, autocast, roc_bins=roc_bins)
        out["test_miou"] = mean_iou(iou_per_class(test_ema.cm))
        if num_classes == 2:
            out.update(binary_metrics(test_ema, "test"))
    return out


@dataclass
class Scores:
    """A model file scored on one split: per-class IoU (NaN: a class in neither truth nor prediction) and mIoU."""

    split: str
    class_names: tuple[str, ...]
    iou: list[float]
    miou: float
    images: int


def _scoring_setup(path: Any, data_root: Any, split: str, device: str, points: Any) -> tuple[Any, ...]:
    """(model on its device, eval batches of `split`, DeviceBatch, autocast, class names) for an earlier run's EMA
    model; `points` (a PointTargets) overrides the run's own point radius and ring for a point-labelled split."""
    from pathlib import Path

    from selftune.data import read_classes
    from selftune.data.points import PointTargets
    from selftune.errors import DataError
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.device import make_autocast, memory_format_for, resolve_amp, resolve_device
    from selftune.trainable.model import build_model

    cfg, saved_names, weights, _info = ckpt.load_model_file(Path(path))
    classes = read_classes(Path(data_root))
    if saved_names is not None and tuple(saved_names) != classes.names:
        raise DataError(f"{path} was trained on classes {list(saved_names)}, {data_root} has {list(classes.names)}")
    dev = resolve_device(device)
    memory_format = memory_format_for(cfg, dev)
    model = build_model(cfg.replace(encoder_weights=None), classes.num_classes)
    model.load_state_dict(weights)
    model = model.to(dev, memory_format=memory_format).eval()
    points = points or PointTargets(cfg.point_radius, cfg.point_ring)  # default: the run's own targets
    batches = load_eval_batches(LabeledDataset(Path(data_root), split, classes, points=points), 0, cfg.batch_size)
    to_device = DeviceBatch(dev, memory_format, cfg.ignore_index)
    return model, batches, to_device, make_autocast(dev, resolve_amp(cfg, dev)), classes.names


def score_model_file(path: Any, data_root: Any, split: str, *, device: str = "auto", points: Any = None) -> Scores:
    """Score an earlier run's EMA model (best_model_ema.pt, state.pt or a run folder) on `split` of `data_root`,
    the same way every evaluation of the loop scores (no TTA)."""
    model, batches, to_device, autocast, names = _scoring_setup(path, data_root, split, device, points)
    cm, _ = score(model, batches, len(names), to_device, autocast)
    iou = iou_per_class(cm)
    return Scores(split, names, iou.tolist(), mean_iou(iou), batches.num_images)


@torch.no_grad()
def confusions_per_image(path: Any, data_root: Any, split: str, *, device: str = "auto", points: Any = None
                         ) -> tuple[tuple[str, ...], torch.Tensor]:
    """(class names, int64 [images, K, K]): one confusion matrix per image of `split`, in the split's order, for
    the paired image bootstrap of the verdict (`selftune.search.intervals`). `points` as in `score_model_file`:
    the verdict scores every model against the same targets."""
    model, batches, to_device, autocast, names = _scoring_setup(path, data_root, split, device, points)
    k, out = len(names), []
    for images, masks in batches.batches:
        pred = predict(model, images, to_device, autocast).argmax(1)
        y = to_device.masks(masks)
        out += [confusion_matrix(pred[i], y[i], k).cpu() for i in range(len(images))]
    return names, torch.stack(out) if out else torch.zeros(0, k, k, dtype=torch.int64)


__all__ = ["BINARY_METRICS", "EvalBatches", "Scored", "Scores", "binary_metrics", "confusions_per_image", "evaluate",
           "load_eval_batches", "predict", "score", "score_all", "score_model_file", "selectable_metrics"]
