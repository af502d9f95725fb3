"""What a method declares about itself, without torch: its knobs, traits, search piece and checks.

The config (`TrainConfig` gets a field per knob), the spaces (`methods` asks each method for its piece) and
analysis (which trials self-train) read these; only the loop builds the torch class (`MethodSpec.load`).

    SPEC = MethodSpec(
        name="my_method", doc="one line", implementation="my_package.my_method_train:MyMethod",
        self_training=True, needs_unlabeled=True,
        knobs=(Knob("my_weight", 0.5, "what it weighs", low=0, high=1),),
        space=my_space_piece, check=my_checks,
    )
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selftune.errors import ConfigError

# A TrainConfig (or an Optuna trial and a SpaceContext below): not imported, since the config imports the specs.
Config = Any


@dataclass(frozen=True)
class Knob:
    """One config key only its method reads: a `TrainConfig` field with this default, and its range.

    Args:
        name: the config key.
        default: its value when not given (the other methods refuse it changed from this).
        doc: one line for the field (docs/methods.md, `TrainConfig`'s schema).
        type: the field's type; inferred from `default` when it is an int, float, bool or str.
        low, high: inclusive bounds (numbers; for a tuple, each item's).
        above: an exclusive lower bound (a positive LR: above=0).
        choices: the allowed values of a string knob.
    """

    name: str
    default: Any
    doc: str
    type: Any = None
    low: float | None = None
    high: float | None = None
    above: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type is None:
            if type(self.default) not in (int, float, bool, str):
                raise TypeError(f"knob {self.name!r}: give its type (its default {self.default!r} does not say it)")
            object.__setattr__(self, "type", type(self.default))

    def check(self, value: Any) -> None:
        """Refuse, by name, a value outside the knob's range (each item of a tuple)."""
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                self._check_one(f"{self.name}[{i}]", v)
        else:
            self._check_one(self.name, value)

    def _check_one(self, key: str, v: Any) -> None:
        if self.choices and v not in self.choices:
            raise ConfigError(f"{key} must be one of {', '.join(self.choices)}; got {v!r}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            return
        if self.low is not None and self.high is not None:
            if not self.low <= v <= self.high:
                raise ConfigError(f"{key} must be in [{_num(self.low)}, {_num(self.high)}], got {v!r}")
        elif self.above is not None:
            if not (v > self.above and math.isfinite(v)):
                what = "a positive number" if self.above == 0 else f"a number above {_num(self.above)}"
                raise ConfigError(f"{key} must be {what}, got {v!r}")
        elif self.low is not None:
            if isinstance(v, int):
                if v < self.low:
                    raise ConfigError(f"{key} must be >= {_num(self.low)}, got {v!r}")
            elif not (v >= self.low and math.isfinite(v)):
                raise ConfigError(f"{key} must be a finite number >= {_num(self.low)}, got {v!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _nothing(cfg: Config) -> None:
    """No checks of the method's own."""


def _no_piece(trial: Config, ctx: Config) -> None:
    """No knobs of the method's own to search."""


def one_stage(cfg: Config) -> tuple[int, ...]:
    """A run in one stage of max_iters."""
    return (cfg.max_iters,)


@dataclass(frozen=True)
class Heads:
    """The decision heads a method puts on the model in place of smp's segmentation head (`model.build_model`): `count`
    heads, each conv3x3 + BatchNorm + ReLU (+ dropout at `dropout`) + conv1x1 to the classes, on the decoder's output.
    In training the model returns every head's logits, [B, count, K, H, W]; in eval mode their mean, [B, K, H, W], so
    scoring, export and the verdict read it like any model."""

    count: int
    dropout: float = 0.0


def smp_head(cfg: Config) -> Heads | None:
    """smp's own segmentation head (a method that puts no heads of its own on the model)."""
    return None


@dataclass(frozen=True)
class MethodSpec:
    """A method as the registry lists it: everything about it that needs no torch.

    Args:
        name: the config's `method` value.
        doc: one line (the config's `method` choices, docs/methods.md's table).
        implementation: its torch class, a `Method` subclass whose `spec` is this: "module:Class", imported on first
            use, or a function that returns the class (a method defined beside its spec: `lambda: MyMethod`).
        self_training: it learns from pseudo-labels (the verdict compares it with the supervised control; analysis
            counts its trials as self-training).
        needs_unlabeled: it reads the dataset's unlabelled pool (checked before training).
        uses_shared_stage: a sweep's shared supervised stage is its first (its `teacher_checkpoint`).
        binary: it works in binary mode.
        knobs: the config keys only it reads (`TrainConfig` fields; the other methods refuse them changed).
        ignores: shared knobs it does not use: refused when changed from their defaults (`check_unused`).
        space: its piece of the `methods` space, `piece(trial, ctx)`: only `trial.suggest_*` of its own knobs (and
            the shared self-training ones it uses), after the knobs every method shares.
        check: its own config checks, `check(cfg)`: a ConfigError naming the key and the value. `TrainConfig` calls
            it for its method, after every field's range (the knobs' included).
        stage_lengths: iterations of each stage a run of `cfg` trains (rounds: each round's).
        starts_at: the first iteration pseudo-labels can change the model (`self_training_starts`); None:
            `st_start_iter` for a self-training method, max_iters for one that never self-trains.
        heads: the decision heads of the model a run of `cfg` trains (`Heads`), or None for smp's own head; every
            model built from such a config (the student, its EMA, a labeller, an exported or scored model) has them.
        shares: other methods' knobs it reads too (rounds: the mean teacher's `heads`), not refused with it.
    """

    name: str
    doc: str
    implementation: str | Callable[[], type]
    self_training: bool = False
    needs_unlabeled: bool = False
    uses_shared_stage: bool = False
    binary: bool = True
    knobs: tuple[Knob, ...] = ()
    ignores: tuple[str, ...] = ()
    space: Callable[[Any, Any], None] = _no_piece
    check: Callable[[Config], None] = _nothing
    stage_lengths: Callable[[Config], tuple[int, ...]] = one_stage
    starts_at: Callable[[Config], int] | None = None
    heads: Callable[[Config], Heads | None] = smp_head
    shares: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"a method's name must be a non-empty identifier, got {self.name!r}")
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r} declares a knob twice: {names}")

    @property
    def own_knobs(self) -> tuple[str, ...]:
        """The names of its knobs."""
        return tuple(k.name for k in self.knobs)

    def self_training_starts(self, cfg: Config) -> int:
        """The first iteration at which pseudo-labels can change the model (the verdict flags a best checkpoint at
        or before it)."""
        if self.starts_at is not None:
            return self.starts_at(cfg)
        return cfg.st_start_iter if self.self_training else cfg.max_iters

    def check_unused(self, cfg: Config) -> None:
        """Refuse a shared knob it `ignores` changed from its default, by name."""
        for key in self.ignores:
            value, off = getattr(cfg, key), type(cfg).__dataclass_fields__[key].default
            if value != off:
                raise ConfigError(f"{key} is {value!r}, but method {self.name} does not use it; set {key} to {off!r} "
                                  "or choose another method")

    def load(self) -> type:
        """Its torch class (imports torch)."""
        if isinstance(self.implementation, str):
            module, _, name = self.implementation.partition(":")
            cls = getattr(importlib.import_module(module), name)
        else:
            cls = self.implementation()
        if getattr(cls, "spec", None) != self:
            raise TypeError(f"method {self.name!r}: its class {cls.__qualname__} must say `spec = ` this spec")
        return cls  # type: ignore[no-any-return]


__all__ = ["Config", "Heads", "Knob", "MethodSpec", "one_stage", "smp_head"]
