"""The persisted Optuna study of a sweep (no Ray here)."""

from __future__ import annotations

import optuna

from selftune.status import CUT, ERRORED, FAILED, STOPPED_BY_BUDGET
from selftune.sweepfolder.journal import repair_journal
from selftune.sweepfolder.outcome import optuna_state


def open_optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """A JournalStorage file (`journal:PATH`) or an RDB URL (sqlite://, postgresql://, ...)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:")
        repair_journal(path)  # a torn last line (a crash, a full disk) would fail every read
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    return optuna.storages.RDBStorage(url)


NOT_STARTED = "not_started"  # selftune_status of an enqueued trial the sweep ended before starting


def close_open_trials(url: str, study_name: str, outcomes: dict[str, str] | None = None) -> int:
    """After a sweep ends, leave no trial of its study open. Trials Ray stopped without a completion (time or
    iteration budget) get the outcome the sweep folder gives them (`outcomes`: Ray trial id -> the one rule,
    `TrialRecord.outcome`, so the study names them as the summary and `selftune analyze` do) when it is a cut or a
    failure; without one, stopped by the budget if they reported an evaluation, errored if not (PRUNED or FAIL).
    Trials still WAITING (enqueued for the methods' fair share, never asked for because the sweep ended first) are
    FAIL, with Optuna's `fail_reason` and selftune_status `not_started` saying why: optuna-dashboard showed them
    pending for good.
    Returns how many were closed."""
    study = optuna.load_study(study_name=study_name, storage=open_optuna_storage(url))
    closed = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        outcome = (outcomes or {}).get(str(t.user_attrs.get("ray_trial_id")))
        if outcome not in (*CUT, *FAILED):
            outcome = STOPPED_BY_BUDGET if t.intermediate_values else ERRORED
        study._storage.set_trial_user_attr(t._trial_id, "selftune_status", outcome)
        study.tell(t.number, state=getattr(optuna.trial.TrialState, optuna_state(outcome)))
        closed += 1
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        fixed = t.system_attrs.get("fixed_params") or {}  # what enqueue_trial fixed (the method)
        params = ", ".join(f"{k}={v}" for k, v in fixed.items()) if isinstance(fixed, dict) and fixed else "no params"
        why = (f"never started: enqueued ({params}) so that every method is tried before TPE chooses, but the sweep "
               "ended (its num_samples, time or iteration budget) before reaching it")
        study._storage.set_trial_system_attr(t._trial_id, "fail_reason", why)  # Optuna's own key for why a trial failed
        study._storage.set_trial_user_attr(t._trial_id, "selftune_status", NOT_STARTED)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)  # tell() refuses WAITING
        closed += 1
    return closed
