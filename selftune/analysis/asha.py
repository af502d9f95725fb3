"""The ASHA review: at each rung, which trials were cut, how they compared with those that went on, and
how well the values there predicted the final ones."""

from __future__ import annotations

import math

import pandas as pd

from selftune.analysis.tables import Sweep
from selftune.sweepfolder import FINISHED, STOPPED_BY_SCHEDULER


def value_at(history: pd.DataFrame, trial_id: str, metric: str, iteration: float) -> tuple[float, int] | None:
    """The metric at the first report at or after `iteration` (what ASHA saw at that rung)."""
    g = history[(history["trial_id"] == trial_id) & (history["iteration"] >= iteration)]
    if g.empty or metric not in g:
        return None
    row = g.iloc[0]
    v = row[metric]
    return (float(v), int(row["iteration"])) if pd.notna(v) else None


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = pd.Series(a).rank(), pd.Series(b).rank()
    if ra.nunique() < 2 or rb.nunique() < 2:
        return None
    return float(ra.corr(rb))


def _span(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    return f"{min(vals):.3f}" if len(vals) == 1 else f"{min(vals):.3f} to {max(vals):.3f}"


def asha_review(sweep: Sweep, rungs: list[float]) -> pd.DataFrame:
    """One row per ASHA rung: how many trials reached it and were cut there, their values against those of
    the trials that went on, where the eventual best trial ranked, and how well the values at the rung
    predicted the final ones (Spearman rank correlation over trials that ran to the end)."""
    t, h, metric = sweep.trials, sweep.history, sweep.metric
    sign = 1 if sweep.mode == "max" else -1
    finished = t[t["status"].isin(FINISHED)]
    best_id = finished["trial_id"].iloc[0] if len(finished) else None
    rows = []
    for m in rungs:
        at: dict[str, float] = {}
        for tid in t["trial_id"]:
            va = value_at(h, tid, metric, m)
            if va is not None:
                at[tid] = va[0]
        if not at:
            continue
        stopped = [tid for tid in at if t.loc[t["trial_id"] == tid, "status"].iloc[0] == STOPPED_BY_SCHEDULER
                   and int(t.loc[t["trial_id"] == tid, "iteration"].iloc[0]) == value_at(h, tid, metric, m)[1]]
        went_on = [tid for tid in at if tid not in stopped]
        ranked = sorted(at, key=lambda k: -sign * at[k])
        fin = [tid for tid in went_on if tid in set(finished["trial_id"])]
        finals = [float(finished.loc[finished["trial_id"] == tid, f"best.{metric}"].iloc[0]) for tid in fin]
        rows.append({
            "rung": int(m) if float(m).is_integer() else m,
            "reached": len(at),
            "stopped": len(stopped),
            "stopped_values": _span([at[k] for k in stopped]),
            "went_on_values": _span([at[k] for k in went_on]),
            "went_on_final": _span(finals),
            "best_trial_rank": f"{ranked.index(best_id) + 1} of {len(ranked)}" if best_id in at else "-",
            "spearman_rung_vs_final": _spearman([at[k] for k in fin], finals),
            "_stopped_ids": stopped,
            "_best_rank": (ranked.index(best_id) + 1, len(ranked)) if best_id in at else None,
            "_went_on_min": min((at[k] for k in went_on), default=None),
            "_stopped_max": max((at[k] for k in stopped), default=None),
        })
    return pd.DataFrame(rows)
