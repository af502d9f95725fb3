"""The one set of status words: how a training run says it ended, and how the sweep says a trial ended.

The loop reports `status` with every evaluation: RUNNING while it goes on, one of ENDED_BY_ITSELF in its last
report. The sweep adds the endings only it can see (a trial cut from outside, one that raised, one whose record
cannot be read); `selftune.sweepfolder.outcome.trial_outcome` is the one rule that reads a trial's ending from
its reports. No imports: the loop, the sweep folder, the search and analysis all use these.
"""

RUNNING = "running"  # the run goes on (a trial: still going, or pending, in a half-finished sweep)
COMPLETED = "completed"  # ran to max_iters
EARLY_STOPPED = "early_stopped"  # the loop's own patience ran out
DIVERGED = "diverged"  # a non-finite loss ended it
STOPPED_BY_SCHEDULER = "stopped_by_asha"  # the scheduler (ASHA) cut it while it was still running
STOPPED_BY_BUDGET = "stopped_by_budget"  # ended by the sweep (time_budget_s, budget_iters), not at an ASHA rung
ERRORED = "errored"  # it raised (or, finished, its last report names no status)
DAMAGED = "damaged"  # its result.json cannot be read: how it ended is unknown, and it is never read as anything else

FINISHED = (COMPLETED, EARLY_STOPPED)  # ended on their own with a value: told to Optuna as COMPLETE
ENDED_BY_ITSELF = (*FINISHED, DIVERGED)  # a run's final status: the loop ended it (its last report says which)
CUT = (STOPPED_BY_SCHEDULER, STOPPED_BY_BUDGET)  # ended from outside: told to Optuna as PRUNED
FAILED = (DIVERGED, ERRORED, DAMAGED)  # without a value worth ranking, whatever they reported before
OUTCOMES = (COMPLETED, EARLY_STOPPED, STOPPED_BY_SCHEDULER, STOPPED_BY_BUDGET, DIVERGED, ERRORED, RUNNING, DAMAGED)

__all__ = ["COMPLETED", "CUT", "DAMAGED", "DIVERGED", "EARLY_STOPPED", "ENDED_BY_ITSELF", "ERRORED", "FAILED",
           "FINISHED", "OUTCOMES", "RUNNING", "STOPPED_BY_BUDGET", "STOPPED_BY_SCHEDULER"]
