"""Method rounds, self-training in rounds (Noisy Student): its spec, knobs and round arithmetic (no torch). The torch
class is `train.Rounds`, the mean teacher with a frozen labeller per round."""

from __future__ import annotations

from selftune.errors import ConfigError
from selftune.trainable.methods.ema_self_training import HEAD_KNOBS, check_heads, model_heads, pseudo_label_piece
from selftune.trainable.methods.spec import Config, Knob, MethodSpec

KNOBS = (
    Knob("rounds", 2, "rounds in all, the supervised first one included; with teacher_checkpoint the first round is "
         "that checkpoint (a shared first stage) and the run trains rounds 2..rounds", low=1),
    Knob("round_iters", (), "iterations of each round this run trains, adding up to max_iters; empty: max_iters "
         "split evenly (the last round takes the remainder)", type=tuple[int, ...], low=1),
    Knob("round_init", "warm", "each round's student starts from the last round's best EMA model (warm) or from a "
         "fresh init (fresh; Noisy Student)", choices=("warm", "fresh")),
)


def trained_rounds(cfg: Config) -> int:
    """Rounds this run trains: all of them, or all but the first given by teacher_checkpoint."""
    return int(cfg.rounds) - (1 if cfg.teacher_checkpoint is not None else 0)


def round_lengths(cfg: Config) -> tuple[int, ...]:
    """Iterations of each round this run trains: `round_iters`, or max_iters split evenly (the last round takes
    the remainder)."""
    if cfg.round_iters:
        return tuple(cfg.round_iters)
    n = trained_rounds(cfg)
    return (cfg.max_iters // n,) * (n - 1) + (cfg.max_iters - (n - 1) * (cfg.max_iters // n),)


def check(cfg: Config) -> None:
    """At least one round to train, one iteration per round, `round_iters` matching the rounds and max_iters, and
    the mean teacher's heads."""
    check_heads(cfg)
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


def starts_at(cfg: Config) -> int:
    """Round 2's start: 0 when round 1 is `teacher_checkpoint` (a shared stage), else after round 1."""
    return 0 if cfg.teacher_checkpoint is not None else round_lengths(cfg)[0]


def space(trial: Config, ctx: Config) -> None:
    """The mean teacher's pseudo-label knobs, how many rounds (2-3, the first supervised or the sweep's shared stage)
    and whether each round's student starts from the last round's model."""
    pseudo_label_piece(trial, ctx)
    trial.suggest_int("rounds", 2, 3)
    trial.suggest_categorical("round_init", ["warm", "fresh"])


SPEC = MethodSpec(
    name="rounds", doc="self-training in rounds: supervised, then each round pseudo-labelled by the last one's best",
    implementation="selftune.trainable.methods.rounds.train:Rounds",
    self_training=True, needs_unlabeled=True, uses_shared_stage=True, knobs=KNOBS, space=space, check=check,
    stage_lengths=round_lengths, starts_at=starts_at,
    heads=model_heads, shares=HEAD_KNOBS,  # the mean teacher's heads: each round's student, labeller and EMA have them
)

__all__ = ["KNOBS", "SPEC", "round_lengths", "trained_rounds"]
