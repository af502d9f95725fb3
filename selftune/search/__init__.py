"""Hyperparameter search: Ray Tune + Optuna + ASHA around the self-training loop.

    from selftune.search import SweepConfig, run_sweep
    summary = run_sweep(SweepConfig(space="thresholds", num_samples=16))

The driver reads one module at a time: `plan` (the checks, one SweepPlan), `ray_setup`, `stage` (the shared
stage), `adapter` (the trials as a Ray Tune experiment), `confirm` (the verdict's runs), `run` (run, resume, finish).
Only `selftune.search.adapter` imports `ray.tune`; importing this package does not import Ray.
"""

from selftune.search.export import export_best, rank_trials
from selftune.search.plan import SweepPlan, plan_sweep
from selftune.search.run import SweepSummary, resume_sweep, run_sweep
from selftune.search.sweepfile import SweepConfig, demo_sweep
from selftune.sweepfolder import trial_outcome

__all__ = [
    "SweepConfig",
    "SweepPlan",
    "SweepSummary",
    "demo_sweep",
    "export_best",
    "plan_sweep",
    "rank_trials",
    "resume_sweep",
    "run_sweep",
    "trial_outcome",
]
