"""The training methods, one module each, and the one list of them (`REGISTRY`).

    from selftune.trainable.methods import create_method, get_method, method_names
    method_names()                      # ('supervised', 'ema_self_training', 'rounds', 's4gan')
    get_method("rounds").needs_unlabeled  # True: what a method needs is a class attribute
    method = create_method(cfg, num_classes)  # the loop's `cfg.method`, built

A method is a `Method` subclass (`base.py` describes the interface the loop calls). A new one is a module
beside these and one entry in the tuple below; code outside the package (a test, a user's script) adds one
with `register(MyMethod)`. The config's `method` choices, its per-method checks, the spaces' method
choices, the verdict's self-training set and the sweep's checks all read this registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from selftune.errors import ConfigError
from selftune.trainable.methods.base import Method, NextRound, PseudoBatch
from selftune.trainable.methods.ema_self_training import EmaSelfTraining
from selftune.trainable.methods.rounds import Rounds
from selftune.trainable.methods.s4gan import S4GAN
from selftune.trainable.methods.supervised import Supervised

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (Supervised, EmaSelfTraining, Rounds, S4GAN)}


def register(cls: type[Method]) -> type[Method]:
    """Add the method `cls` under `cls.name` (usable as a class decorator); a name another class holds is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"a method must be a Method subclass, got {cls!r}")
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"a method's name must be a non-empty identifier, got {cls.name!r} ({cls.__qualname__})")
    held = REGISTRY.get(cls.name)
    if held is not None and held is not cls:
        raise ValueError(f"method name {cls.name!r} is already {held.__module__}.{held.__qualname__}")
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class called `name`; a ConfigError listing the methods otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method must be one of {', '.join(REGISTRY)}; got {name!r}") from None


def method_names() -> tuple[str, ...]:
    """Every method's name, in registration order."""
    return tuple(REGISTRY)


def self_training_methods() -> tuple[str, ...]:
    """The names of the methods that learn from pseudo-labels (`Method.self_training`)."""
    return tuple(name for name, cls in REGISTRY.items() if cls.self_training)


def create_method(cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None) -> Method:
    """The method named by `cfg.method`, built; `class_prior` is the labelled class frequencies."""
    return get_method(cfg.method)(cfg, num_classes, class_prior)


__all__ = [
    "REGISTRY", "S4GAN", "EmaSelfTraining", "Method", "NextRound", "PseudoBatch", "Rounds", "Supervised",
    "create_method", "get_method", "method_names", "register", "self_training_methods",
]
