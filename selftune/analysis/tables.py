"""A sweep as two pandas tables: one row per trial (`load_trials`) and one row per report (`load_history`).

Column conventions of the trial table:

- `param.<name>`: the sampled parameters as Optuna named them (`param.lr`, `param.threshold_offset[3]`);
  a conditional parameter a trial did not sample is NaN.
- `best.<m>`: every metric at the trial's best evaluation (the report where `metric`, default
  `val_miou`, was best), so `best.val_iou/road` is the road IoU of the checkpoint worth keeping.
- `final.<m>`: every metric of the last report.
- `status`: completed | early_stopped | diverged | stopped_by_asha | stopped_by_budget | errored | running | damaged
  (`selftune.status`), read by the one rule the sweep's summary and its Optuna study use too
  (`selftune.sweepfolder.outcome.trial_outcome`); `ray_status` is Ray's own (TERMINATED, ERROR, RUNNING, PENDING, ...).
- `started_at`, `ended_at`: UTC timestamps, both `datetime64[ms, UTC]` (what trials.parquet keeps too).

The history table has every key of every report; the report's own `status` (`running` at ordinary
evaluations, how the run ended in its last one) is `report_status` there, so it is not taken for the trial's.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from selftune.errors import SelftuneError
from selftune.sweepfolder import (
    METRIC,
    OUTCOME_WORDS,
    OUTCOMES,
    SWEEP_FILE,
    TrialRecord,
    counts_mask,
    filesystem,
    metric_mode,
    read_sweep_meta,
    read_text,
    read_trials,
    trials_that_count,
)

DEFAULT_METRIC = METRIC

STATUS_ORDER = OUTCOMES
STATUS_WORDS = OUTCOME_WORDS

# Ray's bookkeeping in every report: not metrics of the loop.
RAY_KEYS = frozenset({
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration", "trial_id", "date",
    "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
    "iterations_since_restore", "experiment_tag", "iteration",
    "round",  # the loop's round counter (method rounds): an axis, not a metric to rank by
})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _fmt(v: Any) -> str:
    """A value as the report, the advice and the figures show it: a float to 4 significant digits, or 3 below
    0.01 and from 10,000 up (0.0003, 1e+30); NaN as "-"; anything else as str()."""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.4g}"
    return str(v)


def available_metrics(records: list[TrialRecord]) -> list[str]:
    """Numeric metrics the loop reported (Ray's bookkeeping left out), in first-seen order."""
    seen: dict[str, None] = {}
    for t in records:
        for r in t.results:
            for k, v in r.items():
                if k not in RAY_KEYS and _is_number(v):
                    seen.setdefault(k, None)
    return list(seen)


def check_metric(metric: str, records: list[TrialRecord]) -> None:
    names = available_metrics(records)
    if metric not in names:
        main = [n for n in names if "/" not in n]
        per_class = sorted({n.split("/", 1)[0] + "/<class>" for n in names if "/" in n})
        import difflib

        close = difflib.get_close_matches(metric.lower(), names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SelftuneError(
            f"metric {metric!r} is not reported by any trial{hint}; available: {', '.join(main + per_class)}"
        )


class NoResultsYet(SelftuneError):
    """A sweep folder where no trial has reported an evaluation yet (`analyze --watch` waits for one)."""


def check_has_results(path: str, records: list[TrialRecord]) -> None:
    if not any(t.results for t in records):
        what = f"{len(records)} trial(s), none has reported an evaluation yet" if records else "no trials yet"
        raise NoResultsYet(f"{path} has no trial with a finished evaluation to analyse ({what})")


@dataclass
class Sweep:
    """Everything read from one sweep folder, read once."""

    path: str
    meta: dict[str, Any]
    records: list[TrialRecord]
    metric: str
    mode: str
    trials: pd.DataFrame
    history: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.meta.get("sweep", {}).get("name") or posixpath.basename(self.path.rstrip("/")))

    @property
    def gpus_per_trial(self) -> float:
        return float(self.meta.get("sweep", {}).get("gpus_per_trial") or 0.0)

    @property
    def compute_column(self) -> str:
        """gpu_hours when the sweep used GPUs, else cpu_hours."""
        return "gpu_hours" if self.gpus_per_trial > 0 else "cpu_hours"


def locate_sweep(path: str, start: str | None = None) -> str:
    """A sweep folder given relative to where the sweep ran: `path` itself when it is a sweep folder (or a URI),
    else `path` under the nearest parent of `start` (default: the working folder) that holds it. So the notebook,
    which Jupyter runs in notebooks/, finds `selftune_results/demo`, which `selftune sweep --demo` wrote in the
    folder it ran from. Raises SelftuneError naming where it looked."""
    from pathlib import Path

    if "://" in path or Path(path).expanduser().is_absolute():
        return path
    here = Path(start or ".").resolve()
    looked = []
    for folder in (here, *here.parents):
        candidate = folder / path
        looked.append(str(candidate))
        if (candidate / SWEEP_FILE).is_file():
            return str(candidate)
    raise SelftuneError(f"no sweep folder {path} in {here} or any folder above it (looked at: {', '.join(looked[:4])}"
                        f"{', ...' if len(looked) > 4 else ''}); run `selftune sweep --demo` or set SELFTUNE_SWEEP")


def load_sweep(path: str, metric: str = DEFAULT_METRIC, mode: str | None = None) -> Sweep:
    """Read a sweep folder once: meta, trial records, both tables. Raises SelftuneError on bad input."""
    path = str(path)
    meta = read_sweep_meta(path)
    records = read_trials(path)
    check_has_results(path, records)
    check_metric(metric, records)
    mode = mode or metric_mode(metric)
    if mode not in ("max", "min"):
        raise SelftuneError(f"mode must be 'max' or 'min', got {mode!r}")
    return Sweep(path, meta, records, metric, mode, trials_frame(records, meta, metric, mode),
                 history_frame(records))


def load_trials(path: str, metric: str = DEFAULT_METRIC, mode: str | None = None) -> pd.DataFrame:
    """One row per trial: params (`param.*`), status, iteration reached, metrics at the best evaluation
    (`best.*`, best by `metric`) and at the last one (`final.*`), wall time and compute hours, the best
    checkpoint. Sorted best first (diverged, errored and unscored trials last)."""
    return load_sweep(path, metric, mode).trials


def load_history(path: str) -> pd.DataFrame:
    """Long format: one row per (trial_id, iteration) with every metric the trial reported, read from
    each trial's result.json (Ray's own `get_dataframe` keeps one row per trial)."""
    path = str(path)
    read_sweep_meta(path)
    records = read_trials(path)
    check_has_results(path, records)
    return history_frame(records)


def _best_index(results: list[dict[str, Any]], metric: str, mode: str) -> int | None:
    scored = [(r[metric], i) for i, r in enumerate(results) if _finite(r.get(metric))]
    if not scored:
        return None
    return (max(scored) if mode == "max" else min(scored, key=lambda p: (p[0], -p[1])))[1]


def _error_message(t: TrialRecord) -> str | None:
    if not t.error_file:
        return None
    fs, p = filesystem(t.error_file)
    try:
        lines = [line.strip() for line in read_text(fs, p).splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def _exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.File


TIME_COLUMNS = ("started_at", "ended_at")
TIME_DTYPE = "datetime64[ms, UTC]"


def trials_frame(records: list[TrialRecord], meta: dict[str, Any], metric: str, mode: str) -> pd.DataFrame:
    sweep = meta.get("sweep", {})
    cpus, gpus = float(sweep.get("cpus_per_trial") or 1.0), float(sweep.get("gpus_per_trial") or 0.0)
    rows = []
    for t in records:
        row: dict[str, Any] = {
            "trial_id": t.trial_id, "number": t.number, "status": t.outcome, "ray_status": t.ray_status,
        }
        row.update({f"param.{k}": v for k, v in t.params.items()})
        last = t.results[-1] if t.results else {}
        bi = _best_index(t.results, metric, mode)
        best = t.results[bi] if bi is not None else {}
        row["iteration"] = last.get("iteration", last.get("training_iteration"))
        row["reports"] = len(t.results)
        row["best_iteration"] = best.get("iteration")
        row.update({f"best.{k}": v for k, v in best.items() if k not in RAY_KEYS and _is_number(v)})
        row.update({f"final.{k}": v for k, v in last.items() if k not in RAY_KEYS and _is_number(v)})
        wall = last.get("time_total_s")
        row["wall_time_s"] = wall
        row["cpu_hours"] = wall * cpus / 3600 if _is_number(wall) else None
        row["gpu_hours"] = wall * gpus / 3600 if _is_number(wall) else None
        first = t.results[0] if t.results else {}
        if _is_number(first.get("timestamp")):
            row["started_at"] = float(first["timestamp"] - (first.get("time_this_iter_s") or 0))
            row["ended_at"] = float(last["timestamp"])
        ck = best.get("checkpoint_dir_name")
        row["checkpoint"] = next((c for c in t.checkpoints if ck and posixpath.basename(c) == ck), None)
        best_model = f"{t.path}/train/best_model_ema.pt"
        row["best_model"] = best_model if t.results and _exists(best_model) else None
        row["path"] = t.path
        row["node_id"] = last.get("node_id")
        row["message"] = t.damaged or (last.get("message") if isinstance(last.get("message"), str)
                                       else _error_message(t))
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("number", "iteration", "reports", "best_iteration"):
        if c in df:
            df[c] = df[c].astype("Int64")
    for c in TIME_COLUMNS:  # one unit for both (and what parquet keeps): UTC, to the millisecond
        if c in df:
            df[c] = pd.to_datetime(df[c], unit="s", utc=True).astype(TIME_DTYPE)
    df = _tidy_param_columns(df)
    key = f"best.{metric}"
    if key not in df:
        df[key] = float("nan")
    bad = ~counts_mask(df, metric)
    df = df.assign(_bad=bad, _v=df[key] if mode == "min" else -df[key])
    df = df.sort_values(["_bad", "_v", "trial_id"], na_position="last").drop(columns=["_bad", "_v"])
    front = ["trial_id", "number", "status", "ray_status", key, "best_iteration", "iteration", "reports"]
    params = [c for c in df.columns if c.startswith("param.")]
    rest = [c for c in df.columns if c not in front and c not in params]
    return df[front + params + rest].reset_index(drop=True)


def _tidy_param_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a parameter mixing numbers and strings becomes strings."""
    for c in [c for c in df.columns if c.startswith("param.")]:
        values = df[c].dropna()
        kinds = {type(v) for v in values}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return df


# a report's own `status` (running at ordinary evaluations, the run's end in its last) is not the trial's status
HISTORY_RENAMES = {"status": "report_status"}


def history_frame(records: list[TrialRecord]) -> pd.DataFrame:
    rows = []
    for t in records:
        for r in t.results:
            row = {"trial_id": t.trial_id}
            row.update({HISTORY_RENAMES.get(k, k): v for k, v in r.items()
                        if k not in ("trial_id", "config") and not isinstance(v, dict | list)})
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["trial_id", "iteration"])
    if "iteration" not in df:
        df["iteration"] = df.get("training_iteration")
    # a trial resumed from an older checkpoint reports some iterations twice: keep the later report
    df = df.drop_duplicates(["trial_id", "iteration"], keep="last")
    df = df.sort_values(["trial_id", "iteration"], kind="stable").reset_index(drop=True)
    front = ["trial_id", "iteration"]
    return df[front + [c for c in df.columns if c not in front]]


def method_table(sweep: Sweep) -> pd.DataFrame | None:
    """Per method (`param.method`, the `methods` space): trials, scored trials, the best value and its trial,
    best method first; None when the sweep did not search methods."""
    t = sweep.trials
    if "param.method" not in t or not t["param.method"].notna().any():
        return None
    key = f"best.{sweep.metric}"
    rows = []
    for method, g in t.groupby("param.method", sort=False):  # trials come best first, so g's first scored row wins
        scored = trials_that_count(g, sweep.metric)
        best = scored.iloc[0] if len(scored) else None
        rows.append({"method": method, "trials": len(g), "scored": len(scored),
                     f"best {sweep.metric}": float(best[key]) if best is not None else float("nan"),
                     "best trial": best["trial_id"] if best is not None else "-",
                     "statuses": ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().items())})
    df = pd.DataFrame(rows)
    value = df[f"best {sweep.metric}"]
    df = df.assign(_v=value if sweep.mode == "min" else -value).sort_values("_v", na_position="last", kind="stable")
    return df.drop(columns="_v").reset_index(drop=True)
