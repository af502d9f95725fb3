"""Method rounds' torch class: self-training in rounds (Noisy Student), each round pseudo-labelled by the last one's
best. Its spec, knobs and round arithmetic are the package's `__init__`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from selftune.trainable import functional
from selftune.trainable.methods.base import NextRound
from selftune.trainable.methods.ema_self_training.train import EmaSelfTraining
from selftune.trainable.methods.rounds import SPEC, round_lengths

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig


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

    spec = SPEC

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.lengths = round_lengths(cfg)
        self.index = 0  # which of `lengths` is being trained
        self.start = 0  # the iteration this round started at
        self.best = -math.inf  # this round's best val mIoU (patience counts against it)
        self.best_weights: dict[str, torch.Tensor] | None = None  # this round's best EMA model (CPU)
        self.labeller_weights: dict[str, torch.Tensor] | None = None  # set once a round of this run labels

    @property
    def round(self) -> int:  # type: ignore[override]
        """The round being trained, 1-based over the whole pipeline (round 1 may be teacher_checkpoint)."""
        return self.index + 1 + (self.cfg.rounds - len(self.lengths))

    def local(self, it: int) -> int:
        return it - self.start

    def student_from_labeller(self) -> bool:
        """round_init warm: round 2's student starts from round 1 (`teacher_checkpoint`); fresh: it does not."""
        return self.cfg.round_init == "warm"

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

    def next_round(self, iteration: int) -> NextRound:
        """Start the next round at `iteration`: the finished round's best EMA weights label it, and its student
        starts from them (round_init warm) or afresh (fresh)."""
        if self.best_weights is None:
            raise RuntimeError("a round ended without an evaluation")  # the loop evaluates at every round's end
        weights = self.best_weights
        self.index, self.start, self.best, self.best_weights = self.index + 1, iteration, -math.inf, None
        self.labeller_weights = weights
        self.predicted_mean = None  # distribution alignment starts afresh with the new labeller
        return NextRound(labeller=weights, student=weights if self.cfg.round_init == "warm" else None)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "index": self.index, "start": self.start, "best": self.best,
                "best_weights": self.best_weights, "labeller_weights": self.labeller_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.index, self.start, self.best = int(state["index"]), int(state["start"]), float(state["best"])
        self.best_weights, self.labeller_weights = state["best_weights"], state["labeller_weights"]


__all__ = ["Rounds"]
