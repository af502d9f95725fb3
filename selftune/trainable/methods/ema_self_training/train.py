"""Method ema_self_training: the mean teacher, with per-class confidence thresholds (the users' V3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from selftune.trainable import augment, functional
from selftune.trainable.heads import agreement, head_logits
from selftune.trainable.methods.base import Method
from selftune.trainable.methods.ema_self_training import SPEC

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig


class EmaSelfTraining(Method):
    """Mean-teacher self-training with per-class confidence thresholds (the users' V3).

    The EMA teacher labels the (weakly augmented) unlabelled batch; pixels below the threshold of
    their predicted class are ignored. With `strong_aug`, the student sees the batch with colour
    jitter, optionally hue, greyscale and blur (UniMatch's set), and CutMix (boxes pasted from a
    shuffled copy of the batch, labels pasted alike).
    Two class-balancing options change what passes the thresholds: `distribution_alignment` rescales the
    teacher's probabilities towards the labelled class frequencies, and `min_accept_ratio` keeps the
    most confident share of every predicted class.
    With `heads` > 1 the model has several heads (`selftune.trainable.heads`): each learns from the labels and the
    pseudo-labels, the teacher's prediction is their mean, and with `head_agreement` a pixel is also rejected unless
    that share of the teacher's heads predict its class.
    """

    spec = SPEC

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.predicted_mean: torch.Tensor | None = None  # running mean of teacher probabilities (alignment)

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        """`Method.label`; with `head_agreement`, pixels fewer of the teacher's heads vote for are rejected too (their
        agreement is on the batch as given, one pass for every head; with `teacher_tta` that pass is one more)."""
        c = self.cfg
        if c.head_agreement <= 0:
            return super().label(teacher, images_u, it, update=update)
        logits = head_logits(teacher, images_u).float()  # [B, N, K, H, W]; N = 1 for a one-head labeller
        probs = (functional.class_probs(logits.mean(dim=1)) if c.teacher_tta == "none"
                 else functional.tta_probs(teacher, images_u, c.teacher_tta))
        pl = self.threshold(probs, it, update=update)
        accepted = pl.accepted & (agreement(logits, pl.predicted) >= c.head_agreement)
        labels = torch.where(accepted, pl.predicted, torch.full_like(pl.predicted, c.ignore_index))
        return functional.PseudoLabels(labels, accepted, pl.confidence, pl.predicted)

    def align(self, probs: torch.Tensor, *, update: bool) -> torch.Tensor:
        """With `distribution_alignment`: `probs` scaled by the labelled class frequencies over the running mean of
        the teacher's (updated unless `update` is False)."""
        if not self.cfg.distribution_alignment:
            return probs
        batch_mean = probs.mean(dim=(0, 2, 3))
        m = self.cfg.da_momentum
        mean = batch_mean if self.predicted_mean is None else (
            m * self.predicted_mean.to(batch_mean) + (1 - m) * batch_mean)
        if update:
            self.predicted_mean = mean
        return functional.align_distribution(probs, self.class_prior, mean)

    def student_view(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """With `strong_aug`: colour jitter, UniMatch's photometric set, then CutMix of images and labels alike."""
        c = self.cfg
        if not c.strong_aug:
            return images, labels
        b, _, h, w = images.shape
        images = augment.color_jitter(images, c.color_jitter, generator)
        images = augment.photometric(images, generator, hue=c.hue_jitter, grayscale_prob=c.grayscale_prob,
                                     blur_prob=c.blur_prob, blur_sigma=c.blur_sigma)
        box = augment.cutmix_boxes(b, h, w, c.cutmix_prob, generator)
        perm = torch.randperm(b, generator=generator)
        return augment.apply_cutmix(images, box, perm), augment.apply_cutmix(labels, box, perm)

    def state_dict(self) -> dict[str, Any]:
        return {"predicted_mean": None if self.predicted_mean is None else self.predicted_mean.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.predicted_mean = state.get("predicted_mean")


__all__ = ["EmaSelfTraining"]
