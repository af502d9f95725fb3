"""How a trial ended, from its last reported result: one rule for the searcher and for analysis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

COMPLETED = "completed"  # ran to max_iters
EARLY_STOPPED = "early_stopped"  # the loop's own patience ran out
STOPPED_BY_SCHEDULER = "stopped_by_asha"  # the scheduler (ASHA) cut it while it was still running
STOPPED_BY_BUDGET = "stopped_by_budget"  # ended by the sweep (time_budget_s, budget_iters), not at an ASHA rung
DIVERGED = "diverged"  # a non-finite loss ended it
ERRORED = "errored"  # it raised, or reported nothing
RUNNING = "running"  # still going (a half-finished sweep)
DAMAGED = "damaged"  # its result.json cannot be read: how it ended is unknown, and it is never read as anything else

OUTCOMES = (COMPLETED, EARLY_STOPPED, STOPPED_BY_SCHEDULER, STOPPED_BY_BUDGET, DIVERGED, ERRORED, RUNNING, DAMAGED)
FAILED = (DIVERGED, ERRORED, DAMAGED)  # without a value worth ranking, whatever they reported before
FINISHED = (COMPLETED, EARLY_STOPPED)  # ended on their own: told to Optuna as COMPLETE
CUT = (STOPPED_BY_SCHEDULER, STOPPED_BY_BUDGET)  # ended from outside: told to Optuna as PRUNED
OUTCOME_WORDS = {  # how the report, the summary and the console say each outcome
    COMPLETED: "completed", EARLY_STOPPED: "stopped by patience", STOPPED_BY_SCHEDULER: "stopped by ASHA",
    STOPPED_BY_BUDGET: "stopped by the sweep budget", DIVERGED: "diverged", ERRORED: "errored",
    RUNNING: "running or pending", DAMAGED: "record damaged",
}


def trial_outcome(last_result: dict[str, Any] | None, *, errored: bool, finished: bool = True) -> str:
    """Classify a trial from its last result.

    The loop reports `status: running` at ordinary evaluations and its final status in its last
    report, so a finished trial whose last status is still `running` was stopped from outside.
    """
    if errored:
        return ERRORED
    if not last_result or "status" not in last_result:
        return ERRORED if finished else RUNNING
    status = last_result["status"]
    if status in (*FINISHED, DIVERGED):
        return status
    return STOPPED_BY_SCHEDULER if finished else RUNNING


def optuna_state(outcome: str) -> str:
    """The Optuna trial state an outcome should be told as (honest bookkeeping)."""
    return {
        COMPLETED: "COMPLETE",
        EARLY_STOPPED: "COMPLETE",
        STOPPED_BY_SCHEDULER: "PRUNED",
        STOPPED_BY_BUDGET: "PRUNED",
        DIVERGED: "FAIL",
        ERRORED: "FAIL",
        DAMAGED: "FAIL",
    }[outcome]


def asha_milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """The iterations where ASHA compares trials (Ray's milestones: grace * rf^k below max_t)."""
    if grace_period <= 0 or max_t <= grace_period or reduction_factor <= 1:
        return []
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(n) if grace_period * reduction_factor**k < max_t]


def who_stopped(prev_iteration: float, last_iteration: float, rungs: Sequence[float]) -> str:
    """A trial stopped from outside: by ASHA if its last report crossed a rung (ASHA decides only there), else
    by the sweep's budget (time_budget_s, budget_iters)."""
    crossed = any(prev_iteration < m <= last_iteration for m in rungs)
    return STOPPED_BY_SCHEDULER if crossed else STOPPED_BY_BUDGET


def counts_mask(trials: pd.DataFrame, metric: str) -> pd.Series:
    """Which rows of a trial table (`selftune.analysis.load_trials`) count: a `best.<metric>` value and an outcome
    other than diverged or errored. The one rule the report, the advice, the tables and compare rank by."""
    import pandas as pd

    key = f"best.{metric}"
    if key not in trials:
        return pd.Series(False, index=trials.index)
    return ~trials["status"].isin(FAILED) & trials[key].notna()


def trials_that_count(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of `trials` that count (`counts_mask`), in the table's order (best first)."""
    return trials[counts_mask(trials, metric)]
