"""The named search spaces. Each is a define-by-run function that only calls `trial.suggest_*`.

A space function takes `(trial, ctx)`: `ctx` is a `SpaceContext` with the class count and the
base config's iteration scale, so that iteration ranges (warmup, ST start, patience) follow the
run length instead of being hard-coded to one dataset. It may return a dict of constants.

Parameter names are config fields (`lr`, `st_weight`, ...), or one of the per-class forms:
- `thresholds[c]`: class c's threshold, searched independently;
- `threshold_base` + `threshold_offset[c]`: class c's threshold is base + offset, clipped to [0, 1].
`selftune.spaces.params.apply_params` turns a trial's parameters into a `TrainConfig`.

Trade-off of the two threshold forms (K classes): independent thresholds are K wide dimensions
(0.30-0.95 each); TPE needs many trials before it learns K separate effects. Base + offsets puts
most of the effect in one wide dimension (the base) and K narrow ones (±0.15) that only refine
it, so good regions are found with fewer trials, at the cost of not reaching configurations
where classes need thresholds more than 0.3 apart. `thresholds_shared` is one dimension only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna import Trial

from selftune.trainable.methods import get_method, method_names
from selftune.trainable.methods.ema_self_training import threshold_offsets


@dataclass(frozen=True)
class SpaceContext:
    """What a space may scale its ranges by."""

    num_classes: int = 7
    max_iters: int = 1200  # the base config's run length (the sweep's max_t)
    eval_every: int = 50
    arch: str = ""  # the base config's architecture: which decoder widths `decoder` may offer


# ---------------------------------------------------------------------- shared pieces


def _thresholds_independent(trial: Trial, ctx: SpaceContext) -> None:
    for c in range(ctx.num_classes):
        trial.suggest_float(f"thresholds[{c}]", 0.30, 0.95)


def _core_training(trial: Trial, ctx: SpaceContext) -> None:
    """ST weight, LR, warmup and patience: the knobs the users turned by hand (seed 000)."""
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("warmup_iters", 0, max(1, ctx.max_iters // 20))
    evals = max(2, ctx.max_iters // ctx.eval_every)
    trial.suggest_int("patience", max(1, evals // 8), max(2, evals // 2))


def _wide_extras(trial: Trial, ctx: SpaceContext) -> None:
    """The rest of what the seeds changed between versions."""
    trial.suggest_float("ema_decay", 0.99, 0.9995)
    trial.suggest_float("grad_clip", 1.0, 20.0, log=True)
    trial.suggest_int("st_start_iter", 0, max(1, ctx.max_iters // 10))
    trial.suggest_int("st_rampup_iters", 0, max(1, ctx.max_iters // 5))
    if trial.suggest_categorical("threshold_schedule", ["constant", "linear"]) == "linear":
        trial.suggest_float("threshold_start_offset", -0.2, 0.2)
        trial.suggest_int("threshold_ramp_iters", max(1, ctx.max_iters // 10), max(2, ctx.max_iters // 2))
    trial.suggest_float("dice_weight", 0.0, 1.0)
    if trial.suggest_float("focal_weight", 0.0, 1.0) > 0.05:
        trial.suggest_float("focal_gamma", 0.5, 4.0)
    trial.suggest_categorical("class_weighting", ["none", "inverse_freq"])
    trial.suggest_float("min_accept_ratio", 0.0, 0.5)
    trial.suggest_categorical("distribution_alignment", [False, True])
    trial.suggest_categorical("teacher_tta", ["none", "flip", "d4"])
    trial.suggest_categorical("st_loss_normalization", ["accepted", "all_pixels"])
    trial.suggest_float("scale_min", 0.75, 1.0)
    trial.suggest_float("scale_max", 1.0, 1.5)
    if trial.suggest_categorical("strong_aug", [False, True]):
        trial.suggest_float("color_jitter", 0.1, 0.6)
        trial.suggest_float("cutmix_prob", 0.0, 1.0)
        trial.suggest_float("hue_jitter", 0.0, 0.25)
        trial.suggest_float("grayscale_prob", 0.0, 0.3)
        trial.suggest_float("blur_prob", 0.0, 0.5)
    trial.suggest_categorical("fp_weight", [0.0, 0.5, 1.0])


# ---------------------------------------------------------------------- named spaces


def thresholds(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """Core: per-class thresholds (base + offsets), ST weight, LR, warmup, patience."""
    threshold_offsets(trial, ctx)
    _core_training(trial, ctx)
    return {}


def thresholds_independent(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """Core, with each class's threshold searched on its own (K wide dimensions)."""
    _thresholds_independent(trial, ctx)
    _core_training(trial, ctx)
    return {}


