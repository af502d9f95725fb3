"""The interface every training method implements, and its defaults: supervised steps with an EMA copy.

The loop calls a method without knowing which one runs. Per step it asks:

0. `before_step(student, it)`: the method readies the student for step `it` (diverse_head: which heads are frozen,
   their dropout stream); then the labelled loss is `supervised_loss`.
1. `uses_unlabeled(it)`: does this step draw an unlabelled batch? Then `pseudo_batch(labeller, images_u, it,
   generator)` gives the student's input and targets (no gradient) and `unlabeled_loss` (plus `perturbed_loss`,
   UniMatch's feature-perturbation stream, when `fp_weight` > 0) its loss, weighted by `st_weight(it)`.
2. `extra_loss`: a loss of the method's own (s4GAN's feature matching; 0 here).
3. After the optimizer step: `update_teacher` (the EMA) and `after_step` (s4GAN's discriminator step).

At each evaluation: `window_metrics` (the method's own statistics), `keep_if_best` and `patience_counts`
(patience), and the stage hooks of a method that trains in stages (rounds): `round_over`, `is_last` and
`next_round`, whose `NextRound` says which frozen model labels the next stage and where its student starts.
`labeller_weights` is the frozen labeller a resumed run restores, `student_from_labeller` whether the student
starts from `teacher_checkpoint`. `state_dict` / `load_state_dict` round-trip the method's own state in the
checkpoint. The student sees the labelled and the unlabelled images in one forward pass (one set of BatchNorm
statistics per step). A model with a method's heads (`spec.Heads`, `selftune.trainable.heads`) returns every head's
logits, [B, N, K, H, W], in training: the losses here are then the mean of each head's.

What a method needs, which knobs it takes and its config checks are its spec's (`spec.MethodSpec`, no torch), the
class attribute `spec`; the registry (`selftune.trainable.methods`) is the one list of specs. This base class is
method supervised's torch class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from selftune.trainable import functional
from selftune.trainable.heads import mean_over_heads
from selftune.trainable.methods import supervised
from selftune.trainable.methods.spec import MethodSpec

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig


@dataclass
class PseudoBatch:
    """What the student trains on for one unlabelled batch."""

    images: torch.Tensor  # float [B, 3, H, W]: student input (strong-augmented when configured)
    labels: torch.Tensor  # int64 [B, H, W]: targets, ignore_index where rejected
    accepted: torch.Tensor  # int64 [K]: accepted pixels per class (teacher's view, before CutMix)
    predicted: torch.Tensor  # int64 [K]: pixels the teacher assigned to each class
    weak_images: torch.Tensor | None = None  # the teacher's input (before strong aug), for feature perturbation
    weak_labels: torch.Tensor | None = None  # the targets on it (before CutMix)
    # A method that labels from the student's own forward (diverse_head) fills labels, accepted and predicted in
    # `unlabeled_loss`; the loop counts them after it.


@dataclass
class NextRound:
    """A stage switch: the finished stage's best EMA weights label the next one (a frozen model), whose student
    starts from `student` (None: a fresh init, seeded by the round)."""

    labeller: dict[str, torch.Tensor]
    student: dict[str, torch.Tensor] | None


class Method:
    """Base: supervised training with an EMA copy of the model (the reported and kept model), one stage."""

    spec: ClassVar[MethodSpec] = supervised.SPEC  # its name, traits, knobs and checks (each subclass: its own)

    round: int = 1  # the stage being trained (methods without rounds train one)
    labeller_weights: dict[str, torch.Tensor] | None = None  # a frozen labeller of this run's own (a later round)

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        self.cfg = cfg
        self.num_classes = num_classes
        # labelled class frequencies (distribution alignment); uniform when not given
        prior = torch.tensor(class_prior if class_prior is not None else [1.0] * num_classes, dtype=torch.float32)
        self.class_prior = prior / prior.sum().clamp_min(1e-12)
        self._thr_cache: tuple[tuple[tuple[float, ...], str], torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_unlabeled(self) -> bool:
        return self.spec.needs_unlabeled

    # ------------------------------------------------------------------ schedules

    def uses_unlabeled(self, it: int) -> bool:
        return self.needs_unlabeled and it >= self.cfg.st_start_iter

    def lr_factor(self, step: int) -> float:
        """LR multiplier at optimizer step `step`: warmup, then the configured decay over max_iters."""
        c = self.cfg
        return functional.lr_factor(step, warmup_iters=c.warmup_iters, max_iters=c.max_iters, schedule=c.lr_schedule,
                                    poly_power=c.poly_power)

    def patience_counts(self, it: int) -> bool:
        """Does an evaluation after step `it` count towards patience? Not before the LR warmup is over, nor,
        with unlabelled data, before the ST weight has ramped up: the dip after self-training starts is not a
        plateau (ASHA already stops trials that plateau)."""
        c = self.cfg
        ready = c.st_start_iter + c.st_rampup_iters if self.needs_unlabeled else 0
        return it + 1 >= max(c.warmup_iters, ready)

    def st_weight(self, it: int) -> float:
        """Weight of the unlabelled loss at step `it` (0 for methods without unlabelled data)."""
        c = self.cfg
        if not self.needs_unlabeled:
            return 0.0
        return functional.st_weight_at(it, weight=c.st_weight, start_iter=c.st_start_iter,
                                       rampup_iters=c.st_rampup_iters)

    def thresholds_at(self, it: int) -> list[float]:
        """The per-class pseudo-label thresholds in force at step `it`; in binary mode the confidence each class
        needs: 1 - neg_threshold for background, pos_threshold for the positive class (`binary_thresholds`)."""
        c = self.cfg
        if c.binary:
            pos, neg = self.binary_thresholds()
            return [1.0 - neg, pos]
        return functional.threshold_at(
            it, c.thresholds, schedule=c.threshold_schedule, start_offset=c.threshold_start_offset,
            ramp_iters=c.threshold_ramp_iters, start_iter=c.st_start_iter,
        )

    def binary_thresholds(self) -> tuple[float, float]:
        """Binary mode's (pos_threshold, neg_threshold) in force: relaxed by threshold_decay once for each
        earlier pseudo-labelled round (`relaxations`)."""
        c = self.cfg
        return functional.relaxed_thresholds(c.pos_threshold, c.neg_threshold, c.threshold_decay, self.relaxations())

    def relaxations(self) -> int:
        """Pseudo-labelled rounds before the current one: 0 for methods without rounds."""
        return 0

    # ------------------------------------------------------------------ pseudo-labels and losses

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        """The pseudo-labels of `teacher` on the normalised batch `images_u` at step `it`: per-class thresholds
        (and the acceptance floor) on its probabilities after `align`, or binary mode's positive and negative
        thresholds. `update=False` leaves the method's state alone (for the TensorBoard panels, which must show
        what the student trains on without changing it)."""
        return self.threshold(functional.tta_probs(teacher, images_u, self.cfg.teacher_tta), it, update=update)

    def threshold(self, probs: torch.Tensor, it: int, *, update: bool = True) -> functional.PseudoLabels:
        """`label`'s rule on a teacher's class probabilities [B, K, H, W] at step `it`."""
        if self.cfg.binary:  # positive / negative thresholds (no alignment: the config refuses it)
            pos, neg = self.binary_thresholds()
            return functional.binary_pseudo_labels(probs[:, 1], pos, neg, self.cfg.ignore_index)
        return functional.pseudo_labels(self.align(probs, update=update), self.thresholds_tensor(it, probs.device),
                                        self.cfg.ignore_index, self.cfg.min_accept_ratio)

    def align(self, probs: torch.Tensor, *, update: bool) -> torch.Tensor:
        """The teacher's probabilities [B, K, H, W] as thresholded (distribution alignment); here unchanged."""
        return probs

    def thresholds_tensor(self, it: int, device: torch.device) -> torch.Tensor:
        """`thresholds_at(it)` as a tensor on `device`, rebuilt only when the values change."""
        key = (tuple(self.thresholds_at(it)), str(device))
        if self._thr_cache is None or self._thr_cache[0] != key:
            self._thr_cache = (key, torch.tensor(key[0], dtype=torch.float32, device=device))
        return self._thr_cache[1]

    @torch.no_grad()
    def pseudo_batch(
        self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, generator: torch.Generator
    ) -> PseudoBatch:
        """The student's input and targets for the normalised unlabelled batch `images_u`: `label`, then
        `student_view`; every random choice comes from `generator` (seeded per step)."""
        pl = self.label(teacher, images_u, it)
        accepted, predicted = functional.pseudo_label_counts(pl, self.num_classes)
        images, labels = self.student_view(images_u, pl.labels, generator)
        return PseudoBatch(images, labels, accepted, predicted, weak_images=images_u, weak_labels=pl.labels)

    def student_view(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the student sees of the teacher's (images, pseudo-labels): here the same batch."""
        return images, labels

    def supervised_loss(self, logits_l: torch.Tensor, masks: torch.Tensor, loss_fn: functional.SegmentationLoss
                        ) -> torch.Tensor:
        """The labelled batch's loss: `loss_fn`, the mean of each head's for a model with several heads."""
        return mean_over_heads(logits_l, lambda logits: loss_fn(logits, masks))

    def unlabeled_loss(
        self, logits_u: torch.Tensor, batch: PseudoBatch, loss_fn: functional.SegmentationLoss
    ) -> torch.Tensor:
        """The unlabelled loss (before the st_weight ramp): the supervised loss on the pseudo-labels,
        a mean over accepted pixels, or over all pixels with `st_loss_normalization: all_pixels`; the mean of each
        head's for a model with several heads."""
        loss = mean_over_heads(logits_u, lambda logits: loss_fn(logits, batch.labels))
        if self.cfg.st_loss_normalization == "all_pixels":
            loss = loss * functional.valid_share(batch.labels, self.cfg.ignore_index)
        return loss

    def perturbed_loss(
        self, student: torch.nn.Module, batch: PseudoBatch, loss_fn: functional.SegmentationLoss,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """UniMatch's feature-perturbation stream: the student's encoder features of the weak view,
        each channel dropped with `fp_dropout`, decoded and scored against the weak view's pseudo-labels
        (normalised like `unlabeled_loss`). Needs an smp model (encoder, decoder, segmentation_head)."""
        first, *rest = student.encoder(batch.weak_images)  # smp's first "feature" is the input image itself
        features = [first, *(functional.feature_dropout(f, self.cfg.fp_dropout, generator) for f in rest)]
        logits = student.segmentation_head(student.decoder(features))
        return self.unlabeled_loss(logits, replace(batch, images=batch.weak_images, labels=batch.weak_labels), loss_fn)

    # ------------------------------------------------------------------ hooks around the optimizer step

    def before_step(self, student: torch.nn.Module, it: int) -> None:
        """Before step `it`'s forward pass: ready the student (diverse_head freezes some heads and seeds their
        dropout). Default: nothing."""

    def extra_loss(self, images_l: torch.Tensor, masks: torch.Tensor, logits_l: torch.Tensor,
                   images_u: torch.Tensor | None, logits_u: torch.Tensor | None, it: int) -> torch.Tensor:
        """A loss of the method's own added to step `it`'s total (after the ST weight), from the student's logits on
        the labelled batch and, on self-training steps, on the unlabelled one (else None). Default: 0."""
        return torch.zeros((), device=logits_l.device)

    def update_teacher(self, teacher: torch.nn.Module, student: torch.nn.Module, it: int) -> None:
        """After the optimizer step of step `it`: the EMA (with the configured warmup)."""
        decay = functional.ema_decay_at(it, self.cfg.ema_decay, warmup=self.cfg.ema_warmup)
        functional.ema_update(teacher, student, decay)

    def after_step(self, it: int) -> None:
        """After the student's optimizer step of step `it` (s4GAN: the discriminator's own step). Default: nothing."""

    def window_metrics(self) -> dict[str, float]:
        """The method's own metrics since the last evaluation, merged into that evaluation's; starts a new window."""
        return {}

    # ------------------------------------------------------------------ stages (rounds)

    def student_from_labeller(self) -> bool:
        """Does a fresh run's student start from `teacher_checkpoint`'s weights (rounds, round_init warm)? No."""
        return False

    def end(self) -> int:
        """The iteration the run (or, with rounds, the current round) ends at."""
        return self.cfg.max_iters

    def is_last(self) -> bool:
        """Is this the run's last round?"""
        return True

    def round_over(self, iteration: int, bad_evals: int) -> bool:
        """Has the current round ended (so the next one starts)? Methods without rounds have none to end."""
        return False

    def keep_if_best(self, val_miou: float, teacher: torch.nn.Module) -> bool | None:
        """With rounds: keep the EMA model if it is the round's best, and say if it was. None: no rounds, the run's
        best decides."""
        return None

    def next_round(self, iteration: int) -> NextRound:
        """Start the next round at `iteration` (only called when `round_over` and not `is_last`)."""
        raise NotImplementedError(f"method {self.name!r} trains in one round")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


__all__ = ["Method", "NextRound", "PseudoBatch"]
