"""Method supervised: the baseline and the sweep's control, labelled images only. It trains with the base `Method`
(supervised steps with an EMA copy, the kept and scored model): this module is its spec alone."""

from __future__ import annotations

from selftune.errors import ConfigError
from selftune.trainable.methods.spec import Config, MethodSpec


def check(cfg: Config) -> None:
    if cfg.teacher_checkpoint is not None:
        raise ConfigError("teacher_checkpoint labels unlabelled images, but method is 'supervised'; "
                          "use a self-training method or drop the key")


SPEC = MethodSpec(
    name="supervised", doc="the baseline and the sweep's control: labelled images only",
    implementation="selftune.trainable.methods.base:Method", check=check,
)

__all__ = ["SPEC"]
