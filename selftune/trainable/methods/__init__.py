"""The training methods and the one list of them (`REGISTRY`). Importing this imports no torch.

    from selftune.trainable.methods import create_method, get_method, method_names
    method_names()                        # ('supervised', 'ema_self_training', 'rounds', 's4gan', 'diverse_head')
    get_method("rounds").uses_shared_stage  # True: a method's traits are its spec's (`spec.MethodSpec`)
    method = create_method(cfg, num_classes)  # the loop's `cfg.method`, its torch class built

A method is a spec (`spec.MethodSpec`: its traits, knobs, search piece and checks, no torch) and a torch class (a
`base.Method` subclass, imported on first use). Each built-in method is a package beside this module: its spec in
`__init__.py`, its torch class in `train.py` (supervised trains with `base.Method`, so it is one module). A new one
is such a package and one line in `_BUILT_IN`; code outside the package (a test, a user's script) adds one with
`register(spec)`. The config (`method` choices, a field per knob, each method's checks), the spaces (`methods`),
the verdict, the sweep's checks and analysis read this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from selftune.errors import ConfigError
from selftune.trainable.methods import diverse_head, ema_self_training, rounds, s4gan, supervised
from selftune.trainable.methods.spec import Knob, MethodSpec

_BUILT_IN = (supervised.SPEC, ema_self_training.SPEC, rounds.SPEC, s4gan.SPEC, diverse_head.SPEC)

REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in _BUILT_IN}
DEFAULT_METHOD = ema_self_training.SPEC.name  # the config's `method` when not given

# Called with each spec `register` adds: the config adds its knobs as fields (it imports this module, not back).
_ON_REGISTER: list[Callable[[MethodSpec], None]] = []


def on_register(callback: Callable[[MethodSpec], None]) -> None:
    """Call `callback(spec)` for every method registered from now on (`TrainConfig` adds the method's knobs)."""
    _ON_REGISTER.append(callback)


def register(spec: MethodSpec) -> MethodSpec:
    """Add the method `spec` under its name, and its knobs to `TrainConfig`; registering the same spec again does
    nothing, another spec under a name already held is refused, and so is a knob another method or the config holds."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register takes a MethodSpec (selftune.trainable.methods.spec), got {spec!r}")
    held = REGISTRY.get(spec.name)
    if held is not None:
        if held != spec:
            raise ValueError(f"method name {spec.name!r} is already another method's ({held.implementation!r})")
        return spec
    taken = {k: other.name for other in REGISTRY.values() for k in other.own_knobs}
    if clash := [k for k in spec.own_knobs if k in taken]:
        raise ValueError(f"method {spec.name!r}: knob {clash[0]!r} is already method {taken[clash[0]]}'s")
    for callback in _ON_REGISTER:
        callback(spec)  # before it is listed: a refused knob leaves the registry as it was
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Drop a method registered at run time (tests). Its knobs stay config fields, at their defaults."""
    if any(spec.name == name for spec in _BUILT_IN):
        raise ValueError(f"{name!r} is a built-in method")
    REGISTRY.pop(name, None)


def get_method(name: str) -> MethodSpec:
    """The method called `name`; a ConfigError listing the methods otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method must be one of {', '.join(REGISTRY)}; got {name!r}") from None


def method_names() -> tuple[str, ...]:
    """Every method's name, in registration order."""
    return tuple(REGISTRY)


def self_training_methods() -> tuple[str, ...]:
    """The names of the methods that learn from pseudo-labels (`MethodSpec.self_training`)."""
    return tuple(name for name, spec in REGISTRY.items() if spec.self_training)


def counts_as_self_training(name: str) -> bool:
    """Whether trials of method `name` self-train (analysis): its trait; a method this process has not registered
    (a user's, registered in the sweep's own processes) is taken to self-train, since only supervised never does."""
    spec = REGISTRY.get(name)
    return spec.self_training if spec is not None else True


def all_knobs() -> tuple[Knob, ...]:
    """Every registered method's knobs, method by method."""
    return tuple(k for spec in REGISTRY.values() for k in spec.knobs)


def create_method(cfg: Any, num_classes: int, class_prior: Sequence[float] | None = None) -> Any:
    """The method named by `cfg.method` (a TrainConfig), its torch class (a `base.Method`) built; `class_prior` is the
    labelled class frequencies."""
    spec = get_method(cfg.method)
    return spec.load()(cfg, num_classes, class_prior)  # type: ignore[no-any-return]


__all__ = [
    "DEFAULT_METHOD", "REGISTRY", "Knob", "MethodSpec", "all_knobs", "counts_as_self_training", "create_method", "get_method", "method_names", "on_register",
    "register", "self_training_methods", "unregister",
]
