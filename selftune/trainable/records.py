"""What a run writes besides checkpoints: the window of training statistics, metrics.jsonl, TensorBoard."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from selftune.trainable import checkpoint as ckpt
from selftune.trainable.device import DeviceBatch
from selftune.trainable.evaluation import EvalBatches, predict
from selftune.trainable.functional import acceptance_ratio
from selftune.trainable.methods.base import Method
from selftune.trainable.model import input_multiple

PANEL_IMAGES = 4  # validation images in the TensorBoard panel


@dataclass
class Window:
    """What happened since the last evaluation (loss sums, pseudo-label counts)."""

    accepted: torch.Tensor  # int64 [K] accepted pseudo-label pixels per class
    predicted: torch.Tensor  # int64 [K] unlabelled pixels the teacher assigned to each class
    loss_sup: float = 0.0
    loss_st: float = 0.0
    steps: int = 0
    st_steps: int = 0  # steps that used unlabelled data
    seconds: float = 0.0  # wall time in training steps (data loading included, evaluation not)
    unlabeled_skipped: int = 0  # unlabelled draws whose file could not be read (another file took its place)

    @classmethod
    def empty(cls, num_classes: int, device: torch.device) -> Window:
        zeros = torch.zeros(num_classes, dtype=torch.int64, device=device)
        return cls(zeros, zeros.clone())

    def state_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted.cpu(), "predicted": self.predicted.cpu(), "loss_sup": self.loss_sup,
                "loss_st": self.loss_st, "steps": self.steps, "st_steps": self.st_steps, "seconds": self.seconds,
                "unlabeled_skipped": self.unlabeled_skipped}

    def count_pseudo_labels(self, accepted: torch.Tensor, predicted: torch.Tensor) -> None:
        """Add one batch's accepted and predicted pixels per class."""
        self.accepted += accepted
        self.predicted += predicted

    def add_step(self, loss_sup: float, loss_st: float, self_training: bool, seconds: float) -> None:
        """Count one optimizer step."""
        self.loss_sup += loss_sup
        self.loss_st += loss_st
        self.steps += 1
        self.st_steps += self_training
        self.seconds += seconds

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Window:
        return cls(state["accepted"].to(device), state["predicted"].to(device), float(state["loss_sup"]),
                   float(state["loss_st"]), int(state["steps"]), int(state["st_steps"]), float(state["seconds"]),
                   int(state.get("unlabeled_skipped", 0)))


def window_metrics(
    window: Window, names: list[str], thresholds: list[float], st_weight: float, lr: float
) -> dict[str, Any]:
    """Training-side metrics since the last evaluation, with the schedules' last values."""
    accepted, predicted = window.accepted.cpu(), window.predicted.cpu()
    steps = max(1, window.steps)
    out: dict[str, Any] = {
        "lr": lr, "loss_sup": window.loss_sup / steps, "loss_st": window.loss_st / max(1, window.st_steps),
        "st_weight": st_weight,
        "st_count": int(accepted.sum()), "st_ratio": float(acceptance_ratio(accepted.sum(), predicted.sum())),
        "step_seconds": window.seconds / steps, "unlabeled_skipped": window.unlabeled_skipped,
    }
    ratios = acceptance_ratio(accepted, predicted).tolist()
    for name, count, ratio, thr in zip(names, accepted.tolist(), ratios, thresholds, strict=True):
        out[f"st_count/{name}"] = count
        out[f"st_ratio/{name}"] = ratio
        out[f"threshold/{name}"] = thr
    return out


def metric_names(class_names: tuple[str, ...] | list[str]) -> list[str]:
    """Class names for metric keys: lower case [a-z0-9_] ("Badan Air" -> "badan_air"), unique."""
    out: list[str] = []
    for i, name in enumerate(class_names):
        key = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or f"class_{i}"
        out.append(key if key not in out else f"{key}_{i}")
    return out


def record(metrics: dict[str, Any], out_dir: Path, writer: Any) -> None:
    """One line in metrics.jsonl (the metrics as reported); every number as a TensorBoard scalar."""
    with open(out_dir / ckpt.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(metrics) + "\n")
    add_scalars(metrics, writer)


def add_scalars(metrics: dict[str, Any], writer: Any) -> None:
    """Every number of an evaluation's metrics as a TensorBoard scalar at its iteration."""
    for key, value in metrics.items():
        if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, metrics["iteration"])


