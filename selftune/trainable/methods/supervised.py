"""Method supervised: the baseline and the sweep's control, labelled images only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selftune.errors import ConfigError
from selftune.trainable.methods.base import Method

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig


class Supervised(Method):
    """The baseline: labelled images only (the EMA model is still kept and scored)."""

    name = "supervised"

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        if cfg.teacher_checkpoint is not None:
            raise ConfigError("teacher_checkpoint labels unlabelled images, but method is 'supervised'; "
                              "use a self-training method or drop the key")


__all__ = ["Supervised"]
