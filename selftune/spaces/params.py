"""Turning a space into config: look a space up, check it before launch, apply a trial's params."""

from __future__ import annotations

import importlib
import inspect
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selftune.errors import ConfigError
from selftune.spaces.library import SPACES, SpaceContext
from selftune.trainable.config import TrainConfig

SpaceFn = Callable[..., dict[str, Any] | None]

_INDEXED = re.compile(r"^(?P<name>[a-z_]+)\[(?P<index>\d+)\]$")
_DERIVED = ("threshold_base", "threshold_offset")


def get_space(spec: str | SpaceFn) -> SpaceFn:
    """A space by name (`thresholds`), as `module:function`, or a callable as is."""
    if callable(spec):
        return spec
    if spec in SPACES:
        return SPACES[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"space {spec!r}: cannot import module {module_name!r} ({exc})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ConfigError(f"space {spec!r}: module {module_name!r} has no function {attr!r}")
        return fn
    raise ConfigError(f"unknown space {spec!r}; known spaces: {', '.join(SPACES)} (or give module:function)")


def call_space(fn: SpaceFn, trial: Any, ctx: SpaceContext) -> dict[str, Any]:
    """Call a space with `(trial, ctx)`, or `(trial)` for user spaces that take one argument."""
    n_params = len(inspect.signature(fn).parameters)
    out = fn(trial, ctx) if n_params >= 2 else fn(trial)
    return dict(out or {})


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """The config a trial runs: `base` with the trial's parameters (and constants) applied."""
    changes: dict[str, Any] = {}
    per_class: dict[str, dict[int, float]] = {}
    for key, value in params.items():
        m = _INDEXED.match(key)
        if m:
            per_class.setdefault(m["name"], {})[int(m["index"])] = value
        elif key == "threshold_base":
            per_class.setdefault("threshold_base", {})[0] = value
        else:
            changes[key] = value
    k = len(base.thresholds)
    thresholds = list(changes.get("thresholds", base.thresholds))
    if "threshold_base" in per_class:
        b = per_class.pop("threshold_base")[0]
        offsets = per_class.pop("threshold_offset", {})
        thresholds = [min(1.0, max(0.0, b + offsets.get(c, 0.0))) for c in range(k)]
    elif "threshold_offset" in per_class:
        raise ConfigError("threshold_offset[c] needs threshold_base in the same space")
    for name, values in per_class.items():
        current = list(changes.get(name, getattr(base, name, None)) or [])
        if name not in TrainConfig.field_names() or not isinstance(getattr(base, name), tuple | type(None)):
            raise ConfigError(f"space parameter '{name}[...]' does not name a per-class config field")
        for c, v in values.items():
            if c >= k:
                raise ConfigError(f"space parameter '{name}[{c}]': class {c} is out of range (the data has {k} classes)")
            while len(current) < k:
                current.append(current[-1] if current else 0.0)
            current[c] = v
        if name == "thresholds":
            thresholds = current
        else:
            changes[name] = current
    changes["thresholds"] = thresholds
    return TrainConfig.from_dict({**base.to_dict(), **changes})


@dataclass
class ParamInfo:
    """What the probe saw of one parameter."""

    name: str
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()


@dataclass
class SpaceReport:
    """The parameters a space can produce (over all its branches) and the constants it returns."""

    params: dict[str, ParamInfo] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)

    def upper(self, name: str, base: TrainConfig) -> float:
        """The largest value `name` can take: the range's top if searched, else the base value."""
        info = self.params.get(name)
        if info is not None and info.high is not None:
            return info.high
        return float(self.constants.get(name, getattr(base, name)))


class _Probe:
    """A stand-in trial that checks each suggest call and returns a value in its range."""

    def __init__(self, space_name: str, rng: random.Random, report: SpaceReport) -> None:
        self.space_name, self.rng, self.report = space_name, rng, report
        self.params: dict[str, Any] = {}

    def _check_name(self, name: str) -> None:
        m = _INDEXED.match(name)
        base_name = m["name"] if m else name
        if base_name in _DERIVED or base_name in TrainConfig.field_names():
            return
        raise ConfigError(f"space {self.space_name!r}: parameter {name!r} is not a config field")

    def _range(self, name: str, low: float, high: float, log: bool, kind: str) -> None:
        self._check_name(name)
        for bound in (low, high):
            if not isinstance(bound, int | float) or isinstance(bound, bool) or not math.isfinite(bound):
                raise ConfigError(f"space {self.space_name!r}: parameter {name!r} has a bad bound {bound!r}")
        if not low < high:
            what = "an empty" if low == high else "an inverted"
            raise ConfigError(f"space {self.space_name!r}: parameter {name!r} has {what} range [{low}, {high}]")
        if log and low <= 0:
            raise ConfigError(f"space {self.space_name!r}: parameter {name!r} is log-scaled but low={low} <= 0")
        self.report.params[name] = ParamInfo(name, kind, float(low), float(high), log)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        self._range(name, low, high, log, "float")
        v = self.rng.choice([low, high, self.rng.uniform(low, high)])
        self.params[name] = v
        return v

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self._range(name, low, high, log, "int")
        v = self.rng.choice([low, high, self.rng.randint(low, high)])
        self.params[name] = v
        return v

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self._check_name(name)
        choices = tuple(choices)
        if not choices:
            raise ConfigError(f"space {self.space_name!r}: parameter {name!r} has no choices")
        self.report.params[name] = ParamInfo(name, "categorical", choices=choices)
        v = self.rng.choice(choices)
        self.params[name] = v
        return v

    def __getattr__(self, item: str) -> Any:
        raise ConfigError(
            f"space {self.space_name!r} calls trial.{item}; a space may only call trial.suggest_float, "
            "suggest_int and suggest_categorical"
        )


def check_space(spec: str | SpaceFn, base: TrainConfig, ctx: SpaceContext, passes: int = 24) -> SpaceReport:
    """Run the space on probe trials (covering its branches) before launch; fail naming the culprit.

    Every parameter must name a config field, every range must be non-empty, and every sampled
    point (range ends included) must give a valid `TrainConfig`.
    """
    fn = get_space(spec)
    name = spec if isinstance(spec, str) else getattr(fn, "__name__", "space")
    report = SpaceReport()
    rng = random.Random(0)
    for _ in range(passes):
        probe = _Probe(name, rng, report)
        try:
            constants = call_space(fn, probe, ctx)
        except ConfigError:
            raise
        except Exception as exc:  # a user space that crashes: say which and why
            raise ConfigError(f"space {name!r} raised {type(exc).__name__}: {exc}") from None
        for key in constants:
            probe._check_name(key)
        report.constants.update(constants)
        try:
            apply_params(base, {**probe.params, **constants})
        except ConfigError as exc:
            raise ConfigError(f"space {name!r} can produce an invalid config: {exc}") from None
    return report