def thresholds_shared(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """Core, with one threshold for every class (the cheapest form)."""
    trial.suggest_float("threshold_base", 0.30, 0.95)
    _core_training(trial, ctx)
    return {}


def wide(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """Core plus EMA decay, clipping, ST start/ramp, threshold schedule, losses, weighting, acceptance floor,
    distribution alignment, pseudo-label loss normalization, scale, strong aug (UniMatch's set), feature
    perturbation, and the decoder's width where the architecture has one (`decoder`)."""
    threshold_offsets(trial, ctx)
    _core_training(trial, ctx)
    _wide_extras(trial, ctx)
    decoder(trial, ctx)
    return {}


DECODER_WIDTHS = {  # `decoder`'s choices: smp's default first, then lighter (the demo's is the third)
    5: ["256,128,64,32,16", "128,64,32,16,16", "64,32,16,16,16", "32,16,16,8,8"],
    1: ["256", "128", "64"],
}


def decoder(trial: Trial, ctx: SpaceContext) -> None:
    """The decoder's widths (`decoder_channels`) for the architectures that take them: a piece to add to a space.
    A Unet's 5 stages narrow together (the decoder holds almost all of a small encoder's FLOPs); DeepLabV3(+), PAN
    and UPerNet take one width. Other architectures: nothing searched."""
    from selftune.trainable.config import DECODER_CHANNELS

    n = DECODER_CHANNELS.get(ctx.arch)
    if n is not None:
        trial.suggest_categorical("decoder_channels", DECODER_WIDTHS[n])


def _shared_training(trial: Trial, ctx: SpaceContext) -> None:
    """The knobs every method has, searched for every method alike (issue 27: equal tuning): LR, warmup, the loss
    weights, class weighting and the labelled images' scale augmentation."""
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("warmup_iters", 0, max(1, ctx.max_iters // 20))
    trial.suggest_float("dice_weight", 0.0, 1.0)
    trial.suggest_categorical("class_weighting", ["none", "inverse_freq"])
    trial.suggest_float("scale_min", 0.75, 1.0)
    trial.suggest_float("scale_max", 1.0, 1.5)


def supervised(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """The supervised-only baseline, tuned as hard: the shared knobs (LR, warmup, losses, weighting, scale) and
    patience."""
    _shared_training(trial, ctx)
    evals = max(2, ctx.max_iters // ctx.eval_every)
    trial.suggest_int("patience", max(1, evals // 8), max(2, evals // 2))
    return {"method": "supervised"}


def s4gan(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """s4GAN: discriminator LR, lambda_fm, the image gate and its schedule, D warmup, ST weight, LR, warmup, patience."""
    get_method("s4gan").space(trial, ctx)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("warmup_iters", 0, max(1, ctx.max_iters // 20))
    evals = max(2, ctx.max_iters // ctx.eval_every)
    trial.suggest_int("patience", max(1, evals // 8), max(2, evals // 2))
    return {"method": "s4gan"}


def diverse_head(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """DiverseHead: the heads, their dropout and freezing, the vote's weight, the heads that learn from the
    pseudo-labels, the ST weight (its piece of `methods`), LR, warmup and patience."""
    get_method("diverse_head").space(trial, ctx)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("warmup_iters", 0, max(1, ctx.max_iters // 20))
    evals = max(2, ctx.max_iters // ctx.eval_every)
    trial.suggest_int("patience", max(1, evals // 8), max(2, evals // 2))
    return {"method": "diverse_head"}


def methods(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """The method first (every registered one: supervised, the mean teacher, self-training in rounds, s4GAN, ...),
    then the knobs every method shares (`_shared_training`: LR, warmup, dice weight, class weighting, scale), then
    the method's own piece (`MethodSpec.space`: the mean teacher's thresholds, ST weight, acceptance floor and strong
    aug; rounds' count and student init; s4GAN's discriminator and gate; nothing for supervised).

    Patience is not searched (ASHA stops trials that plateau, and a small patience ends trials in the dip after
    self-training starts). The sweep gives every method a fair share of the first trials (`search.run.fair_share`).
    """
    return _over_methods(trial, ctx, method_choices())


def _over_methods(trial: Trial, ctx: SpaceContext, names: tuple[str, ...]) -> dict[str, Any]:
    method = trial.suggest_categorical("method", list(names))
    _shared_training(trial, ctx)
    get_method(method).space(trial, ctx)
    return {}


def methods_among(*names: str) -> Any:
    """The `methods` space over some methods only (each a registered one), e.g. a module's
    `pair = methods_among("supervised", "rounds")`, used as the space `module:pair`."""

    def space(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
        return _over_methods(trial, ctx, tuple(get_method(n).name for n in names))

    space.__doc__ = f"The `methods` space over {', '.join(names)}."
    return space


def method_choices() -> tuple[str, ...]:
    """The methods `methods` chooses from: every registered method (`selftune.trainable.methods`)."""
    return method_names()


def binary(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """Binary self-training in rounds (seed 003; a 2-class dataset, e.g. point-labelled particles): the positive
    and negative pseudo-label thresholds, their per-round relaxation, pos_weight, the focal and dice weights
    (seed 003's CombinedLoss: focal + dice, no BCE), the ST weight, LR and the number of rounds (2-4, the first
    supervised or the sweep's shared stage). Pair it with the sweep key `metric: val_f1`."""
    trial.suggest_float("pos_threshold", 0.80, 0.99)
    trial.suggest_float("neg_threshold", 0.01, 0.20)
    trial.suggest_float("threshold_decay", 0.0, 0.05)
    trial.suggest_float("pos_weight", 1.0, 20.0, log=True)
    trial.suggest_float("focal_weight", 0.1, 1.0)
    trial.suggest_float("dice_weight", 0.0, 1.0)
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("rounds", 2, 4)
    return {"binary": True, "method": "rounds", "ce_weight": 0.0}


def binary_points(trial: Trial, ctx: SpaceContext) -> dict[str, Any]:
    """`binary`, plus the disk radius and ignored ring that turn point labels into targets. They change the val
    targets too, so trials are scored against different masks: compare its trials' F1 with that in mind."""
    constants = binary(trial, ctx)
    trial.suggest_float("point_radius", 1.5, 8.0)
    trial.suggest_float("point_ring", 0.0, 4.0)
    return constants


SPACES = {
    "thresholds": thresholds,
    "thresholds_independent": thresholds_independent,
    "thresholds_shared": thresholds_shared,
    "wide": wide,
    "supervised": supervised,
    "methods": methods,
    "s4gan": s4gan,
    "diverse_head": diverse_head,
    "binary": binary,
    "binary_points": binary_points,
}
