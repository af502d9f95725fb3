"""What to run next: short, data-derived advice on an analysed sweep (plain text; `backticks` mark commands).

Each rule reads one topic off a `Findings` and returns its lines, or an empty list when it has nothing to
say. `next_steps` runs the rules in `RULES` order, the order the report and the summary list them in.
The first rules, `ALERTS`, say when a sweep failed or is too small to read (trial records that cannot be read,
no class learned beyond the majority one, classes at IoU 0 in every top trial, most trials stopped by patience,
too few trials):
the report leads with them, and range advice is held back while the sweep failed or is too small.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pandas as pd

from selftune.analysis.tables import STATUS_WORDS, Sweep, _fmt
from selftune.sweepfolder import (
    DAMAGED,
    DIVERGED,
    EARLY_STOPPED,
    ERRORED,
    FAILED,
    RUNNING,
    STOPPED_BY_BUDGET,
    STOPPED_BY_SCHEDULER,
    trials_that_count,
)

if TYPE_CHECKING:
    from selftune.analysis.study import Importance

LEARNED_IOU = 0.05  # a class with val IoU above this counts as learned
DEAD_IOU = 0.01  # a class at or below this is "at IoU 0"
MIN_TRIALS_FOR_RANGES = 8  # scored trials before any range is widened or narrowed
MOSTLY = 0.5  # "most trials": more than this share of the trials that ended
IOU_PREFIX = "best.val_iou/"


@dataclass
class Findings:
    """What the rules read: the sweep, and what `analyze` computed from it."""

    sweep: Sweep
    importance: Importance
    dists: dict[str, Any]  # parameter -> its Optuna distribution
    asha: pd.DataFrame  # asha_review(...)
    key_params: list[str]  # the most important varied parameters, most important first

    @property
    def trials(self) -> pd.DataFrame:
        return self.sweep.trials

    @property
    def metric(self) -> str:
        return self.sweep.metric

    @cached_property
    def counts(self) -> pd.Series:
        """Trials per status."""
        return self.trials["status"].value_counts()

    @cached_property
    def ranked(self) -> pd.DataFrame:
        """The trials with a score that neither diverged nor errored, best first."""
        return trials_that_count(self.trials, self.metric)

    @cached_property
    def top(self) -> pd.DataFrame:
        """The best quarter of the ranked trials, at least 3."""
        return self.ranked.head(max(3, math.ceil(len(self.ranked) / 4)))

    @cached_property
    def class_columns(self) -> list[str]:
        """`best.val_iou/<class>`: each class's val IoU at the trial's best evaluation."""
        return [c for c in self.trials.columns if c.startswith(IOU_PREFIX)]

    @cached_property
    def num_classes(self) -> int:
        return len(self.class_columns) or len(self.sweep.meta.get("class_names") or [])

    @cached_property
    def learned(self) -> dict[str, float] | None:
        """The classes the best trial learned (val IoU above LEARNED_IOU), or None without per-class IoU."""
        if not len(self.ranked) or not self.class_columns:
            return None
        b = self.ranked.iloc[0]
        ious = {c.removeprefix(IOU_PREFIX): pd.to_numeric(b[c], errors="coerce") for c in self.class_columns}
        return {c: float(v) for c, v in ious.items() if pd.notna(v) and v > LEARNED_IOU}

    @cached_property
    def nothing_learned(self) -> bool:
        """No class learned beyond the majority one: at most one class above LEARNED_IOU in the best trial, or,
        without per-class IoU, a best val mIoU no higher than predicting one class everywhere can score (1/K)."""
        if not len(self.ranked):
            return False
        if self.learned is not None:
            return len(self.learned) <= 1
        miou = pd.to_numeric(self.ranked.iloc[0].get("best.val_miou"), errors="coerce")
        return bool(self.num_classes > 1 and pd.notna(miou) and miou <= 1 / self.num_classes)

    @property
    def ranges_ok(self) -> bool:
        """Range advice needs enough scored trials, and trials that learned something."""
        return len(self.ranked) >= MIN_TRIALS_FOR_RANGES and not self.nothing_learned


def _position(value: float, dist: Any) -> float | None:
    """Where a value lies in its range, 0 (low end) to 1 (high end); log ranges in log space."""
    lo, hi = getattr(dist, "low", None), getattr(dist, "high", None)
    if lo is None or hi is None or hi <= lo or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if getattr(dist, "log", False) and lo > 0 and value > 0:
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (float(value) - lo) / (hi - lo)


# ---------------------------------------------------------------------- the alerts: read these first


def _data_check(f: Findings) -> str:
    return f"`selftune data check {f.sweep.meta.get('data_root') or 'DATA'}`"


def damaged_records(f: Findings) -> list[str]:
    """Trials whose result.json cannot be read: left out of every ranking, their files named."""
    bad = f.trials[f.trials["status"] == DAMAGED]
    if not len(bad):
        return []
    files = "; ".join(str(r.message) if isinstance(r.message, str) else str(r.trial_id) for r in bad.itertuples())
    return [f"{len(bad)} trial(s) have a record that cannot be read, so how they ended is unknown and they are left "
            f"out of the ranking: {files}. Copy those trial folders again from where the sweep ran."]


def nothing_learned(f: Findings) -> list[str]:
    """No class learned beyond the majority (background) one: the trials rank noise."""
    if not f.nothing_learned:
        return []
    b = f.ranked.iloc[0]
    if f.learned is None:
        k = f.num_classes
        what = (f"its val mIoU {float(b['best.val_miou']):.3f} is no more than predicting one class everywhere can "
                f"score (at most 1/{k} = {1 / k:.3f})")
    elif f.learned:
        (name, iou), = f.learned.items()
        what = (f"only {name} (IoU {iou:.2f}), presumably the majority class, is above IoU {LEARNED_IOU}; every other "
                "class is at about 0")
    else:
        what = f"no class is above IoU {LEARNED_IOU}"
    return [f"No class was learned beyond the majority one: in the best trial ({b['trial_id']}) {what}. The trials "
            "rank noise, so no range advice follows: check the labels and the class count with "
            f"{_data_check(f)}, then lr, max_iters and the loss before sweeping again."]


def dead_classes(f: Findings) -> list[str]:
    """Classes at IoU 0 in every top trial (when something else was learned): no searched setting learns them."""
    if f.nothing_learned or not len(f.top) or not f.class_columns:
        return []
    top = f.top
    dead = []
    for c in f.class_columns:
        v = pd.to_numeric(top[c], errors="coerce")
        if v.notna().all() and (v <= DEAD_IOU).all():  # NaN: the class is in neither truth nor prediction
            dead.append(c.removeprefix(IOU_PREFIX))
    if not dead:
        return []
    return [f"{len(dead)} of {f.num_classes} classes are at IoU 0 in every one of the top {len(top)} trials: "
            f"{', '.join(dead)}. No setting this sweep searched learns them, and ranking by mean IoU hides it: check "
            f"that they have labelled pixels ({_data_check(f)}), weight them up (class_weighting: explicit, "
            "class_weights) or lower their pseudo-label thresholds."]


def mostly_patience(f: Findings) -> list[str]:
    """Most trials stopped by their own patience: their scores say when they stalled, not which ranges are good."""
    early = int(f.counts.get(EARLY_STOPPED, 0))
    ended = int((f.trials["status"] != RUNNING).sum())
    if early < 2 or early <= MOSTLY * ended:
        return []
    return [f"Most trials stopped by their own patience: {early} of {ended} ended before max_t because "
            f"{f.metric} stopped improving for `patience` evaluations. Their scores say when they stalled more than "
            "which ranges are good: look at the learning curves, then raise patience (or lower lr) before "
            "reading the ranges."]


def too_few_trials(f: Findings) -> list[str]:
    """Fewer scored trials than range advice needs."""
    n = len(f.ranked)
    if n >= MIN_TRIALS_FOR_RANGES or f.nothing_learned or not n:
        return []
    return [f"Too few trials to advise on ranges: {n} scored trial(s), and range advice needs at least "
            f"{MIN_TRIALS_FOR_RANGES}. Run more trials (num_samples) before widening or narrowing any range."]


# ---------------------------------------------------------------------- the rules, in report order


def best_trial(f: Findings) -> list[str]:
    """The best trial so far and how to reuse it."""
    if not len(f.ranked):
        return []
    b, metric = f.ranked.iloc[0], f.metric
    ps = ", ".join(f"{p}={_fmt(b.get(f'param.{p}'))}" for p in f.key_params[:4])
    text = (f"Best so far: trial {b['trial_id']} ({STATUS_WORDS.get(b['status'], b['status'])}), "
            f"{metric} {b[f'best.{metric}']:.4f} at iteration {b['best_iteration']} ({ps}).")
    if f.nothing_learned:  # not a base config worth keeping
        return [text]
    return [f"{text} Export it with `selftune export {f.sweep.path} --out best.yaml` and use it as base_config of the "
            "next sweep."]


def still_improving(f: Findings) -> list[str]:
    """The best trial's best evaluation is its last one, at max_t, and its metric was still moving the right way."""
    max_t = f.sweep.meta.get("max_t")
    if not len(f.ranked):
        return []
    b, metric = f.ranked.iloc[0], f.metric
    h = f.sweep.history[f.sweep.history["trial_id"] == b["trial_id"]]
    if max_t and b["best_iteration"] is not pd.NA and int(b["best_iteration"]) >= int(max_t) and len(h) >= 2:
        prev = h[metric].iloc[-2]
        if pd.notna(prev) and (h[metric].iloc[-1] - prev) * (1 if f.sweep.mode == "max" else -1) > 0:
            return [f"The best trial was still improving at max_t ({max_t} iterations): a longer run "
                    "(max_iters, or --max-t) will likely gain more."]
    return []


