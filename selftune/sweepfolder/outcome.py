"""How a trial ended, from its reports: one rule for the summary, `selftune analyze`, the Optuna study, the progress
lines and TensorBoard's HPARAMS. The words themselves are `selftune.status`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from selftune.status import (
    COMPLETED,
    CUT,
    DAMAGED,
    DIVERGED,
    EARLY_STOPPED,
    ENDED_BY_ITSELF,
    ERRORED,
    FAILED,
    FINISHED,
    OUTCOMES,
    RUNNING,
    STOPPED_BY_BUDGET,
    STOPPED_BY_SCHEDULER,
)

if TYPE_CHECKING:
    import pandas as pd

OUTCOME_WORDS = {  # how the report, the summary and the console say each outcome
    COMPLETED: "completed", EARLY_STOPPED: "stopped by patience", STOPPED_BY_SCHEDULER: "stopped by ASHA",
    STOPPED_BY_BUDGET: "stopped by the sweep budget", DIVERGED: "diverged", ERRORED: "errored",
    RUNNING: "running or pending", DAMAGED: "record damaged",
}


def trial_outcome(reports: Sequence[dict[str, Any]], *, errored: bool, finished: bool = True,
                  rungs: Sequence[float] = ()) -> str:
    """How a trial ended, from its reports in order (the last two are enough) and the sweep's ASHA `rungs`.

    It raised: errored. The loop's last report names its own ending (completed, early_stopped, diverged): that.
    Not finished: running. Ended without an error before its first report: by the sweep's budget. Otherwise the
    loop was still `running` when it was stopped from outside: by ASHA when its last report crossed a rung (ASHA
    decides only there), by the sweep's budget (time_budget_s, budget_iters) when not.
    """
    if errored:
        return ERRORED
    if not reports:
        return STOPPED_BY_BUDGET if finished else RUNNING
    last = reports[-1]
    if "status" not in last:
        return ERRORED if finished else RUNNING
    if last["status"] in ENDED_BY_ITSELF:
        return str(last["status"])
    if not finished:
        return RUNNING
    it = last.get("iteration")
    prev = reports[-2].get("iteration", 0) if len(reports) > 1 else 0
    if not _is_number(it) or not _is_number(prev):
        return STOPPED_BY_SCHEDULER  # where it stopped is unknown
    return who_stopped(float(prev), float(it), rungs)


def last_two(reports: Sequence[dict[str, Any]], report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The last two reports once `report` came (what `trial_outcome` needs, kept by those who see reports one at a
    time); `report` at the iteration of the last one replaces it (Ray hands the last report over twice)."""
    kept = list(reports[-2:])
    if not report:
        return kept
    if kept and kept[-1].get("iteration") == report.get("iteration"):
        kept.pop()
    return [*kept[-1:], report]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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


def sweep_rungs(meta: dict[str, Any]) -> list[float]:
    """The iterations where the sweep's ASHA compared trials, from its record (selftune_sweep.yaml); none without
    ASHA or when the record lacks them."""
    sweep = meta.get("sweep") if isinstance(meta.get("sweep"), dict) else {}
    if sweep.get("scheduler", "asha") != "asha":
        return []
    try:
        grace, max_t = float(meta["grace_period"]), float(meta["max_t"])
        rf = float(sweep.get("reduction_factor") or 3.0)
    except (KeyError, TypeError, ValueError):
        return []
    return asha_milestones(grace, max_t, rf)


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


__all__ = ["COMPLETED", "CUT", "DAMAGED", "DIVERGED", "EARLY_STOPPED", "ENDED_BY_ITSELF", "ERRORED", "FAILED",
           "FINISHED", "OUTCOMES", "OUTCOME_WORDS", "RUNNING", "STOPPED_BY_BUDGET", "STOPPED_BY_SCHEDULER",
           "asha_milestones", "counts_mask", "last_two", "optuna_state", "sweep_rungs", "trial_outcome", "trials_that_count",
           "who_stopped"]
