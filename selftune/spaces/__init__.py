"""Search spaces: small named define-by-run functions that only call `trial.suggest_*`.

Use one by name (`methods`, `thresholds`, `thresholds_independent`, `thresholds_shared`, `wide`,
`supervised`) or write your own `def my_space(trial, ctx)` and pass it as `module:function`.
"""

from selftune.spaces.library import (
    SPACES,
    SpaceContext,
    methods,
    supervised,
    thresholds,
    thresholds_independent,
    thresholds_shared,
    wide,
)
from selftune.spaces.params import SpaceReport, apply_params, call_space, check_space, get_space

__all__ = [
    "SPACES",
    "SpaceContext",
    "SpaceReport",
    "apply_params",
    "call_space",
    "check_space",
    "get_space",
    "methods",
    "supervised",
    "thresholds",
    "thresholds_independent",
    "thresholds_shared",
    "wide",
]