def param_ranges(f: Findings) -> list[str]:
    """For the 3 key parameters: where the best trials sit in the searched range (widen or narrow it)."""
    if not f.ranges_ok:
        return []
    out, top = [], f.top
    for p in f.key_params[:3]:
        d = f.dists.get(p)
        if d is None or not len(top):
            continue
        imp = f" (importance {f.importance.values[p]:.2f})" if p in f.importance.values else ""
        best_v = top.iloc[0].get(f"param.{p}")
        if hasattr(d, "choices"):
            used = ", ".join(sorted({_fmt(v) for v in top[f"param.{p}"].dropna()}))
            out.append(f"{p}{imp}: best value {_fmt(best_v)}; the top {len(top)} trials used {used} "
                       f"(choices: {', '.join(_fmt(c) for c in d.choices)}).")
            continue
        pos = _position(best_v, d)
        vals = pd.to_numeric(top[f"param.{p}"], errors="coerce").dropna()
        span = f"{_fmt(float(vals.min()))} to {_fmt(float(vals.max()))}" if len(vals) else "-"
        rng = f"[{_fmt(d.low)}, {_fmt(d.high)}]" + (" log" if getattr(d, "log", False) else "")
        if pos is None:
            continue
        if pos >= 0.9:
            out.append(f"{p}{imp}: the best value {_fmt(best_v)} is at the upper end of its range {rng}; "
                       "widen the range upward.")
        elif pos <= 0.1:
            out.append(f"{p}{imp}: the best value {_fmt(best_v)} is at the lower end of its range {rng}; "
                       "widen the range downward.")
        else:
            out.append(f"{p}{imp}: the best value {_fmt(best_v)} lies inside its range {rng}; the top "
                       f"{len(top)} trials span {span}: a follow-up sweep can narrow the range to about that.")
    return out


