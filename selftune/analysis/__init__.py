"""Offline analysis of a sweep folder (local, NFS, or s3:// / gs:// through pyarrow): no Ray cluster needed.

    from selftune.analysis import load_trials, load_history, load_study, analyze
    trials = load_trials("selftune_results/salak-v4")     # one row per trial: param.*, best.*, final.*, status
    history = load_history("selftune_results/salak-v4")   # one row per (trial_id, iteration)
    study = load_study("selftune_results/salak-v4")       # the Optuna study (an in-memory copy)
    result = analyze("selftune_results/salak-v4")         # tables, figures and report.html in PATH/analysis
    verdict = load_verdict("selftune_results/salak-v4")   # verdict.json (best trial vs supervised control) or None

`selftune analyze PATH` is the command-line version (docs/analysis.md). The names below are loaded on
first use, so importing this package (and `selftune --help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_METRIC": "selftune.analysis.tables",
    "STOPPED_BY_BUDGET": "selftune.analysis.tables",
    "Sweep": "selftune.analysis.tables",
    "available_metrics": "selftune.analysis.tables",
    "load_history": "selftune.analysis.tables",
    "load_sweep": "selftune.analysis.tables",
    "load_trials": "selftune.analysis.tables",
    "metric_mode": "selftune.analysis.tables",
    "method_table": "selftune.analysis.tables",
    "Verdict": "selftune.analysis.verdict",
    "load_verdict": "selftune.analysis.verdict",
    "TrialRecord": "selftune.sweepfolder",
    "read_sweep_meta": "selftune.sweepfolder",
    "read_trials": "selftune.sweepfolder",
    "Importance": "selftune.analysis.study",
    "analysis_study": "selftune.analysis.study",
    "load_study": "selftune.analysis.study",
    "param_importances": "selftune.analysis.study",
    "Analysis": "selftune.analysis.report",
    "analyze": "selftune.analysis.report",
}

__all__ = [
    "DEFAULT_METRIC",
    "STOPPED_BY_BUDGET",
    "Analysis",
    "Importance",
    "Sweep",
    "TrialRecord",
    "Verdict",
    "analysis_study",
    "analyze",
    "available_metrics",
    "load_history",
    "load_study",
    "load_sweep",
    "load_trials",
    "load_verdict",
    "method_table",
    "metric_mode",
    "param_importances",
    "read_sweep_meta",
    "read_trials",
]

if TYPE_CHECKING:
    from selftune.analysis.report import Analysis, analyze
    from selftune.analysis.study import Importance, analysis_study, load_study, param_importances
    from selftune.analysis.tables import (
        DEFAULT_METRIC,
        STOPPED_BY_BUDGET,
        Sweep,
        available_metrics,
        load_history,
        load_sweep,
        load_trials,
        method_table,
        metric_mode,
    )
    from selftune.analysis.verdict import Verdict, load_verdict
    from selftune.sweepfolder import TrialRecord, read_sweep_meta, read_trials


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selftune.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
