"""The persisted Optuna study of a sweep (no Ray here)."""

from __future__ import annotations

import optuna

from selftune.sweepfolder.journal import repair_journal


def open_optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """A JournalStorage file (`journal:PATH`) or an RDB URL (sqlite://, postgresql://, ...)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:")
        repair_journal(path)  # a torn last line (a crash, a full disk) would fail every read
        return optuna.storages.JournalStorage(JournalFileBackend(path))
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