def summary_writer(out_dir: Path, purge_step: int | None) -> Any:
    """TensorBoard's writer on the run folder; on resume, events past `purge_step` are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir), purge_step=purge_step)


@torch.no_grad()
def image_panel(
    teacher: torch.nn.Module, labeller: torch.nn.Module, method: Method, it: int, val: EvalBatches,
    palette: torch.Tensor, to_device: DeviceBatch, autocast: Any, class_names: list[str] | None = None,
) -> torch.Tensor:
    """uint8 [3, HEADER + N*H + legend, 4*W]: a row of column labels, then rows of input | truth | pseudo-label
    (rejected pixels in the last palette colour) | prediction, then a legend of the class colours.

    The pseudo-labels are the method's own (`method.label`, the same thresholds, acceptance floor,
    alignment and teacher TTA the student trains on at step `it`) from `labeller`; the prediction is
    the EMA model's (`teacher`).
    """
    images, masks = val.batches[0][0][:PANEL_IMAGES], val.batches[0][1][:PANEL_IMAGES]
    k = palette.shape[0] - 1
    prediction = predict(teacher, images, to_device, autocast).argmax(1)
    x = to_device.images(images)
    h, w = x.shape[-2:]
    m = input_multiple(labeller)
    x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
    with autocast():
        labels = method.label(labeller, x, it, update=False).labels[..., :h, :w]
    labels = torch.where(labels == method.cfg.ignore_index, k, labels)
    masks = masks.clone()
    masks[(masks < 0) | (masks >= k)] = k

    def paint(labels: torch.Tensor) -> torch.Tensor:  # [N, H, W] -> [N, 3, H, W]
        return palette[labels.cpu()].permute(0, 3, 1, 2)

    row = torch.cat([images, paint(masks), paint(labels), paint(prediction)], dim=3)  # along width
    body = torch.cat(list(row), dim=1)  # stack the images vertically
    names = [*(class_names or [str(i) for i in range(k)]), "ignored / rejected"]
    header = text_strip([("input", w), ("truth", w), ("pseudo-label", w), ("prediction", w)])
    return torch.cat([header, body, legend_strip(palette, names, 4 * w)], dim=1)


HEADER = 14  # pixels of the column-label row


def text_strip(cells: list[tuple[str, int]], colours: list[tuple[int, int, int]] | None = None) -> torch.Tensor:
    """uint8 [3, HEADER, sum of widths]: each cell's text on dark grey, left-aligned in its width (cut to fit);
    with `colours`, a swatch of that colour before each text."""
    import numpy as np
    from PIL import Image, ImageDraw

    width = sum(cw for _, cw in cells)
    img = Image.new("RGB", (width, HEADER), (40, 40, 40))
    draw = ImageDraw.Draw(img)
    x = 0
    for i, (text, cw) in enumerate(cells):
        tx = x + 2
        if colours is not None:
            draw.rectangle([x + 2, 3, x + 10, 11], fill=colours[i], outline=(255, 255, 255))
            tx = x + 13
        cell = Image.new("RGB", (max(1, cw - (tx - x)), HEADER), (40, 40, 40))
        ImageDraw.Draw(cell).text((0, 1), text, fill=(240, 240, 240))
        img.paste(cell, (tx, 0))
        x += cw
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def legend_strip(palette: torch.Tensor, names: list[str], width: int, cell: int = 110) -> torch.Tensor:
    """uint8 [3, rows * HEADER, width]: one swatch and name per palette colour, as many per row as fit."""
    per_row = max(1, width // cell)
    rows = []
    colours = [tuple(int(v) for v in c) for c in palette.tolist()]
    for start in range(0, len(names), per_row):
        chunk = list(range(start, min(start + per_row, len(names))))
        cells = [(names[i], cell) for i in chunk]
        strip = text_strip(cells, [colours[i] for i in chunk])  # type: ignore[misc]
        pad = width - strip.shape[2]
        strip = torch.nn.functional.pad(strip, (0, pad), value=40) if pad > 0 else strip[:, :, :width]
        rows.append(strip)
    return torch.cat(rows, dim=1)


__all__ = ["PANEL_IMAGES", "Window", "add_scalars", "image_panel", "metric_names", "record", "summary_writer", "window_metrics"]
