"""TensorBoard's HPARAMS tab for a sweep: every trial with its parameters and how it ended.

Ray's own TensorBoard logger is off (`adapter`): it wrote every metric a second time under `ray/tune/`
on another step axis (reports, not iterations) and listed only the trials that finished. The loop's
events in each trial's `train/` folder are the one record; when the sweep ends, this writes one
hparams summary into each of those folders, for every trial, with its selftune status. No Ray here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from selftune.sweepfolder import METRIC, STOPPED_BY_SCHEDULER, TRIAL_RUN_DIR, TrialRecord, who_stopped

HPARAM_METRICS = (METRIC, "best_val_miou", "val_loss")  # scalars the loop logs; the tab shows their last values


def trial_status(t: TrialRecord, rungs: list[float]) -> str:
    """The trial's outcome, an outside stop told apart as ASHA's or the budget's."""
    if t.outcome != STOPPED_BY_SCHEDULER or not t.results:
        return t.outcome
    last = float(t.results[-1].get("iteration", 0))
    prev = float(t.results[-2].get("iteration", 0)) if len(t.results) > 1 else 0.0
    return who_stopped(prev, last, rungs)


def _value(v: Any) -> Any:
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int | float):
        return float(v) if math.isfinite(float(v)) else str(v)
    return str(v)


def write_hparams(trials: list[TrialRecord], rungs: list[float]) -> int:
    """One hparams summary per trial folder with a local `train/` run (params, status); returns how many."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    written = 0
    statuses = sorted({trial_status(t, rungs) for t in trials})
    for t in trials:
        run = Path(t.path) / TRIAL_RUN_DIR
        if "://" in t.path or not run.is_dir():
            continue
        params = {k: _value(v) for k, v in t.params.items()}
        params["status"] = trial_status(t, rungs)
        params["trial_id"] = t.trial_id
        exp, ssi, sei = hparams(params, {m: float("nan") for m in HPARAM_METRICS},
                                hparam_domain_discrete={"status": statuses})
        writer = SummaryWriter(log_dir=str(run), filename_suffix=".hparams")
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        writer.close()
        written += 1
    return written


__all__ = ["trial_status", "write_hparams"]
