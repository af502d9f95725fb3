"""Method s4gan (Mittal, Tatarchenko and Brox, 2019; the users' V1 and V2, seeds 001-002): its spec, knobs, search
piece and checks (no torch). The discriminator and the method's torch class are `train` (`train.S4GAN`)."""

from __future__ import annotations

from selftune.errors import ConfigError
from selftune.trainable.methods.spec import Config, Knob, MethodSpec

KNOBS = (
    Knob("lambda_fm", 0.1, "weight of feature matching: L1 between the discriminator's mean features of real (image + "
         "one-hot truth) and fake (image + the network's softmax) inputs (seeds: 0.1)", low=0),
    Knob("threshold_st", 0.2, "image gate: an unlabelled image's argmax pseudo-label is used only when the "
         "discriminator's confidence on it exceeds this (V1: 0.2); the end value when linear", low=0, high=1),
    Knob("threshold_st_schedule", "constant", "constant | linear: the gate goes from threshold_st_start at "
         "st_start_iter to threshold_st at the last step (V2: 0.05 -> 0.20)", choices=("constant", "linear")),
    Knob("threshold_st_start", 0.05, "the linear gate schedule's first value", low=0, high=1),
    Knob("lr_d", 1e-4, "the discriminator's peak LR (its own Adam; seeds: 1e-4 against the network's 2.5e-4), "
         "decaying like lr_schedule from d_warmup_iters to max_iters", above=0),
    Knob("d_width", 64, "channels of the discriminator's first convolution, doubling in each of the next three "
         "(s4GAN's 64: 64-512)", low=1),
    Knob("d_warmup_iters", 0, "no adversarial training (no feature matching, no discriminator step) before this "
         "iteration (V2: 500); must be shorter than the run", low=0),
    Knob("st_weight_start", 0.0, "the ST weight's ramp (st_rampup_iters from st_start_iter) starts at this fraction "
         "of st_weight instead of 0 (V2: 0.1 -> 1.0)", low=0, high=1),
)


def check(cfg: Config) -> None:
    """Its own labeller, and a discriminator that gets to train."""
    if cfg.teacher_checkpoint is not None:
        raise ConfigError("teacher_checkpoint is set, but method s4gan pseudo-labels with its own network (gated by "
                          "the discriminator); drop teacher_checkpoint or choose another method")
    if cfg.d_warmup_iters >= cfg.max_iters:
        raise ConfigError(f"d_warmup_iters {cfg.d_warmup_iters} is not shorter than the run (max_iters "
                          f"{cfg.max_iters}): the discriminator would never train; lower d_warmup_iters")


def space(trial: Config, ctx: Config) -> None:
    """The discriminator's LR and warmup, feature matching, the image gate and its schedule (its start value exists
    only when it is linear), the ST weight."""
    trial.suggest_float("lr_d", 2e-5, 5e-4, log=True)
    trial.suggest_float("lambda_fm", 0.01, 1.0, log=True)
    trial.suggest_float("threshold_st", 0.05, 0.6)
    if trial.suggest_categorical("threshold_st_schedule", ["constant", "linear"]) == "linear":
        trial.suggest_float("threshold_st_start", 0.0, 0.2)
    trial.suggest_int("d_warmup_iters", 0, max(1, ctx.max_iters // 10))
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)


SPEC = MethodSpec(
    name="s4gan", doc="a discriminator gates whole unlabelled images and adds feature matching (seeds 001-002)",
    implementation="selftune.trainable.methods.s4gan.train:S4GAN",
    self_training=True, needs_unlabeled=True,
    binary=False,  # its discriminator reads K class probabilities, not one sigmoid channel
    knobs=KNOBS, space=space, check=check,
    # the per-pixel pseudo-label knobs: the discriminator gates whole images with threshold_st instead
    ignores=("min_accept_ratio", "distribution_alignment", "fp_weight", "strong_aug", "threshold_schedule"),
)

__all__ = ["KNOBS", "SPEC"]
