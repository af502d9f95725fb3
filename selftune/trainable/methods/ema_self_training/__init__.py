"""Method ema_self_training, the mean teacher (the users' V3): its spec. The torch class is `train.EmaSelfTraining`.

The pseudo-label knobs (`thresholds`, `st_*`, `strong_aug`, `distribution_alignment`, `min_accept_ratio`,
`fp_weight`, `teacher_tta`, `ema_decay`) are shared fields, used by the methods built on it (rounds) too. Its own
knobs, `heads` and `head_agreement` (the V3 setting: several heads, the teacher's prediction their mean), rounds reads
as well (`MethodSpec.shares`).
"""

from __future__ import annotations

from selftune.errors import ConfigError
from selftune.trainable.methods.spec import Config, Heads, Knob, MethodSpec

KNOBS = (
    Knob("heads", 1, "decision heads on the shared encoder and decoder, each conv3x3-BN-ReLU-conv1x1 in place of smp's "
         "head, all trained on the labels and the pseudo-labels; the prediction (teacher, scoring) is their mean "
         "logits; 1: smp's own head", low=1, high=16),
    Knob("head_agreement", 0.0, "with heads > 1: a pseudo-label pixel is also rejected unless at least this share of "
         "the teacher's heads predict its class (0: off; 1: all heads agree)", low=0, high=1),
)
HEAD_KNOBS = tuple(k.name for k in KNOBS)  # what rounds shares


def model_heads(cfg: Config) -> Heads | None:
    """`heads` heads (no dropout) on the model, or smp's own head for heads: 1."""
    return Heads(cfg.heads) if cfg.heads > 1 else None


def check_heads(cfg: Config) -> None:
    """The heads' agreement needs heads to agree."""
    if cfg.head_agreement > 0 and cfg.heads == 1:
        raise ConfigError(f"head_agreement is {cfg.head_agreement!r}, but heads is 1: one head always agrees with "
                          "itself; set heads >= 2 or head_agreement: 0")


def heads_piece(trial: Config, ctx: Config) -> None:
    """How many heads (1-4) and, with several, the heads' agreement a pseudo-label pixel needs."""
    if trial.suggest_int("heads", 1, 4) > 1:
        trial.suggest_float("head_agreement", 0.0, 1.0)


def threshold_offsets(trial: Config, ctx: Config) -> None:
    """Per-class thresholds as one base (0.30-0.95) and a narrow offset (+-0.15) per class (`spaces.apply_params`)."""
    trial.suggest_float("threshold_base", 0.30, 0.95)
    for c in range(ctx.num_classes):
        trial.suggest_float(f"threshold_offset[{c}]", -0.15, 0.15)


def pseudo_label_piece(trial: Config, ctx: Config) -> None:
    """What the mean teacher and the methods built on it search: thresholds, the heads and their agreement, ST weight,
    the acceptance floor, strong aug."""
    threshold_offsets(trial, ctx)
    heads_piece(trial, ctx)
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)
    trial.suggest_float("min_accept_ratio", 0.0, 0.5)
    if trial.suggest_categorical("strong_aug", [False, True]):
        trial.suggest_float("color_jitter", 0.1, 0.6)
        trial.suggest_float("cutmix_prob", 0.0, 1.0)


def space(trial: Config, ctx: Config) -> None:
    """The pseudo-label knobs and the teacher's EMA decay."""
    pseudo_label_piece(trial, ctx)
    trial.suggest_float("ema_decay", 0.99, 0.9995)


SPEC = MethodSpec(
    name="ema_self_training", doc="the mean teacher: the student's EMA labels the unlabelled batch (default)",
    implementation="selftune.trainable.methods.ema_self_training.train:EmaSelfTraining",
    self_training=True, needs_unlabeled=True, knobs=KNOBS, space=space, check=check_heads, heads=model_heads,
)

__all__ = ["HEAD_KNOBS", "KNOBS", "SPEC", "check_heads", "heads_piece", "model_heads", "pseudo_label_piece",
           "threshold_offsets"]
