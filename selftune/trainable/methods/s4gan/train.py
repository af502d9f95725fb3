"""Method s4gan (Mittal, Tatarchenko and Brox, 2019; the users' V1 and V2, seeds 001-002) as one unit.

A discriminator sees an image concatenated with a class-probability map: real = image + one-hot
ground truth, fake = image + the segmentation network's softmax. It is trained with binary
cross-entropy (on logits, so it is autocast-safe) by its own Adam optimizer and LR schedule. It
gives the segmentation network two things:

- feature matching: the L1 distance between its mean features of the real and of the fake inputs,
  weighted by `lambda_fm`, joins the network's loss (gradients reach the network through the fake
  input only);
- the image gate for self-training: an unlabelled image's argmax pseudo-label (from the loop's
  labeller) is used only when the discriminator's confidence on (image, softmax) exceeds
  `threshold_st`; a rejected image's labels are all `ignore_index`.

V2's additions are config fields: `d_warmup_iters` (no feature matching and no discriminator step
before it), `threshold_st_schedule` linear (from `threshold_st_start` at `st_start_iter` to
`threshold_st` at the last step), `st_weight_start` (the ST weight's ramp starts at this fraction);
gradient clipping, the EMA model and poly or cosine decay are the loop's own (`grad_clip`,
`ema_decay`, `lr_schedule`).

Here: the discriminator, the losses and schedules as small pure functions; `Adversary`, the
discriminator with its optimizer and what it decides; and `S4GAN`, the method, which routes the loop's
hooks to it. Its knobs, checks and search piece are the package's `__init__` (its spec).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from selftune.data import derive_seed
from selftune.trainable import functional
from selftune.trainable.methods.base import Method
from selftune.trainable.methods.s4gan import SPEC

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig

# The rest of the discriminator and its optimizer are s4GAN's (its width is `d_width`): 4x4 stride-2
# convolutions, LeakyReLU 0.2, channel dropout 0.5 after the first three, Adam with betas (0.9, 0.99).
D_DROPOUT = 0.5
D_BETAS = (0.9, 0.99)
# The discriminator's random stream (its init, its dropout masks), beside loop.py's streams 0-3.
STREAM_DISCRIMINATOR = 4
_INIT, _FM_PASS, _D_STEP = 0, 1, 2


class Discriminator(nn.Module):
    """s4GAN's discriminator: four 4x4 stride-2 convolutions with LeakyReLU(0.2) and channel dropout, a global
    average pool (any input of at least 16 px) and a linear layer to one logit per image.

    Args:
        in_channels: classes + 3 (the probability map and the RGB image).
        width: channels of the first convolution; each next one doubles them.
        dropout: channel dropout rate after each convolution; its masks come from the `generator`
            given to `forward` (none given: no dropout), so runs resume exactly.
    """

    def __init__(self, in_channels: int, width: int = 64, dropout: float = D_DROPOUT) -> None:
        super().__init__()
        channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=4, stride=2, padding=1)
                                   for a, b in itertools.pairwise(channels))
        self.fc = nn.Linear(channels[-1], 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> (logits [B], features [B, 8*width]: the pooled last convolution, for feature matching)."""
        for i, conv in enumerate(self.convs):
            x = F.leaky_relu(conv(x), 0.2)
            if generator is not None and i < len(self.convs) - 1:  # s4GAN drops after the first three
                x = functional.feature_dropout(x, self.dropout, generator)
        features = x.mean(dim=(2, 3))
        return self.fc(features).squeeze(1), features


# ---------------------------------------------------------------------------- pure functions


def one_hot(masks: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """float32 [B, K, H, W] one-hot of int masks [B, H, W]; a pixel outside [0, K) (ignore_index) is all zeros."""
    valid = (masks >= 0) & (masks < num_classes)
    hot = F.one_hot(torch.where(valid, masks, 0).long(), num_classes).permute(0, 3, 1, 2)
    return (hot * valid.unsqueeze(1)).float()


def disc_input(images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The discriminator's input: the probability map [B, K, H, W] and the images [B, 3, H, W], K + 3 channels."""
    return torch.cat([probs, images.to(probs.dtype)], dim=1)


def feature_matching_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """mean |mean over the batch of `real` features - mean over the batch of `fake` features| (float32 scalar)."""
    return (real.float().mean(dim=0) - fake.float().mean(dim=0)).abs().mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """(BCE(real, 1) + BCE(fake, 0)) / 2 on logits (float32; with-logits BCE is safe under autocast)."""
    real, fake = real_logits.float(), fake_logits.float()
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))) / 2


