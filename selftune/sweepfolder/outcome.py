"""How a trial ended, from its last reported result: one rule for the searcher and for analysis."""

from __future__ import annotations

from typing import Any

COMPLETED = "completed"  # ran to max_iters
EARLY_STOPPED = "early_stopped"  # the loop's own patience ran out
STOPPED_BY_SCHEDULER = "stopped_by_asha"  # the scheduler (ASHA) cut it while it was still running
STOPPED_BY_BUDGET = "stopped_by_budget"  # ended by the sweep (time_budget_s, budget_iters), not at an ASHA rung
DIVERGED = "diverged"  # a non-finite loss ended it
ERRORED = "errored"  # it raised, or reported nothing
RUNNING = "running"  # still going (a half-finished sweep)

OUTCOMES = (COMPLETED, EARLY_STOPPED, STOPPED_BY_SCHEDULER, STOPPED_BY_BUDGET, DIVERGED, ERRORED, RUNNING)


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
    if status in (COMPLETED, EARLY_STOPPED, DIVERGED):
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
    }[outcome]
