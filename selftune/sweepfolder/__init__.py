"""The sweep folder: its layout, how trials end, the metric names, and reading trials and meta.

`selftune.search` writes a sweep folder and `selftune.analysis` reads one; both import this
package and neither imports the other. No Ray here: folders are read through pyarrow, so a sweep
on s3:// or gs:// reads the same as one on disk.
"""

from selftune.sweepfolder.layout import (
    BEST_CONFIG_FILE,
    CONTROL_DIR,
    ERROR_FILES,
    JOURNAL_FILE,
    METRIC,
    OBJECTIVE,
    REMOTE_SCHEMES,
    STAGE_DIR,
    SWEEP_FILE,
    TIME_ATTR,
    TRIAL_RUN_DIR,
    VERDICT_FILE,
    experiment_path,
    is_remote,
    metric_mode,
)
from selftune.sweepfolder.outcome import (
    COMPLETED,
    DIVERGED,
    EARLY_STOPPED,
    ERRORED,
    OUTCOMES,
    RUNNING,
    STOPPED_BY_BUDGET,
    STOPPED_BY_SCHEDULER,
    asha_milestones,
    optuna_state,
    trial_outcome,
    who_stopped,
)
from selftune.sweepfolder.trials import (
    TrialRecord,
    as_uri,
    filesystem,
    read_sweep_meta,
    read_text,
    read_trials,
    read_verdict,
)

__all__ = [
    "BEST_CONFIG_FILE",
    "COMPLETED",
    "CONTROL_DIR",
    "DIVERGED",
    "EARLY_STOPPED",
    "ERRORED",
    "ERROR_FILES",
    "JOURNAL_FILE",
    "METRIC",
    "OBJECTIVE",
    "OUTCOMES",
    "REMOTE_SCHEMES",
    "RUNNING",
    "STAGE_DIR",
    "STOPPED_BY_BUDGET",
    "STOPPED_BY_SCHEDULER",
    "SWEEP_FILE",
    "TIME_ATTR",
    "TRIAL_RUN_DIR",
    "VERDICT_FILE",
    "TrialRecord",
    "as_uri",
    "asha_milestones",
    "experiment_path",
    "filesystem",
    "is_remote",
    "metric_mode",
    "optuna_state",
    "read_sweep_meta",
    "read_text",
    "read_trials",
    "read_verdict",
    "trial_outcome",
    "who_stopped",
]