def image_gate(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [B]: the images whose discriminator confidence (a probability, [B]) exceeds `threshold` (s4GAN's >)."""
    return confidence > threshold


def gated_pseudo_labels(probs: torch.Tensor, keep: torch.Tensor, ignore_index: int) -> functional.PseudoLabels:
    """Argmax pseudo-labels of `probs` [B, K, H, W] where `keep` [B] holds, else `ignore_index` for the whole image."""
    confidence, predicted = probs.max(dim=1)
    accepted = keep.view(-1, 1, 1).expand_as(predicted)
    labels = torch.where(accepted, predicted, torch.full_like(predicted, ignore_index))
    return functional.PseudoLabels(labels, accepted, confidence, predicted)


def gate_threshold_at(it: int, *, threshold: float, start: float, schedule: str, start_iter: int,
                      max_iters: int) -> float:
    """The image gate's threshold at step `it`: constant `threshold`, or linear from `start` at `start_iter` to
    `threshold` at the run's last step, `max_iters` - 1 (V2: 0.05 -> 0.20 over training)."""
    if schedule == "constant":
        return threshold
    frac = min(1.0, max(0.0, (it - start_iter) / max(1, max_iters - 1 - start_iter)))
    return start + (threshold - start) * frac


def st_weight_at(it: int, *, weight: float, start_iter: int, rampup_iters: int, start_fraction: float) -> float:
    """`functional.st_weight_at`, with the ramp starting at `start_fraction` of `weight` instead of 0 (V2: 0.1 -> 1.0);
    0 before `start_iter`."""
    ramp = functional.st_weight_at(it, weight=1.0, start_iter=start_iter, rampup_iters=rampup_iters)
    if it < start_iter:
        return 0.0
    return weight * (start_fraction + (1.0 - start_fraction) * ramp)


def d_lr_at(it: int, *, lr_d: float, warmup_iters: int, max_iters: int, schedule: str, poly_power: float) -> float:
    """The discriminator's LR at step `it`: 0 during its warmup, then `lr_d` decaying like the network's schedule
    (no LR warmup of its own) from `warmup_iters` to `max_iters`."""
    if it < warmup_iters:
        return 0.0
    return lr_d * functional.lr_factor(it - warmup_iters, warmup_iters=0, max_iters=max_iters - warmup_iters,
                                       schedule=schedule, poly_power=poly_power)


# ---------------------------------------------------------------------------- the adversary


class Adversary:
    """The discriminator with its optimizer and schedule, and what it decides for the segmentation network.

    Built lazily on the device of the first tensors it sees (the loop's device; no loop change needed), from
    its own seeded stream. Per step: `label` gates the unlabelled batch, `feature_matching` gives the
    network's extra loss and keeps the detached real and fake inputs, `step` trains on them after the
    network's optimizer step. `window_metrics` reports since the last evaluation and starts a new window.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        self.cfg, self.num_classes = cfg, num_classes
        self.disc: Discriminator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.saved: dict[str, Any] | None = None  # a checkpoint's state, loaded when the discriminator is built
        self.stash: tuple[torch.Tensor, torch.Tensor] | None = None  # (real, fake) inputs of this step, detached
        self.last_it = 0
        self._new_window()

    def _new_window(self) -> None:
        # sums stay on the device (no host sync per step) until window_metrics reads them
        self.fm_sum: Any = 0.0
        self.d_sum: Any = 0.0
        self.images: Any = 0  # images accepted by the gate
        self.confidence_sum: Any = 0.0
        self.fm_steps = self.d_steps = self.batches = self.seen = 0

    # ------------------------------------------------------------------ schedules

    def threshold_at(self, it: int) -> float:
        c = self.cfg
        return gate_threshold_at(it, threshold=c.threshold_st, start=c.threshold_st_start,
                                 schedule=c.threshold_st_schedule, start_iter=c.st_start_iter, max_iters=c.max_iters)

    def lr_at(self, it: int) -> float:
        c = self.cfg
        return d_lr_at(it, lr_d=c.lr_d, warmup_iters=c.d_warmup_iters, max_iters=c.max_iters, schedule=c.lr_schedule,
                       poly_power=c.poly_power)

    def _generator(self, kind: int, it: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.cfg.seed, STREAM_DISCRIMINATOR, kind, it))

    # ------------------------------------------------------------------ the discriminator

    def discriminator(self, device: torch.device) -> Discriminator:
        """The discriminator on `device`, built (and a checkpoint's state loaded into it) on first use."""
        if self.disc is None:
            with torch.random.fork_rng(devices=[]):  # its init does not move the global stream
                torch.manual_seed(derive_seed(self.cfg.seed, STREAM_DISCRIMINATOR, _INIT))
                disc = Discriminator(self.num_classes + 3, width=self.cfg.d_width)
            disc = disc.to(device).requires_grad_(False)  # gradients only in its own step
            optimizer = torch.optim.Adam(disc.parameters(), lr=self.cfg.lr_d, betas=D_BETAS)
            if self.saved:
                disc.load_state_dict(self.saved["discriminator"])
                optimizer.load_state_dict(self.saved["optimizer"])  # moves its state to the parameters' device
            self.disc, self.optimizer, self.saved = disc, optimizer, None
        return self.disc

    @torch.no_grad()
    def label(self, labeller: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        """The labeller's argmax pseudo-labels on `images_u`, whole images rejected where the discriminator's
        confidence does not exceed the gate's threshold at `it`. `update` counts them in the window."""
        probs = functional.tta_probs(labeller, images_u, self.cfg.teacher_tta)
        logits, _ = self.discriminator(images_u.device)(disc_input(images_u, probs))  # no dropout: its judgement
        confidence = logits.float().sigmoid()
        keep = image_gate(confidence, self.threshold_at(it))
        if update:
            self.images = self.images + keep.sum()
            self.confidence_sum = self.confidence_sum + confidence.sum()
            self.batches += 1
            self.seen += len(keep)
        return gated_pseudo_labels(probs, keep, self.cfg.ignore_index)

    def feature_matching(self, images_l: torch.Tensor, masks: torch.Tensor, logits_l: torch.Tensor,
                         images_u: torch.Tensor | None, logits_u: torch.Tensor | None, it: int) -> torch.Tensor:
        """lambda_fm * the feature-matching loss of step `it` (0 during the discriminator's warmup).

        Real: the labelled images with their one-hot masks. Fake: the unlabelled images with the network's
        softmax on them, or, on steps without unlabelled data, the labelled images with its softmax on those.
        """
        self.last_it = it
        if it < self.cfg.d_warmup_iters:
            return torch.zeros((), device=logits_l.device)
        disc = self.discriminator(logits_l.device)
        real = disc_input(images_l, one_hot(masks, self.num_classes, self.cfg.ignore_index))
        fake_images, fake_logits = (images_l, logits_l) if images_u is None or logits_u is None else (images_u, logits_u)
        fake = disc_input(fake_images, fake_logits.float().softmax(dim=1))
        gen = self._generator(_FM_PASS, it)
        with torch.no_grad():
            _, real_features = disc(real, gen)
        _, fake_features = disc(fake, gen)
        loss = feature_matching_loss(real_features, fake_features)
        self.stash = (real.detach(), fake.detach())
        self.fm_sum = self.fm_sum + loss.detach()
        self.fm_steps += 1
        return self.cfg.lambda_fm * loss

    def step(self, it: int) -> None:
        """The discriminator's own step on this step's stashed inputs (none during its warmup), in float32."""
        if self.stash is None:
            return
        (real, fake), self.stash = self.stash, None
        disc, optimizer = self.discriminator(real.device), self.optimizer
        assert optimizer is not None
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(it)
        gen = self._generator(_D_STEP, it)
        disc.requires_grad_(True)
        with torch.autocast(real.device.type, enabled=False):
            fake_logits, _ = disc(fake.float(), gen)
            real_logits, _ = disc(real.float(), gen)
            loss = discriminator_loss(real_logits, fake_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        disc.requires_grad_(False)
        self.d_sum = self.d_sum + loss.detach()
        self.d_steps += 1

    # ------------------------------------------------------------------ records and state

    def window_metrics(self) -> dict[str, float]:
        """Since the last call: loss_fm (unweighted, mean per adversarial step), loss_d (mean per discriminator
        step), st_images (images the gate accepted, mean per unlabelled batch: the seeds' ST_Count),
        d_confidence (the discriminator's mean confidence on unlabelled images); threshold_st and lr_d at the
        last step. Then a new window starts."""
        out = {
            "loss_fm": float(self.fm_sum) / max(1, self.fm_steps),
            "loss_d": float(self.d_sum) / max(1, self.d_steps),
            "st_images": float(self.images) / max(1, self.batches),
            "d_confidence": float(self.confidence_sum) / max(1, self.seen),
            "threshold_st": self.threshold_at(self.last_it),
            "lr_d": self.lr_at(self.last_it),
        }
        self._new_window()
        return out

    def state_dict(self) -> dict[str, Any]:
        """The discriminator's weights and its optimizer's state on the CPU (torch.load(weights_only=True) reads
        them back); a checkpoint's state not yet loaded is passed on; {} before the first use."""
        if self.disc is None or self.optimizer is None:
            return dict(self.saved or {})
        return {"discriminator": {k: v.detach().to("cpu", copy=True) for k, v in self.disc.state_dict().items()},
                "optimizer": _to_cpu(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's state until the discriminator is built on the loop's device (or load it now)."""
        self.saved = dict(state) if state else None
        if self.disc is not None and self.saved:
            device = next(self.disc.parameters()).device
            self.disc, self.optimizer = None, None
            self.discriminator(device)


class S4GAN(Method):
    """s4GAN (the users' V1 and V2, seeds 001-002): a discriminator gates whole unlabelled images and adds feature
    matching. Its parts (the discriminator, its optimizer and schedule, the losses and the gate) are `Adversary`;
    this class routes the loop's hooks to it. Pseudo-labels are the labeller's argmax (with `teacher_tta`), not the
    per-class pixel thresholds: `thresholds_at` reports the image gate for every class."""

    spec = SPEC

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.adversary = Adversary(cfg, num_classes)

    def st_weight(self, it: int) -> float:
        c = self.cfg
        return st_weight_at(it, weight=c.st_weight, start_iter=c.st_start_iter, rampup_iters=c.st_rampup_iters,
                            start_fraction=c.st_weight_start)

    def thresholds_at(self, it: int) -> list[float]:
        return [self.adversary.threshold_at(it)] * self.num_classes

    def patience_counts(self, it: int) -> bool:
        return super().patience_counts(it) and it + 1 >= self.cfg.d_warmup_iters

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        return self.adversary.label(teacher, images_u, it, update=update)

    def extra_loss(self, images_l: torch.Tensor, masks: torch.Tensor, logits_l: torch.Tensor,
                   images_u: torch.Tensor | None, logits_u: torch.Tensor | None, it: int) -> torch.Tensor:
        return self.adversary.feature_matching(images_l, masks, logits_l, images_u, logits_u, it)

    def after_step(self, it: int) -> None:
        self.adversary.step(it)

    def window_metrics(self) -> dict[str, float]:
        return self.adversary.window_metrics()

    def state_dict(self) -> dict[str, Any]:
        return self.adversary.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adversary.load_state_dict(state)


def _to_cpu(obj: Any) -> Any:
    """A copy of nested dicts, lists and tuples with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


__all__ = [
    "S4GAN",
    "Adversary",
    "Discriminator",
    "d_lr_at",
    "disc_input",
    "discriminator_loss",
    "feature_matching_loss",
    "gate_threshold_at",
    "gated_pseudo_labels",
    "image_gate",
    "one_hot",
    "st_weight_at",
]
