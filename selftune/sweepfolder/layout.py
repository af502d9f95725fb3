"""The sweep folder's layout and names: what the driver writes where, and the metric names it sorts by.

    <storage>/<name>/
        selftune_sweep.yaml     the driver's record: resolved sweep file, base config, data root, fingerprint
        optuna_journal.log      the Optuna study (JournalStorage), unless optuna_storage names another
        best_config.yaml        the best trial's exported config, written when the sweep ends
        shared_stage/           the shared first stage (a supervised run every `rounds` trial starts from)
        control/                the compute-matched supervised control (a run folder)
        verdict.json            the best self-training trial against the control, on val and test
        <trial folders>/        Ray's: params.json, result.json, checkpoint_*/, train/ (the loop's run folder)
"""

from __future__ import annotations

SWEEP_FILE = "selftune_sweep.yaml"
JOURNAL_FILE = "optuna_journal.log"
BEST_CONFIG_FILE = "best_config.yaml"
STAGE_DIR = "shared_stage"
CONTROL_DIR = "control"
VERDICT_FILE = "verdict.json"
TRIAL_RUN_DIR = "train"  # the loop's output folder inside a trial folder
ERROR_FILES = ("error.txt", "error.pkl")

METRIC = "val_miou"  # what ASHA compares at its rungs and trials are ranked by (the EMA model's val mIoU)
OBJECTIVE = "best_val_miou"  # what a finished trial is told to Optuna as
TIME_ATTR = "iteration"  # the sweep's time axis: optimizer steps, not report calls

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://")


def metric_mode(metric: str) -> str:
    """'min' for losses and gaps, 'max' for everything else (mIoU, IoU, F1, acceptance ratios): one rule for the
    sweep, export and analysis."""
    return "min" if ("loss" in metric or metric.endswith("gap")) else "max"


def experiment_path(storage: str, name: str) -> str:
    """The sweep folder of sweep `name` under `storage` (a local path or a URI)."""
    return storage.rstrip("/") + "/" + name


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)
