"""Several decision heads on one smp model: what a method's `MethodSpec.heads` puts on it (diverse_head; the mean
teacher's `heads`).

`replace_head` swaps smp's segmentation head for a `MultiHead` of N heads, each the decoder's last block as DiverseNet
has it: conv3x3 + BatchNorm + ReLU (+ dropout) + conv1x1 to the classes, then the architecture's own upsampling. The
encoder and decoder stay shared. In training mode the model returns every head's logits, [B, N, K, H, W] (the batch
first, so the loop slices it like any logits); in eval mode their mean, [B, K, H, W], so evaluation, export, the
verdict and a frozen labeller read it like a one-head model. `head_logits` gives every head in eval mode too.

Every random draw inside the heads (their dropout) comes from a generator the method sets per step
(`MultiHead.set_generator`), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from torch import nn

from selftune.errors import ConfigError

HEAD_PREFIX = "segmentation_head."  # smp's name of the head in a model's state dict


class HeadDropout(nn.Module):
    """Element dropout (DiverseNet's DT heads: `nn.Dropout(0.5)`) whose mask comes from `generator` when one is set
    (on the input's device; `MultiHead.set_generator`), else from torch's own stream."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def head_block(channels: int, classes: int, dropout: float) -> nn.Sequential:
    """One head: conv3x3 (channels -> channels) + BatchNorm + ReLU (+ `HeadDropout`) + conv1x1 to `classes`, with smp's
    initialisation (the decoder's for the first two, the head's for the last)."""
    first = [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    block = nn.Sequential(*first, *([HeadDropout(dropout)] if dropout > 0 else []), nn.Conv2d(channels, classes, 1))
    initialize_decoder(nn.Sequential(*first))
    initialize_head(block[-1])
    return block


class MultiHead(nn.Module):
    """N heads on one input: every head's logits stacked on dim 1 in training mode (or inside `all_heads`), else
    their mean."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.stacked = False  # `all_heads` sets it: every head's logits in eval mode too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([head(x) for head in self.heads], dim=1)
        return out if self.training or self.stacked else out.mean(dim=1)

    def set_generator(self, generator: torch.Generator | None) -> None:
        """The stream every head's dropout draws its masks from (None: torch's own)."""
        for m in self.modules():
            if isinstance(m, HeadDropout):
                m.generator = generator


def replace_head(model: nn.Module, count: int, dropout: float, arch: str = "") -> None:
    """Replace `model.segmentation_head` (smp's) by a `MultiHead` of `count` heads (`head_block`, each followed by the
    old head's upsampling and activation). The heads draw their init from torch's global stream after the rest of the
    model, so the encoder and decoder start the same with any number of heads."""
    old = model.segmentation_head
    if isinstance(old, nn.Sequential) and len(old) and isinstance(old[0], nn.Conv2d):  # smp's SegmentationHead
        conv, tail = old[0], list(old)[1:]

        def make() -> nn.Module:
            return nn.Sequential(head_block(conv.in_channels, conv.out_channels, dropout), *copy.deepcopy(tail))
    elif isinstance(getattr(old, "head", None), nn.Sequential) and isinstance(old.head[0], nn.Conv2d):  # DPT's
        conv = old.head[0]
        classes = [m for m in old.head if isinstance(m, nn.Conv2d)][-1].out_channels

        def make() -> nn.Module:
            new = copy.deepcopy(old)
            new.head = head_block(conv.in_channels, classes, dropout)
            return new
    else:
        raise ConfigError(f"arch {arch or type(model).__name__!r} has a segmentation head of its own kind "
                          f"({type(old).__name__}) that cannot be split into heads; use heads: 1 or another arch")
    model.segmentation_head = MultiHead([make() for _ in range(count)])


def multi_head(model: nn.Module) -> MultiHead | None:
    """The model's `MultiHead`, or None for a model with smp's one head."""
    head = getattr(model, "segmentation_head", None)
    return head if isinstance(head, MultiHead) else None


@contextmanager
def all_heads(model: nn.Module) -> Iterator[None]:
    """Inside, `model` returns every head's logits in eval mode too (a one-head model: unchanged)."""
    head = multi_head(model)
    if head is None:
        yield
        return
    before, head.stacked = head.stacked, True
    try:
        yield
    finally:
        head.stacked = before


def head_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Every head's logits [B, N, K, H, W] of `model` on `images`, in its mode (N = 1 for smp's one head)."""
    with all_heads(model):
        out = model(images)
    return out if out.dim() == 5 else out.unsqueeze(1)


# ---------------------------------------------------------------------------- pure functions on stacked logits


def head_classes(logits: torch.Tensor) -> torch.Tensor:
    """int64 classes of logits [..., K, H, W] over the channel dim (-3): argmax, or for one binary channel, logit > 0."""
    if logits.shape[-3] == 1:
        return (logits.squeeze(-3) > 0).long()
    return logits.argmax(dim=-3)


def agreement(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """float [B, H, W]: the share of the heads of `logits` [B, N, K, H, W] whose class is `classes` [B, H, W]."""
    return (head_classes(logits) == classes.unsqueeze(1)).float().mean(dim=1)


def mean_over_heads(logits: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`loss(logits)`, or for stacked logits [B, N, K, H, W] the mean over the heads of `loss(logits[:, i])`."""
    if logits.dim() != 5:
        return loss(logits)
    return torch.stack([loss(logits[:, i]) for i in range(logits.shape[1])]).mean()


def load_without_heads(model: nn.Module, weights: dict[str, Any], source: str) -> bool:
    """Load `weights` of a model with smp's one head into `model`, whose heads a method replaced: everything but the
    head, the heads keeping their fresh init (a warm start from a supervised run or a sweep's shared stage). False
    (nothing loaded) when `model` has no `MultiHead`, or `weights` hold heads, or anything but the head differs."""
    if multi_head(model) is None or any(k.startswith(HEAD_PREFIX + "heads.") for k in weights):
        return False
    body = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
    wanted = {k for k in model.state_dict() if not k.startswith(HEAD_PREFIX)}
    if set(body) != wanted:
        return False
    try:
        model.load_state_dict(body, strict=False)
    except RuntimeError:  # a shape differs
        return False
    n = len(multi_head(model).heads)  # type: ignore[union-attr]
    warnings.warn(f"{source} has one segmentation head: its encoder and decoder are loaded, the model's {n} heads "
                  "start from their own init", stacklevel=3)
    return True


__all__ = ["HeadDropout", "MultiHead", "agreement", "all_heads", "head_block", "head_classes", "head_logits",
           "load_without_heads", "mean_over_heads", "multi_head", "replace_head"]
