"""Method ema_self_training, the mean teacher (the users' V3): its spec. The torch class is `train.EmaSelfTraining`.

It has no knobs of its own: the pseudo-label knobs (`thresholds`, `st_*`, `strong_aug`, `distribution_alignment`,
`min_accept_ratio`, `fp_weight`, `teacher_tta`, `ema_decay`) are shared with the methods built on it (rounds).
"""

from __future__ import annotations

from selftune.trainable.methods.spec import Config, MethodSpec


def threshold_offsets(trial: Config, ctx: Config) -> None:
    """Per-class thresholds as one base (0.30-0.95) and a narrow offset (+-0.15) per class (`spaces.apply_params`)."""
    trial.suggest_float("threshold_base", 0.30, 0.95)
    for c in range(ctx.num_classes):
        trial.suggest_float(f"threshold_offset[{c}]", -0.15, 0.15)


def pseudo_label_piece(trial: Config, ctx: Config) -> None:
    """What the mean teacher and the methods built on it search: thresholds, ST weight, the acceptance floor,
    strong aug."""
    threshold_offsets(trial, ctx)
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
    self_training=True, needs_unlabeled=True, space=space,
)

__all__ = ["SPEC", "pseudo_label_piece", "threshold_offsets"]
