"""Training methods: each one a small unit beside the others, picked by `cfg.method`.

The loop asks a method four things per step:

1. `uses_unlabeled(it)`: does this step draw an unlabelled batch?
2. `pseudo_batch(teacher, images_u, it, generator)`: the student's unlabelled input and its
   targets (no gradient; the teacher is in eval mode).
3. `unlabeled_loss(logits_u, batch, loss_fn)`: the loss on the student's logits for that input
   (plus `perturbed_loss`, UniMatch's feature-perturbation stream, when `fp_weight` > 0).
4. `update_teacher(teacher, student, it)`: after the optimizer step.

Three more hooks, no-ops here, serve a method that trains something of its own beside the student
(s4GAN's discriminator): `extra_loss` joins the step's loss, `after_step` runs after the optimizer
step, and `window_metrics` adds its statistics to each evaluation's metrics.

The student sees the labelled and the unlabelled images in one forward pass (one set of
BatchNorm statistics per step). A method with state of its own (an s4GAN discriminator and its
optimizer) keeps it in `state_dict` / `load_state_dict`, which the checkpoint round-trips; a
round-based method (train, pseudo-label, retrain) overrides `update_teacher` to copy the student
at round boundaries instead of averaging it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from selftune.errors import ConfigError
from selftune.trainable import augment, functional, s4gan
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


class Method:
    """Base: supervised training with an EMA copy of the model (the reported and kept model)."""

    name: ClassVar[str] = ""
    needs_unlabeled: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        self.cfg = cfg
        self.num_classes = num_classes
        # labelled class frequencies (distribution alignment); uniform when not given
        prior = torch.tensor(class_prior if class_prior is not None else [1.0] * num_classes, dtype=torch.float32)
        self.class_prior = prior / prior.sum().clamp_min(1e-12)
        self._thr_cache: tuple[tuple[tuple[float, ...], str], torch.Tensor] | None = None

    round: int = 1  # methods without rounds train one

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

    def binary_labels(self, probs: torch.Tensor) -> functional.PseudoLabels:
        """Binary mode's pseudo-labels from two-class probabilities [B, 2, H, W] (`functional.binary_pseudo_labels`)."""
        pos, neg = self.binary_thresholds()
        return functional.binary_pseudo_labels(probs[:, 1], pos, neg, self.cfg.ignore_index)

    def thresholds_tensor(self, it: int, device: torch.device) -> torch.Tensor:
        """`thresholds_at(it)` as a tensor on `device`, rebuilt only when the values change."""
        key = (tuple(self.thresholds_at(it)), str(device))
        if self._thr_cache is None or self._thr_cache[0] != key:
            self._thr_cache = (key, torch.tensor(key[0], dtype=torch.float32, device=device))
        return self._thr_cache[1]

    def st_weight(self, it: int) -> float:
        """Weight of the unlabelled loss at step `it` (0 for methods without unlabelled data)."""
        c = self.cfg
        if not self.needs_unlabeled:
            return 0.0
        return functional.st_weight_at(it, weight=c.st_weight, start_iter=c.st_start_iter,
                                       rampup_iters=c.st_rampup_iters)

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        """The pseudo-labels of `teacher` on the normalised batch `images_u` at step `it`: per-class
        thresholds (and the acceptance floor). `update=False` leaves the method's state alone (for the
        TensorBoard panels, which must show what the student trains on without changing it)."""
        probs = functional.tta_probs(teacher, images_u, self.cfg.teacher_tta)
        if self.cfg.binary:
            return self.binary_labels(probs)
        return functional.pseudo_labels(probs, self.thresholds_tensor(it, images_u.device), self.cfg.ignore_index,
                                        self.cfg.min_accept_ratio)

    def pseudo_batch(
        self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, generator: torch.Generator
    ) -> PseudoBatch:
        """The student's input and targets for the normalised unlabelled batch `images_u`; every
        random choice comes from `generator` (seeded per step)."""
        raise NotImplementedError(f"method {self.name!r} does not use unlabelled data")

    def unlabeled_loss(
        self, logits_u: torch.Tensor, batch: PseudoBatch, loss_fn: functional.SegmentationLoss
    ) -> torch.Tensor:
        """The unlabelled loss (before the st_weight ramp): the supervised loss on the pseudo-labels,
        a mean over accepted pixels, or over all pixels with `st_loss_normalization: all_pixels`."""
        loss = loss_fn(logits_u, batch.labels)
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

    def update_teacher(self, teacher: torch.nn.Module, student: torch.nn.Module, it: int) -> None:
        """After the optimizer step of step `it`: the EMA (with the configured warmup)."""
        decay = functional.ema_decay_at(it, self.cfg.ema_decay, warmup=self.cfg.ema_warmup)
        functional.ema_update(teacher, student, decay)

    def extra_loss(self, images_l: torch.Tensor, masks: torch.Tensor, logits_l: torch.Tensor,
                   images_u: torch.Tensor | None, logits_u: torch.Tensor | None, it: int) -> torch.Tensor:
        """A loss of the method's own added to step `it`'s total (after the ST weight), from the student's logits on
        the labelled batch and, on self-training steps, on the unlabelled one (else None). Default: 0."""
        return torch.zeros((), device=logits_l.device)

    def after_step(self, it: int) -> None:
        """After the student's optimizer step of step `it` (s4GAN: the discriminator's own step). Default: nothing."""

    def window_metrics(self) -> dict[str, float]:
        """The method's own metrics since the last evaluation, merged into that evaluation's; starts a new window."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Supervised(Method):
    """The baseline: labelled images only (the EMA model is still kept and scored)."""

    name = "supervised"


class EmaSelfTraining(Method):
    """Mean-teacher self-training with per-class confidence thresholds (the users' V3).

    The EMA teacher labels the (weakly augmented) unlabelled batch; pixels below the threshold of
    their predicted class are ignored. With `strong_aug`, the student sees the batch with colour
    jitter, optionally hue, greyscale and blur (UniMatch's set), and CutMix (boxes pasted from a
    shuffled copy of the batch, labels pasted alike).
    Two class-balancing options change what passes the thresholds: `distribution_alignment` rescales the
    teacher's probabilities towards the labelled class frequencies, and `min_accept_ratio` keeps the
    most confident share of every predicted class.
    """

    name = "ema_self_training"
    needs_unlabeled = True

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.predicted_mean: torch.Tensor | None = None  # running mean of teacher probabilities (alignment)

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        probs = functional.tta_probs(teacher, images_u, self.cfg.teacher_tta)
        if self.cfg.binary:  # positive / negative thresholds (no alignment: the config refuses it)
            return self.binary_labels(probs)
        if self.cfg.distribution_alignment:
            batch_mean = probs.mean(dim=(0, 2, 3))
            m = self.cfg.da_momentum
            mean = batch_mean if self.predicted_mean is None else (
                m * self.predicted_mean.to(batch_mean) + (1 - m) * batch_mean)
            if update:
                self.predicted_mean = mean
            probs = functional.align_distribution(probs, self.class_prior, mean)
        return functional.pseudo_labels(probs, self.thresholds_tensor(it, images_u.device), self.cfg.ignore_index,
                                        self.cfg.min_accept_ratio)

    @torch.no_grad()
    def pseudo_batch(
        self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, generator: torch.Generator
    ) -> PseudoBatch:
        pl = self.label(teacher, images_u, it)
        accepted, predicted = functional.pseudo_label_counts(pl, self.num_classes)
        images, labels = images_u, pl.labels
        if self.cfg.strong_aug:
            b, _, h, w = images.shape
            images = augment.color_jitter(images, self.cfg.color_jitter, generator)
            images = augment.photometric(images, generator, hue=self.cfg.hue_jitter,
                                         grayscale_prob=self.cfg.grayscale_prob, blur_prob=self.cfg.blur_prob,
                                         blur_sigma=self.cfg.blur_sigma)
            box = augment.cutmix_boxes(b, h, w, self.cfg.cutmix_prob, generator)
            perm = torch.randperm(b, generator=generator)
            images = augment.apply_cutmix(images, box, perm)
            labels = augment.apply_cutmix(labels, box, perm)
        return PseudoBatch(images, labels, accepted, predicted, weak_images=images_u, weak_labels=pl.labels)

    def state_dict(self) -> dict[str, Any]:
        return {"predicted_mean": None if self.predicted_mean is None else self.predicted_mean.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.predicted_mean = state.get("predicted_mean")


class Rounds(EmaSelfTraining):
    """Self-training in rounds (Noisy Student; the demo's +4.95 in docs/bench_results/demo_calibration.md).

    Round 1 trains on the labelled images only. Each later round is `EmaSelfTraining` with a frozen
    pseudo-labeller: the previous round's best EMA model. Its student starts from that model
    (`round_init: warm`) or from a fresh init (`fresh`). Every round has its own LR warmup and decay, ST
    start and ramp, threshold schedule and patience, on its own iteration count (`round_iters`); the
    loop's `iteration` keeps counting over all rounds, so ASHA and the budget see the whole pipeline.
    With `teacher_checkpoint`, round 1 is that checkpoint (a sweep's shared first stage) and the run
    trains rounds 2.. from it.

    The loop swaps the models at a round's end (`next_round`); this unit keeps the round's counters
    and the weights that outlive a round (its best EMA model, the labeller), which the checkpoint saves.
    """

    name = "rounds"

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.lengths = cfg.round_lengths()
        self.index = 0  # which of `lengths` is being trained
        self.start = 0  # the iteration this round started at
        self.best = -math.inf  # this round's best val mIoU (patience counts against it)
        self.best_weights: dict[str, torch.Tensor] | None = None  # this round's best EMA model (CPU)
        self.labeller_weights: dict[str, torch.Tensor] | None = None  # set once a round of this run labels

    @property
    def round(self) -> int:
        """The round being trained, 1-based over the whole pipeline (round 1 may be teacher_checkpoint)."""
        return self.index + 1 + (self.cfg.rounds - len(self.lengths))

    def local(self, it: int) -> int:
        return it - self.start

    def end(self) -> int:
        """The iteration this round ends at."""
        return self.start + self.lengths[self.index]

    def is_last(self) -> bool:
        return self.index == len(self.lengths) - 1

    def uses_unlabeled(self, it: int) -> bool:
        return self.round > 1 and self.local(it) >= self.cfg.st_start_iter

    def st_weight(self, it: int) -> float:
        return super().st_weight(self.local(it)) if self.round > 1 else 0.0

    def thresholds_at(self, it: int) -> list[float]:
        return super().thresholds_at(self.local(it))

    def relaxations(self) -> int:
        return max(0, self.round - 2)  # round 2 is the first pseudo-labelled one (round 1 is supervised)

    def lr_factor(self, step: int) -> float:
        """LR multiplier at the round's `step`-th optimizer step: warmup and decay over this round."""
        c = self.cfg
        return functional.lr_factor(step, warmup_iters=c.warmup_iters, max_iters=self.lengths[self.index],
                                    schedule=c.lr_schedule, poly_power=c.poly_power)

    def update_teacher(self, teacher: torch.nn.Module, student: torch.nn.Module, it: int) -> None:
        super().update_teacher(teacher, student, self.local(it))

    def patience_counts(self, it: int) -> bool:
        if self.round == 1:  # supervised: counts once the LR warmup is over
            return self.local(it) + 1 >= self.cfg.warmup_iters
        return super().patience_counts(self.local(it))

    def round_over(self, iteration: int, bad_evals: int) -> bool:
        return iteration >= self.end() or bool(self.cfg.patience and bad_evals >= self.cfg.patience)

    def keep_if_best(self, val_miou: float, teacher: torch.nn.Module) -> bool:
        """Keep the EMA model if it is this round's best so far; True if it was."""
        if val_miou > self.best:
            self.best = val_miou
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in teacher.state_dict().items()}
            return True
        return False

    def advance(self, iteration: int) -> dict[str, torch.Tensor]:
        """Start the next round at `iteration`; returns the finished round's best EMA weights (its labeller)."""
        if self.best_weights is None:
            raise RuntimeError("a round ended without an evaluation")  # the loop evaluates at every round's end
        weights = self.best_weights
        self.index, self.start, self.best, self.best_weights = self.index + 1, iteration, -math.inf, None
        self.labeller_weights = weights
        self.predicted_mean = None  # distribution alignment starts afresh with the new labeller
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "index": self.index, "start": self.start, "best": self.best,
                "best_weights": self.best_weights, "labeller_weights": self.labeller_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.index, self.start, self.best = int(state["index"]), int(state["start"]), float(state["best"])
        self.best_weights, self.labeller_weights = state["best_weights"], state["labeller_weights"]


class S4GAN(Method):
    """s4GAN (the users' V1 and V2, seeds 001-002): a discriminator gates whole unlabelled images and adds feature
    matching. Its parts (the discriminator, its optimizer and schedule, the losses and the gate) are
    `s4gan.Adversary`; this class routes the loop's hooks to it. Pseudo-labels are the labeller's argmax (with
    `teacher_tta`), not the per-class pixel thresholds: `thresholds_at` reports the image gate for every class."""

    name = "s4gan"
    needs_unlabeled = True

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.adversary = s4gan.Adversary(cfg, num_classes)

    def st_weight(self, it: int) -> float:
        c = self.cfg
        return s4gan.st_weight_at(it, weight=c.st_weight, start_iter=c.st_start_iter, rampup_iters=c.st_rampup_iters,
                                  start_fraction=c.st_weight_start)

    def thresholds_at(self, it: int) -> list[float]:
        return [self.adversary.threshold_at(it)] * self.num_classes

    def patience_counts(self, it: int) -> bool:
        return super().patience_counts(it) and it + 1 >= self.cfg.d_warmup_iters

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        return self.adversary.label(teacher, images_u, it, update=update)

    @torch.no_grad()
    def pseudo_batch(
        self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, generator: torch.Generator
    ) -> PseudoBatch:
        pl = self.label(teacher, images_u, it)
        accepted, predicted = functional.pseudo_label_counts(pl, self.num_classes)
        return PseudoBatch(images_u, pl.labels, accepted, predicted, weak_images=images_u, weak_labels=pl.labels)

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


METHODS: dict[str, type[Method]] = {
    Supervised.name: Supervised,
    EmaSelfTraining.name: EmaSelfTraining,
    Rounds.name: Rounds,
    S4GAN.name: S4GAN,
}


def create_method(cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None) -> Method:
    """The method named by `cfg.method`; `class_prior` is the labelled class frequencies."""
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {cfg.method!r}") from None
    return cls(cfg, num_classes, class_prior)


__all__ = ["METHODS", "S4GAN", "EmaSelfTraining", "Method", "PseudoBatch", "Rounds", "Supervised", "create_method"]
