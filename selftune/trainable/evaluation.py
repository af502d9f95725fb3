"""Scoring a model: evaluation images kept in memory, prediction at any size, confusion matrices, mIoU."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from selftune.data import LabeledDataset
from selftune.trainable.device import DeviceBatch
from selftune.trainable.functional import (
    SegmentationLoss,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    tta_probs,
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
    flip or d4, the log of the class probabilities averaged over those views (`functional.tta_probs`)."""
    x = to_device.images(images)
    h, w = x.shape[-2:]
    m = input_multiple(model)
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    with autocast():
        logits = model(x) if tta == "none" else tta_probs(model, x, tta).clamp_min(1e-12).log()
    return logits[..., :h, :w].float()


@torch.no_grad()
def score(
    model: torch.nn.Module, data: EvalBatches, num_classes: int, to_device: DeviceBatch, autocast: Any,
    loss_fn: SegmentationLoss | None = None, tta: str = "none",
) -> tuple[torch.Tensor, float]:
    """(confusion matrix [K, K] summed over `data`, mean loss per image or NaN without loss_fn); `tta` as in
    `predict`."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=to_device.device)
    loss_sum = torch.zeros((), device=to_device.device)
    for images, masks in data.batches:
        logits = predict(model, images, to_device, autocast, tta)
        y = to_device.masks(masks)
        cm += confusion_matrix(logits.argmax(1), y, num_classes)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y) * len(images)
    model.train(was_training)
    mean_loss = float(loss_sum) / max(1, data.num_images) if loss_fn is not None else float("nan")
    return cm.cpu(), mean_loss


def evaluate(
    teacher: torch.nn.Module, model: torch.nn.Module, val: EvalBatches, train_subset: EvalBatches,
    loss_fn: SegmentationLoss, to_device: DeviceBatch, autocast: Any, names: list[str], test: EvalBatches | None = None,
) -> dict[str, Any]:
    """val mIoU and per-class IoU of the EMA and the raw model, val loss (EMA), train mIoU (EMA);
    with `test` (cfg.report_test, benchmarks only: never used to select or stop), test_miou (EMA)."""
    num_classes = len(names)
    cm_ema, val_loss = score(teacher, val, num_classes, to_device, autocast, loss_fn)
    cm_raw, _ = score(model, val, num_classes, to_device, autocast)
    cm_train, _ = score(teacher, train_subset, num_classes, to_device, autocast)
    iou_ema, iou_raw = iou_per_class(cm_ema), iou_per_class(cm_raw)
    val_miou, train_miou = mean_iou(iou_ema), mean_iou(iou_per_class(cm_train))
    out: dict[str, Any] = {
        "val_miou": val_miou, "val_miou_raw": mean_iou(iou_raw), "val_loss": val_loss,
        "train_miou": train_miou, "train_val_gap": train_miou - val_miou,
    }
    for name, a, b in zip(names, iou_ema.tolist(), iou_raw.tolist(), strict=True):
        out[f"val_iou/{name}"] = a
        out[f"val_iou_raw/{name}"] = b
    if test is not None:
        out["test_miou"] = mean_iou(iou_per_class(score(teacher, test, num_classes, to_device, autocast)[0]))
    return out


@dataclass
class Scores:
    """A model file scored on one split: per-class IoU (NaN: a class in neither truth nor prediction) and mIoU."""

    split: str
    class_names: tuple[str, ...]
    iou: list[float]
    miou: float
    images: int


def score_model_file(path: Any, data_root: Any, split: str, *, device: str = "auto") -> Scores:
    """Score an earlier run's EMA model (best_model_ema.pt, state.pt or a run folder) on `split` of `data_root`,
    the same way every evaluation of the loop scores (no TTA)."""
    from pathlib import Path

    from selftune.data import read_classes
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
    batches = load_eval_batches(LabeledDataset(Path(data_root), split, classes), 0, cfg.batch_size)
    to_device = DeviceBatch(dev, memory_format, cfg.ignore_index)
    cm, _ = score(model, batches, classes.num_classes, to_device, make_autocast(dev, resolve_amp(cfg, dev)))
    iou = iou_per_class(cm)
    return Scores(split, classes.names, iou.tolist(), mean_iou(iou), batches.num_images)


__all__ = ["EvalBatches", "Scores", "evaluate", "load_eval_batches", "predict", "score", "score_model_file"]
