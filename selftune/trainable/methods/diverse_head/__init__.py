"""Method diverse_head (DiverseNet's DiverseHead: Ma, Karakus and Rosin, arXiv 2311.13716; the seeds' multi-head
ensemble): its spec, knobs, search piece and checks (no torch). The torch class is `train.DiverseHead`.

One shared encoder and decoder and `diverse_heads` decision heads (`spec.Heads`: conv3x3-BN-ReLU(-dropout)-conv1x1
each, in place of smp's head, on any architecture). Every head learns from the labels; the heads together
pseudo-label the unlabelled batch in the student's own forward pass, and `unlabeled_heads` of them, drawn at random,
learn from it. Diversity comes from dropout inside the heads (`head_dropout`, the paper's DT) or from freezing a random
share of the heads each step (`freeze_fraction` from `freeze_start`, DF). Scoring and export read the heads' mean.
The unlabelled loss's weight and ramp are the shared `st_weight`, `st_start_iter` and `st_rampup_iters`.
"""

from __future__ import annotations

from selftune.errors import ConfigError
from selftune.trainable.methods.spec import Config, Heads, Knob, MethodSpec

KNOBS = (
    Knob("diverse_heads", 10, "decision heads on the shared encoder and decoder (the paper: 10)", low=1, high=32),
    Knob("head_dropout", 0.0, "dropout inside each head, before its conv1x1 (DiverseHead DT: 0.5); 0: none; needs "
         "diverse_heads >= 2; in [0, 1)", low=0, high=1),
    Knob("freeze_fraction", 0.5, "from freeze_start, this share of the heads (rounded down, at least one) is frozen "
         "each step, drawn afresh: their weights and BatchNorm statistics stay (DiverseHead DF: 5 of 10); 0: none; "
         "in [0, 1)", low=0, high=1),
    Knob("freeze_start", 0, "the first iteration heads are frozen at (the paper's code: 3,500 of 15,000); shorter "
         "than the run", low=0),
    Knob("vote_weight", 5.0, "pseudo-label = argmax of vote_weight x one-hot(class of the heads' summed logits) + "
         "the heads' votes (the paper's code: 5); 0: the vote alone; >= diverse_heads: the summed logits alone",
         low=0),
    Knob("unlabeled_heads", 1, "heads that learn from the pseudo-labels each step, drawn at random among those not "
         "frozen (the paper: 1)", low=1),
)


def frozen_heads(cfg: Config) -> int:
    """How many heads are frozen at a step from freeze_start: freeze_fraction of them, rounded down."""
    return int(cfg.freeze_fraction * cfg.diverse_heads)


def model_heads(cfg: Config) -> Heads:
    """`diverse_heads` heads with `head_dropout`."""
    return Heads(cfg.diverse_heads, cfg.head_dropout)


def check(cfg: Config) -> None:
    """Dropout and freezing that can work, enough heads left to learn from the pseudo-labels, its own labeller."""
    if cfg.teacher_checkpoint is not None:
        raise ConfigError("teacher_checkpoint is set, but method diverse_head pseudo-labels with its own heads; drop "
                          "teacher_checkpoint (init_checkpoint starts the encoder and decoder from a run) or choose "
                          "another method")
    for key in ("head_dropout", "freeze_fraction"):
        if getattr(cfg, key) >= 1:
            raise ConfigError(f"{key} must be in [0, 1), got {getattr(cfg, key)!r}")
    if cfg.head_dropout > 0 and cfg.diverse_heads == 1:
        raise ConfigError(f"head_dropout is {cfg.head_dropout!r}, but diverse_heads is 1: dropout makes heads differ "
                          "from each other; set diverse_heads >= 2 or head_dropout: 0")
    frozen = frozen_heads(cfg)
    if cfg.freeze_fraction > 0:
        if frozen == 0:
            raise ConfigError(f"freeze_fraction {cfg.freeze_fraction!r} of diverse_heads {cfg.diverse_heads} freezes "
                              f"no head (rounded down); set freeze_fraction >= {1 / cfg.diverse_heads:.3g} with "
                              "diverse_heads >= 2, or 0")
        if cfg.freeze_start >= cfg.max_iters:
            raise ConfigError(f"freeze_start {cfg.freeze_start} is not shorter than the run (max_iters "
                              f"{cfg.max_iters}): no head would ever be frozen; lower freeze_start or set "
                              "freeze_fraction: 0")
    if cfg.unlabeled_heads > cfg.diverse_heads - frozen:
        raise ConfigError(f"unlabeled_heads is {cfg.unlabeled_heads}, but only {cfg.diverse_heads - frozen} of the "
                          f"{cfg.diverse_heads} heads train at a step ({frozen} frozen); lower unlabeled_heads")


def space(trial: Config, ctx: Config) -> None:
    """The heads (2-10), their dropout, freezing half of them or none (and from when), the vote's weight, how many
    heads learn from the pseudo-labels, and the ST weight."""
    n = trial.suggest_int("diverse_heads", 2, 10)
    trial.suggest_float("head_dropout", 0.0, 0.6)
    frozen = 0
    if trial.suggest_categorical("freeze_fraction", [0.0, 0.5]) > 0:
        frozen = n // 2
        trial.suggest_int("freeze_start", 0, max(1, ctx.max_iters // 2))
    trial.suggest_float("vote_weight", 0.0, 10.0)
    if n - frozen >= 2:
        trial.suggest_int("unlabeled_heads", 1, n - frozen)
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)


SPEC = MethodSpec(
    name="diverse_head", doc="DiverseHead: N heads on one network pseudo-label together; one random head learns "
    "from it (DiverseNet)",
    implementation="selftune.trainable.methods.diverse_head.train:DiverseHead",
    self_training=True, needs_unlabeled=True, knobs=KNOBS, space=space, check=check, heads=model_heads,
    # the pseudo-label is the heads' vote on the student's own forward: no teacher, threshold or strong augmentation
    ignores=("min_accept_ratio", "distribution_alignment", "fp_weight", "strong_aug", "teacher_tta",
             "threshold_schedule"),
)

__all__ = ["KNOBS", "SPEC", "frozen_heads"]