def pinned_offsets(f: Findings) -> list[str]:
    """Two or more per-class threshold offsets of the best trial at their bounds."""
    if not f.ranges_ok:
        return []
    pinned = []
    for p, d in f.dists.items():
        if p.startswith("threshold_offset[") and len(f.top):
            pos = _position(f.top.iloc[0].get(f"param.{p}"), d)
            if pos is not None and (pos >= 0.95 or pos <= 0.05):
                pinned.append(p)
    if len(pinned) < 2:
        return []
    return [f"{len(pinned)} per-class threshold offsets of the best trial sit at their bounds "
            f"({', '.join(pinned)}): try the thresholds_independent space."]


def no_importance(f: Findings) -> list[str]:
    """Importance could not be computed: more trials before narrowing."""
    if f.importance.ok or not f.importance.note:
        return []
    if too_few_trials(f):  # that line already says to run more trials
        return [f"No importances: {f.importance.note}."]
    return [f"No importances: {f.importance.note}. Run more trials (num_samples) before narrowing ranges."]


def asha_cuts(f: Findings) -> list[str]:
    """How many trials ASHA cut and where, whether it nearly cut the best one, and whether its cuts look sound."""
    asha = f.asha
    n_asha = int(f.counts.get(STOPPED_BY_SCHEDULER, 0))
    if not (len(asha) or n_asha):
        return []
    text = f"{n_asha} of {len(f.trials)} trials were stopped by ASHA"
    if n_asha and len(asha):
        where = ", ".join(f"{int(r.stopped)} at iteration {r.rung}" for r in asha.itertuples() if r.stopped)
        text += f" ({where})"
    text += "."
    first = asha.iloc[0] if len(asha) else None
    if first is not None and first["_best_rank"] is not None:
        rank, of = first["_best_rank"]
        text += f" The eventual best trial ranked {rank} of {of} at the first rung (iteration {first['rung']})"
        text += "; ASHA nearly cut it: raise grace_period or lower reduction_factor." if rank > max(1, of / 2) \
            else "."
    rho = first["spearman_rung_vs_final"] if first is not None else None
    if rho is not None and not pd.isna(rho):
        if rho >= 0.6:
            text += f" Values at that rung predicted the final ones well (Spearman {rho:.2f}): the cuts look sound."
        elif rho < 0.3:
            text += (f" Values at that rung predicted the final ones poorly (Spearman {rho:.2f}): cuts there are "
                     "noisy; a longer grace period makes them safer.")
        else:
            text += f" Rung values predicted final ones moderately (Spearman {rho:.2f})."
    return [text]


