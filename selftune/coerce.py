"""One rule for turning a value read from YAML, JSON, the command line or Optuna into a field's type: the train
config (`TrainConfig.from_dict`) and the sweep file (`SweepConfig`) both convert with `coerce`, and refuse what
does not convert naming the key, the value and the fix."""

from __future__ import annotations

import contextlib
import math
import re
import types
import typing
from typing import Any

from selftune.errors import ConfigError

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(hours?|h|minutes?|min|m|seconds?|sec|s)?\s*", re.IGNORECASE)
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(key: str, text: str) -> float:
    """Seconds from "90", "90s", "10m", "10 min", "1h30m", "1.5h"; a ConfigError naming `key` otherwise."""
    total, pos, parts = 0.0, 0, 0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None or m.end() == pos:
            break
        unit = (m.group(2) or "s")[0].lower()
        total += float(m.group(1)) * _UNIT_S[unit]
        pos, parts = m.end(), parts + 1
    if pos != len(text) or parts == 0:
        raise ConfigError(f"{key} must be seconds or a duration such as 90s, 10m, 1h30m; got {text!r}")
    return total


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` as key `key`'s type `hint` (`int`, `float`, `bool`, `str`, `dict[...]`, `tuple[X, ...]`, any of them
    `| None`), or a ConfigError naming the key, the value and the fix.

    Quoted numbers convert ('3', YAML 1.1's `3e-4`), so do durations for the `_s` keys ("10m", "1h30m") and
    comma lists for tuples ("64,32,16"); a whole-valued float is a whole number; NaN and infinities are refused;
    a string is never read as true or false (YAML reads "maybe" as a string).
    """
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be null (leave the key out for its default)")
    if optional:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else hint
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str) and "," in value:  # "64,32,16,16,16": a list from a space's categorical or --set
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list of numbers, got {value!r}")
        return tuple(coerce(f"{key}[{i}]", v, typing.get_args(hint)[0]) for i, v in enumerate(value))
    kind = origin or hint  # dict[str, Any] -> dict
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, str):  # '3' (a quoted number)
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            value = parse_duration(key, value) if key.endswith("_s") else _number(key, value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            extra = " (leave the key out for no limit)" if key.endswith("_s") else ""
            raise ConfigError(f"{key} must be a finite number, got {value!r}{extra}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}; quote it in YAML: {key}: '{value}'")
        return value
    if kind is dict and not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
    return value


def _number(key: str, text: str) -> float:
    try:  # YAML 1.1 reads `3e-4` (no dot) as a string
        return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {text!r}") from None


__all__ = ["coerce", "parse_duration"]
