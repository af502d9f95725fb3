"""Offline analysis of a sweep folder (local, NFS, or s3:// / gs:// through pyarrow): no Ray cluster needed.

    from selftune.analysis import load_trials, load_history, load_study, analyze
    trials = load_trials("selftune_results/salak-v4")     # one row per trial: param.*, best.*, final.*, status
    history = load_history("selftune_results/salak-v4")   # one row per (trial_id, iteration)
    study = load_study("selftune_results/salak-v4")       # the Optuna study (an in-memory copy)
    result = analyze("selftune_results/salak-v4")         # tables, figures and report.html in PATH/analysis
    verdict = load_verdict("selftune_results/salak-v4")   # verdict.json (best trial vs supervised control) or None

`selftune analyze PATH` is the command-line version (docs/analysis.md).
"""

from selftune.analysis.report import Analysis, analyze
from selftune.analysis.study import Importance, analysis_study, load_study, param_importances
from selftune.analysis.tables import (
    DEFAULT_METRIC,
    Sweep,
    available_metrics,
    load_history,
    load_sweep,
    load_trials,
    method_table,
    metric_mode,
)
from selftune.analysis.verdict import Verdict, load_verdict
from selftune.sweepfolder import STOPPED_BY_BUDGET, TrialRecord, read_sweep_meta, read_trials

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
