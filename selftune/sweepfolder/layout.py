"""The sweep folder's layout and names: what the driver writes where, and the metric names it sorts by.

    <storage>/<name>/
        selftune_sweep.yaml     the driver's record: resolved sweep file, base config, data root, fingerprint
        optuna_journal.log      the Optuna study (JournalStorage), unless optuna_storage names another
        best_config.yaml        the best trial's exported config, written when the sweep ends
        shared_stage/           the shared first stage (a supervised run every `rounds` trial starts from)
        control/                the compute-matched supervised control (a run folder)
        verdict.json            the best self-training trial against the control, on val and test
        <trial folders>/        Ray's: params.json, result.json, checkpoint_*/, train/ (the loop's run folder),
                                named by `trial_dirname`: trial_004_1a2b3c4d_method=rounds_lr=0.0003
"""

from __future__ import annotations

import re
from typing import Any

SWEEP_FILE = "selftune_sweep.yaml"
JOURNAL_FILE = "optuna_journal.log"
BEST_CONFIG_FILE = "best_config.yaml"
STAGE_DIR = "shared_stage"
CONTROL_DIR = "control"  # sweeps before the verdict's confirmation: the one untuned control run
CONFIRM_DIR = "confirm"  # the verdict's confirmation runs: <arm>_seed<N>/ each
CONTROL_SEARCH_DIR = "control_search"  # the tuned supervised control search (a space without supervised trials)
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


TRIAL_DIR_PARAMS = 3  # searched values a trial folder's name shows
TRIAL_DIR_MAX = 72  # characters; Ray's default names run to ~150, which TensorBoard shows as run names
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+\-]")  # kept out of folder names


def _short_value(v: Any) -> str:
    """A value as a folder name shows it: strings whole (a cut `ema_self_train` would read as another method),
    floats to 3 significant digits."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return str(v) if isinstance(v, int) else f"{v:.3g}"


def trial_dirname(number: int | None, trial_id: str, params: dict[str, Any]) -> str:
    """A trial folder's (and TensorBoard run's) name: its number, its id, then the method and a few searched
    values, e.g. trial_004_1a2b3c4d_method=rounds_lr=0.0003. Short and readable; the id keeps it unique."""
    head = f"trial_{number:03d}" if number is not None else "trial"
    keys = sorted(params, key=lambda k: k != "method")[:TRIAL_DIR_PARAMS]
    name = _UNSAFE.sub("", f"{head}_{trial_id}")
    for k in keys:  # whole key=value parts only: a value cut short would read as another value
        part = _UNSAFE.sub("", f"{k.rsplit('/', 1)[-1]}={_short_value(params[k])}")
        if len(name) + 1 + len(part) > TRIAL_DIR_MAX:
            continue  # left out whole; a shorter one after it may still fit
        name += "_" + part
    return name


def trial_number_from_dirname(name: str, trial_id: str) -> int | None:
    """The trial's number from its folder name: selftune's `trial_dirname`, or Ray's default
    (<trainable>_<trial_id>_<number>_<params>_<date>) for sweeps written before it."""
    m = re.match(r"trial_(\d+)_" + re.escape(trial_id), name) or re.search(re.escape(trial_id) + r"_(\d+)_", name)
    return int(m.group(1)) if m else None


def experiment_path(storage: str, name: str) -> str:
    """The sweep folder of sweep `name` under `storage` (a local path or a URI)."""
    return storage.rstrip("/") + "/" + name


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)
