"""The persisted Optuna study of a sweep (no Ray here)."""

from __future__ import annotations

import optuna


def open_optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """A JournalStorage file (`journal:PATH`) or an RDB URL (sqlite://, postgresql://, ...)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(url)


def close_open_trials(url: str, study_name: str) -> int:
    """After a sweep ends, tell Optuna about trials Ray stopped without a completion (time or
    iteration budget): PRUNED if they reported an evaluation, FAIL if not. Returns how many."""
    study = optuna.load_study(study_name=study_name, storage=open_optuna_storage(url))
    closed = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        state = optuna.trial.TrialState.PRUNED if t.intermediate_values else optuna.trial.TrialState.FAIL
        study._storage.set_trial_user_attr(t._trial_id, "selftune_status",
                                           "stopped_by_budget" if t.intermediate_values else "errored")
        study.tell(t.number, state=state)
        closed += 1
    return closed
