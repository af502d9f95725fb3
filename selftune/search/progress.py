"""The sweep's console: one line per finished trial and a one-line status every minute, instead of Ray's
boxed trial tables (1,052 of the demo's 1,175 lines were those tables).

The sweep key `verbose` picks the view: 0 prints nothing, 1 (the default) these lines, 2 and up Ray's own
tables (Ray's verbose 1, 2) without these lines. `ray_verbosity` maps one to the other.

No Ray here (only `adapter` imports `ray.tune`): `ProgressLines` has the hooks of Ray's `tune.Callback`, and
the adapter makes it one.

    trial 4 finished: 1a2b3c4d rounds, completed at iteration 600, best val_miou 0.4123 (new best)
    [3m20s] 4 of 12 trials finished, 2 running, 6 to start; best val_miou 0.4123 (trial 1a2b3c4d, rounds)
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from selftune.sweepfolder import ERRORED, METRIC, OUTCOME_WORDS, last_two, trial_outcome

STATUS_EVERY_S = 60.0  # seconds between status lines while trials run


def ray_verbosity(verbose: int) -> int:
    """Ray's RunConfig verbose for the sweep key `verbose`: silent for 0 and 1 (1 prints `ProgressLines`),
    Ray's tables (1, 2) for 2 and up."""
    return 0 if verbose <= 1 else min(2, verbose - 1)


def _elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _number(trial: Any) -> str:
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return head if head.isdigit() else "?"


def _method(trial: Any) -> str:
    params = dict(getattr(trial, "evaluated_params", None) or {})
    method = params.get("method") or (getattr(trial, "config", None) or {}).get("method")
    return f" {method}" if isinstance(method, str) else ""


class ProgressLines:
    """Prints `trial_line` when a trial ends and `status_line` every `every` seconds (and once at the end); its
    methods are `tune.Callback` hooks, called with Ray's Trial objects."""

    def __init__(self, metric: str = METRIC, mode: str = "max", *, rungs: list[float] | None = None,
                 every: float = STATUS_EVERY_S, file: Any = None) -> None:
        self.metric, self.sign = metric, (1.0 if mode == "max" else -1.0)
        self.rungs = list(rungs or [])
        self.every = every
        self.file = file
        self.start = time.monotonic()
        self.last_status = self.start
        self.best: dict[str, tuple[float, Any]] = {}  # trial id -> (best value, its iteration)
        self.reports: dict[str, list[dict[str, Any]]] = {}  # trial id -> its last two reports (`last_two`)
        self.incumbent: tuple[float, str, str] | None = None  # (value, trial id, method)
        self.finished = 0

    def _print(self, line: str) -> None:
        print(line, file=self.file or sys.stdout, flush=True)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        tid = trial.trial_id
        v = result.get(self.metric)
        it = result.get("iteration", result.get("training_iteration"))
        if isinstance(v, int | float) and math.isfinite(v) and (tid not in self.best or
                                                                 self.sign * v > self.sign * self.best[tid][0]):
            self.best[tid] = (float(v), it)
        self.reports[tid] = last_two(self.reports.get(tid, []), result)

    def _outcome(self, trial: Any, errored: bool) -> str:
        """As the summary, `selftune analyze` and the Optuna study say it (`trial_outcome`, the one rule)."""
        reports = last_two(self.reports.get(trial.trial_id, []), getattr(trial, "last_result", None) or None)
        return trial_outcome(reports, errored=errored, rungs=self.rungs)

    def _ended(self, trial: Any, errored: bool) -> None:
        self.finished += 1
        outcome = self._outcome(trial, errored)
        self._print(trial_line(trial, outcome, self.best.get(trial.trial_id), self.metric, self._is_new_best(trial)))

    def _is_new_best(self, trial: Any) -> bool:
        best = self.best.get(trial.trial_id)
        if best is None:
            return False
        if self.incumbent is None or self.sign * best[0] > self.sign * self.incumbent[0]:
            self.incumbent = (best[0], trial.trial_id, _method(trial).strip())
            return True
        return False

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended(trial, errored=True)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_status >= self.every:
            self.last_status = now
            self._print(self.status(trials, now))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._print(self.status(trials, time.monotonic()))

    def status(self, trials: list[Any], now: float) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        return status_line(now - self.start, counts, self.incumbent, self.metric)


def trial_line(trial: Any, outcome: str, best: tuple[float, Any] | None, metric: str, new_best: bool) -> str:
    """`trial 4 finished: 1a2b3c4d rounds, completed at iteration 600, best val_miou 0.4123 (new best)`."""
    last = getattr(trial, "last_result", None) or {}
    it = last.get("iteration", last.get("training_iteration"))
    where = f" at iteration {it}" if it is not None else ""
    score = f", best {metric} {best[0]:.4f}" + (f" at {best[1]}" if best[1] is not None and best[1] != it else "") \
        if best is not None else f", no {metric}"
    error = ""
    if outcome == ERRORED:
        path = getattr(trial, "path", None) or getattr(trial, "local_path", None)
        error = f"; see {path}/error.txt" if path else ""
    return (f"trial {_number(trial)} finished: {trial.trial_id}{_method(trial)}, {OUTCOME_WORDS.get(outcome, outcome)}"
            f"{where}{score}{' (new best)' if new_best else ''}{error}")


def status_line(elapsed: float, counts: dict[str, int], incumbent: tuple[float, str, str] | None,
                metric: str) -> str:
    """`[3m20s] 4 of 12 trials finished, 2 running, 6 to start; best val_miou 0.4123 (trial 1a2b3c4d, rounds)`,
    from Ray's trial statuses (TERMINATED, ERROR, RUNNING, PENDING, PAUSED)."""
    total = sum(counts.values())
    done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
    parts = [f"{done} of {total} trials finished"]
    if counts.get("ERROR"):
        parts[0] += f" ({counts['ERROR']} errored)"
    if counts.get("RUNNING"):
        parts.append(f"{counts['RUNNING']} running")
    waiting = counts.get("PENDING", 0) + counts.get("PAUSED", 0)
    if waiting:
        parts.append(f"{waiting} to start")
    best = (f"best {metric} {incumbent[0]:.4f} (trial {incumbent[1]}" + (f", {incumbent[2]}" if incumbent[2] else "")
            + ")") if incumbent else f"no {metric} yet"
    return f"[{_elapsed(elapsed)}] {', '.join(parts)}; {best}"


__all__ = ["STATUS_EVERY_S", "ProgressLines", "ray_verbosity", "status_line", "trial_line"]
