"""Method rounds: self-training in rounds (Noisy Student), each round pseudo-labelled by the last one's best."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from selftune.errors import ConfigError
from selftune.trainable import functional
from selftune.trainable.methods.base import NextRound
from selftune.trainable.methods.ema_self_training import EmaSelfTraining

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig


def trained_rounds(cfg: TrainConfig) -> int:
    """Rounds this run trains: all of them, or all but the first given by teacher_checkpoint."""
    return cfg.rounds - (1 if cfg.teacher_checkpoint is not None else 0)


def round_lengths(cfg: TrainConfig) -> tuple[int, ...]:
    """Iterations of each round this run trains: `round_iters`, or max_iters split evenly (the last round takes
    the remainder)."""
    if cfg.round_iters:
        return cfg.round_iters
    n = trained_rounds(cfg)
    return (cfg.max_iters // n,) * (n - 1) + (cfg.max_iters - (n - 1) * (cfg.max_iters // n),)


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

    own_knobs = ("rounds", "round_iters", "round_init")  # the other methods refuse them changed

    name = "rounds"
    uses_shared_stage = True

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.lengths = self.stage_lengths(cfg)
        self.index = 0  # which of `lengths` is being trained
        self.start = 0  # the iteration this round started at
        self.best = -math.inf  # this round's best val mIoU (patience counts against it)
        self.best_weights: dict[str, torch.Tensor] | None = None  # this round's best EMA model (CPU)
        self.labeller_weights: dict[str, torch.Tensor] | None = None  # set once a round of this run labels

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        """At least one round to train, one iteration per round, and `round_iters` matching the rounds and
        max_iters."""
        n = trained_rounds(cfg)
        if n < 1:
            raise ConfigError(f"rounds is {cfg.rounds} and teacher_checkpoint gives the first round: nothing is left "
                              "to train; set rounds >= 2")
        if cfg.rounds > cfg.max_iters:
            raise ConfigError(f"rounds {cfg.rounds} needs at least one iteration per round, max_iters is {cfg.max_iters}")
        if cfg.round_iters:
            if len(cfg.round_iters) != n:
                raise ConfigError(f"round_iters lists {len(cfg.round_iters)} rounds but the run trains {n} "
                                  f"(rounds {cfg.rounds}{', the first from teacher_checkpoint' if n < cfg.rounds else ''})")
            if sum(cfg.round_iters) != cfg.max_iters:
                raise ConfigError(f"round_iters {list(cfg.round_iters)} adds up to {sum(cfg.round_iters)}, but max_iters "
                                  f"is {cfg.max_iters}; make them agree, or leave round_iters empty to split max_iters "
                                  "evenly")

    @classmethod
    def stage_lengths(cls, cfg: TrainConfig) -> tuple[int, ...]:
        return round_lengths(cfg)

    @classmethod
    def self_training_starts(cls, cfg: TrainConfig) -> int:
        """Round 2's start: 0 when round 1 is `teacher_checkpoint` (a shared stage), else after round 1."""
        return 0 if cfg.teacher_checkpoint is not None else round_lengths(cfg)[0]

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


__all__ = ["Rounds", "round_lengths", "trained_rounds"]
