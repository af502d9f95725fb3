"""TensorBoard's HPARAMS tab for a sweep: every trial with its parameters and how it ended.

Ray's own TensorBoard logger is off (`adapter`): it wrote every metric a second time under `ray/tune/`
on another step axis (reports, not iterations) and listed only the trials that finished. The loop's
events in each trial's `train/` folder are the one record; when the sweep ends, this writes one
hparams summary into each of those folders, for every trial, with its selftune status. No Ray here.

TensorBoard takes its columns from the first experiment summary it finds, so every run declares the same
one: the union of all trials' knobs. A sweep over methods has knobs only some trials have; a run declaring
just its own trial's (a supervised trial's, say) would hide every self-training knob. Each trial's session
then holds only the knobs it has (an empty cell for the others).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from selftune.sweepfolder import METRIC, TRIAL_RUN_DIR, TrialRecord

HPARAM_METRICS = (METRIC, "best_val_miou", "val_loss")  # scalars the loop logs; the tab shows their last values


def _value(v: Any) -> Any:
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int | float):
        return float(v) if math.isfinite(float(v)) else str(v)
    return str(v)


def _trial_hparams(t: TrialRecord) -> dict[str, Any]:
    params = {k: _value(v) for k, v in t.params.items()}
    params["status"] = t.outcome  # as the summary, `selftune analyze` and the Optuna study say it
    params["trial_id"] = t.trial_id
    return params


def declared_hparams(trials: list[TrialRecord]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The union of every trial's knobs (a value of each, which sets its type) and, for strings, every value seen
    (the HPARAMS tab's filter choices)."""
    union: dict[str, Any] = {}
    seen: dict[str, dict[Any, None]] = {}
    for t in trials:
        for k, v in _trial_hparams(t).items():
            union.setdefault(k, v)
            if isinstance(v, str) and k != "trial_id":
                seen.setdefault(k, {})[v] = None
    discrete = {k: sorted(vs) for k, vs in seen.items() if isinstance(union[k], str)}
    return union, discrete


def write_hparams(trials: list[TrialRecord]) -> int:
    """One hparams summary per trial folder with a local `train/` run (params, status); returns how many.
    Every run declares the union of the trials' knobs (`declared_hparams`); each session holds its own."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    written = 0
    metrics = {m: float("nan") for m in HPARAM_METRICS}
    union, discrete = declared_hparams(trials)
    exp, _, _ = hparams(union, metrics, hparam_domain_discrete=discrete)
    for t in trials:
        run = Path(t.path) / TRIAL_RUN_DIR
        if "://" in t.path or not run.is_dir():
            continue
        _, ssi, sei = hparams(_trial_hparams(t), metrics)
        writer = SummaryWriter(log_dir=str(run), filename_suffix=".hparams")
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        writer.close()
        written += 1
    return written


__all__ = ["declared_hparams", "write_hparams"]