def budget_cuts(f: Findings) -> list[str]:
    """Trials cut by the sweep's budget rather than by ASHA."""
    n_budget = int(f.counts.get(STOPPED_BY_BUDGET, 0))
    if not n_budget:
        return []
    return [f"{n_budget} trial(s) were cut by the sweep's budget, not by ASHA: raise time_budget_s / budget_iters or "
            "lower num_samples to let them finish."]


def diverged(f: Findings) -> list[str]:
    """Diverged trials, and an lr cap when lr alone separates them from the rest."""
    t = f.trials
    div = t[t["status"] == DIVERGED]
    if not len(div):
        return []
    if "param.lr" not in t:
        return [f"{len(div)} trial(s) diverged: {', '.join(div['trial_id'])}."]
    lrs = sorted(pd.to_numeric(div["param.lr"], errors="coerce").dropna())
    ok = pd.to_numeric(t.loc[~t["status"].isin(FAILED), "param.lr"], errors="coerce").dropna()
    text = f"{len(div)} trial(s) diverged, with lr {', '.join(_fmt(v) for v in lrs)}"
    if lrs and len(ok) and ok.max() < lrs[0]:
        text += f"; no trial with lr <= {_fmt(float(ok.max()))} diverged: cap lr below {_fmt(lrs[0])}."
    else:
        text += "; lr alone does not explain it: check st_weight and grad_clip of those trials."
    return [text]


def errored(f: Findings) -> list[str]:
    """Trials that raised an error, with their messages."""
    err = f.trials[f.trials["status"] == ERRORED]
    if not len(err):
        return []
    msgs = "; ".join(f"{r.trial_id}: {r.message}" if isinstance(r.message, str) else r.trial_id
                     for r in err.itertuples())
    return [f"{len(err)} trial(s) raised an error ({msgs}); see error.txt in their folders. "
            "`selftune sweep --resume` retries them."]


def early_stopped(f: Findings) -> list[str]:
    """Trials stopped by their own patience."""
    early = int(f.counts.get(EARLY_STOPPED, 0))
    if mostly_patience(f):  # the alert already said it
        return []
    return [f"{early} trial(s) stopped by their own patience before max_t."] if early else []


def still_running(f: Findings) -> list[str]:
    """Trials still running or pending: the analysis is partial."""
    running = int(f.counts.get(RUNNING, 0))
    if not running:
        return []
    return [f"{running} trial(s) are still running or pending: this analysis covers what they reported so far; "
            "run `selftune analyze` again when the sweep has ended."]


Rule = Callable[[Findings], list[str]]
ALERTS: tuple[Rule, ...] = (damaged_records, nothing_learned, dead_classes, mostly_patience, too_few_trials)
RULES: tuple[Rule, ...] = (
    *ALERTS, best_trial, still_improving, param_ranges, pinned_offsets, no_importance, asha_cuts, budget_cuts, diverged,
    errored, early_stopped, still_running,
)


def advise(findings: Findings, rules: tuple[Rule, ...] = RULES) -> list[str]:
    """Every rule's lines, in rule order."""
    return [line for rule in rules for line in rule(findings)]


def next_steps(sweep: Sweep, importance: Importance, dists: dict[str, Any], asha: pd.DataFrame,
               key_params: list[str]) -> list[str]:
    """A short, data-derived "what to run next" list (plain text), the alerts first."""
    return advise(Findings(sweep, importance, dists, asha, key_params))


def alerts(sweep: Sweep, importance: Importance, dists: dict[str, Any], asha: pd.DataFrame,
           key_params: list[str]) -> list[str]:
    """The lines of the `ALERTS` rules only: what the report says before anything else about the trials."""
    return advise(Findings(sweep, importance, dists, asha, key_params), ALERTS)
