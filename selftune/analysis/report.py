"""`analyze`: tables, figures (PNG + interactive HTML), a one-page report and a terminal summary.

Everything is read offline from the sweep folder; outputs go to one folder (default PATH/analysis),
each file written atomically (a temporary file, then a rename). Nothing outside it is touched.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import posixpath
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from selftune.analysis.study import (
    Importance,
    load_study,
    optuna_states,
    param_distributions,
    param_importances,
    trial_values,
)
from selftune.analysis.tables import DEFAULT_METRIC, Sweep, asha_rungs, load_sweep
from selftune.errors import SelftuneError

STATUS_ORDER = ("completed", "early_stopped", "stopped_by_asha", "stopped_by_budget", "diverged", "errored", "running")
STATUS_WORDS = {
    "completed": "completed", "early_stopped": "stopped by patience", "stopped_by_asha": "stopped by ASHA",
    "stopped_by_budget": "stopped by the sweep budget", "diverged": "diverged", "errored": "errored",
    "running": "running or pending",
}
PLOTLY_JS = "plotly.min.js"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ---------------------------------------------------------------------- output folder


class Output:
    """The output folder: local (atomic writes) or a URI (one object per file through pyarrow)."""

    def __init__(self, out: str) -> None:
        out = str(out)
        if out.startswith("file://"):
            out = out.removeprefix("file://")
        self.remote = "://" in out
        self.root = out.rstrip("/") or out
        if self.remote:
            from selftune.sweepfolder import filesystem

            self.fs, self._base = filesystem(self.root)
            self.fs.create_dir(self._base, recursive=True)
        else:
            p = Path(self.root).expanduser()
            if p.exists() and not p.is_dir():
                raise SelftuneError(f"--out {out} is a file, not a folder")
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SelftuneError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
            self.root = str(p)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}" if self.remote else os.path.join(self.root, name)

    def write(self, name: str, data: bytes | str) -> str:
        blob = data.encode() if isinstance(data, str) else data
        if self.remote:
            with self.fs.open_output_stream(posixpath.join(self._base, name)) as f:
                f.write(blob)
            return self.path(name)
        target = self.path(name)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target


# ---------------------------------------------------------------------- the result


@dataclass
class Figure:
    name: str  # file stem: NAME.png, NAME.html
    title: str
    caption: str  # how to read it
    png: bytes | None = None
    has_html: bool = False
    note: str = ""  # why it is missing


@dataclass
class Analysis:
    """What `analyze` found and wrote."""

    sweep: Sweep
    out: str
    study: Any | None
    importance: Importance
    color_by: str | None
    key_params: list[str]
    rungs: list[float]
    asha: pd.DataFrame
    next_steps: list[str]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def trials(self) -> pd.DataFrame:
        return self.sweep.trials

    @property
    def history(self) -> pd.DataFrame:
        return self.sweep.history

    def status_counts(self) -> dict[str, int]:
        counts = self.trials["status"].value_counts()
        return {s: int(counts[s]) for s in STATUS_ORDER if s in counts}

    def summary(self, top_k: int = 5) -> str:
        return summary_text(self, top_k)


# ---------------------------------------------------------------------- analysis helpers


def _resolve_param(sweep: Sweep, name: str) -> str:
    params = [c.removeprefix("param.") for c in sweep.trials.columns if c.startswith("param.")]
    name = name.removeprefix("param.")
    if name not in params:
        import difflib

        close = difflib.get_close_matches(name, params, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SelftuneError(f"--color-by {name!r} is not a parameter of this sweep{hint}; parameters: "
                            f"{', '.join(params)}")
    return name


def _varied_params(sweep: Sweep) -> list[str]:
    out = []
    for c in sweep.trials.columns:
        if c.startswith("param.") and sweep.trials[c].dropna().astype(str).nunique() > 1:
            out.append(c.removeprefix("param."))
    return out


def _position(value: float, dist: Any) -> float | None:
    """Where a value lies in its range, 0 (low end) to 1 (high end); log ranges in log space."""
    lo, hi = getattr(dist, "low", None), getattr(dist, "high", None)
    if lo is None or hi is None or hi <= lo or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if getattr(dist, "log", False) and lo > 0 and value > 0:
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (float(value) - lo) / (hi - lo)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.4g}"
    return str(v)


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


def asha_review(sweep: Sweep, rungs: list[float]) -> pd.DataFrame:
    """One row per ASHA rung: how many trials reached it and were cut there, their values against those of
    the trials that went on, where the eventual best trial ranked, and how well the values at the rung
    predicted the final ones (Spearman rank correlation over trials that ran to the end)."""
    t, h, metric = sweep.trials, sweep.history, sweep.metric
    sign = 1 if sweep.mode == "max" else -1
    finished = t[t["status"].isin(["completed", "early_stopped"])]
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
        stopped = [tid for tid in at if t.loc[t["trial_id"] == tid, "status"].iloc[0] == "stopped_by_asha"
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


def _span(values: list[float]) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    return f"{min(vals):.3f}" if len(vals) == 1 else f"{min(vals):.3f} to {max(vals):.3f}"


def next_steps(sweep: Sweep, importance: Importance, dists: dict[str, Any], asha: pd.DataFrame,
               key_params: list[str]) -> list[str]:
    """A short, data-derived "what to run next" list (plain text)."""
    t, metric, out = sweep.trials, sweep.metric, []
    counts = t["status"].value_counts()
    n = len(t)
    ranked = t[~t["status"].isin(["diverged", "errored"]) & t[f"best.{metric}"].notna()]
    max_t = sweep.meta.get("max_t")
    if len(ranked):
        b = ranked.iloc[0]
        ps = ", ".join(f"{p}={_fmt(b.get(f'param.{p}'))}" for p in key_params[:4])
        out.append(f"Best so far: trial {b['trial_id']} ({STATUS_WORDS.get(b['status'], b['status'])}), "
                   f"{metric} {b[f'best.{metric}']:.4f} at iteration {b['best_iteration']} ({ps}). "
                   f"Export it with `selftune export {sweep.path} --out best.yaml` and use it as base_config of the "
                   "next sweep.")
        h = sweep.history[sweep.history["trial_id"] == b["trial_id"]]
        if max_t and b["best_iteration"] is not pd.NA and int(b["best_iteration"]) >= int(max_t) and len(h) >= 2:
            prev = h[metric].iloc[-2]
            if pd.notna(prev) and (h[metric].iloc[-1] - prev) * (1 if sweep.mode == "max" else -1) > 0:
                out.append(f"The best trial was still improving at max_t ({max_t} iterations): a longer run "
                           "(max_iters, or --max-t) will likely gain more.")
    # parameter ranges: where the best trials sit
    top = ranked.head(max(3, math.ceil(len(ranked) / 4)))
    pinned_offsets = []
    for p in key_params[:3]:
        d = dists.get(p)
        if d is None or not len(top):
            continue
        imp = f" (importance {importance.values[p]:.2f})" if p in importance.values else ""
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
    for p, d in dists.items():
        if p.startswith("threshold_offset[") and len(top):
            pos = _position(top.iloc[0].get(f"param.{p}"), d)
            if pos is not None and (pos >= 0.95 or pos <= 0.05):
                pinned_offsets.append(p)
    if len(pinned_offsets) >= 2:
        out.append(f"{len(pinned_offsets)} per-class threshold offsets of the best trial sit at their bounds "
                   f"({', '.join(pinned_offsets)}): try the thresholds_independent space.")
    if not importance.ok and importance.note:
        out.append(f"No importances: {importance.note}. Run more trials (num_samples) before narrowing ranges.")
    # ASHA
    n_asha = int(counts.get("stopped_by_asha", 0))
    if len(asha) or n_asha:
        text = f"{n_asha} of {n} trials were stopped by ASHA"
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
        out.append(text)
    n_budget = int(counts.get("stopped_by_budget", 0))
    if n_budget:
        out.append(f"{n_budget} trial(s) were cut by the sweep's budget, not by ASHA: raise time_budget_s / budget_iters or "
                   "lower num_samples to let them finish.")
    div = t[t["status"] == "diverged"]
    if len(div):
        if "param.lr" in t:
            lrs = sorted(pd.to_numeric(div["param.lr"], errors="coerce").dropna())
            ok = pd.to_numeric(t.loc[~t["status"].isin(["diverged", "errored"]), "param.lr"], errors="coerce").dropna()
            text = f"{len(div)} trial(s) diverged, with lr {', '.join(_fmt(v) for v in lrs)}"
            if lrs and len(ok) and ok.max() < lrs[0]:
                text += f"; no trial with lr <= {_fmt(float(ok.max()))} diverged: cap lr below {_fmt(lrs[0])}."
            else:
                text += "; lr alone does not explain it: check st_weight and grad_clip of those trials."
            out.append(text)
        else:
            out.append(f"{len(div)} trial(s) diverged: {', '.join(div['trial_id'])}.")
    err = t[t["status"] == "errored"]
    if len(err):
        msgs = "; ".join(f"{r.trial_id}: {r.message}" if isinstance(r.message, str) else r.trial_id
                         for r in err.itertuples())
        out.append(f"{len(err)} trial(s) raised an error ({msgs}); see error.txt in their folders. "
                   "`selftune sweep --resume` retries them.")
    early = int(counts.get("early_stopped", 0))
    if early:
        out.append(f"{early} trial(s) stopped by their own patience before max_t.")
    running = int(counts.get("running", 0))
    if running:
        out.append(f"{running} trial(s) are still running or pending: this analysis covers what they reported so far; "
                   "run `selftune analyze` again when the sweep has ended.")
    return out


# ---------------------------------------------------------------------- figures


CAPTIONS = {
    "progress": ("Search progress",
                 "Each marker is one trial's best value, placed at the compute spent when it ended (trials in "
                 "completion order); the black step is the best so far. A curve that is still rising at the right "
                 "says more trials would pay; a flat one says the search has converged for this space."),
    "learning_curves": ("Learning curves",
                        "One line per trial; colour is the hyperparameter named on the colour bar. Dashed lines "
                        "ending in an x were stopped by ASHA at a rung (dotted vertical lines); red triangles "
                        "mark diverged trials. ASHA was right to stop a trial when its line sits below the lines "
                        "that went on, both at the rung and where those lines ended."),
    "importance": ("Hyperparameter importance",
                   "Optuna's PED-ANOVA: how much each parameter's distribution among the top trials differs from "
                   "its distribution among all scored trials (completed, and ASHA-stopped at their last value). "
                   "Tune the top ones; freeze the bottom ones. With few trials these are rough."),
    "parallel_coordinates": ("Parallel coordinates",
                             "One line per scored trial across the most important parameters, coloured by its value "
                             "(best value if finished, last value if stopped by ASHA). Bands of good lines show the "
                             "good region of each parameter."),
    "slice": ("Metric against each parameter",
              "One panel per parameter (most important first), x on a log scale for log-searched parameters; the "
              "grey band is the searched range. Good values bunched at an edge mean the range should widen."),
    "per_class_iou": ("Per-class IoU of the top trials",
                      "Val IoU per class at each top trial's best checkpoint. Classes where all top trials are low "
                      "are the ones self-training (or more labels) must fix; bars that differ show which trial "
                      "trades one class for another."),
    "pseudo_labels": ("Pseudo-label acceptance",
                      "Share of the teacher's predicted pixels whose confidence passed their class threshold, per "
                      "evaluation window. Left: per class for the best trial (a class stuck near 0 gets no pseudo-labels"
                      ": its threshold is too high); right: all classes for every trial."),
}


def _st_start(sweep: Sweep, dists: dict[str, Any]) -> int | None:
    """The base config's self-training start, unless the sweep searched it (then it differs per trial)."""
    base = sweep.meta.get("base", {})
    if "st_start_iter" in dists or base.get("method") == "supervised":
        return None
    v = base.get("st_start_iter")
    return int(v) if isinstance(v, int | float) and v > 0 else None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def _html(pfig: Any) -> str:
    return pfig.to_html(include_plotlyjs="directory", full_html=True)


def make_figures(a: Analysis, sweep: Sweep, astudy: Any | None, dists: dict[str, Any], top_k: int,
                 out: Output | None) -> list[Figure]:
    from selftune.analysis import figures as F

    values = trial_values(sweep)
    figs: list[Figure] = []

    def add(name: str, build: Any) -> None:
        title, caption = CAPTIONS[name]
        fig = Figure(name, title, caption)
        try:
            made = build()
        except Exception as exc:  # one broken figure must not cost the whole report
            fig.note = f"could not draw this figure: {type(exc).__name__}: {exc}"
            a.notes.append(f"{name}: {fig.note}")
            if os.environ.get("SELFTUNE_DEBUG"):
                traceback.print_exc()
            made = None
        if isinstance(made, str):
            fig.note = made
        elif made is not None:
            mfig, pfig = made
            fig.png = _png(mfig)
            if out is not None:
                a.files.append(out.write(f"{name}.png", fig.png))
                if pfig is not None:
                    a.files.append(out.write(f"{name}.html", _html(pfig)))
                    fig.has_html = True
        figs.append(fig)

    ranked_params = [p for p in a.importance.ranked() if p in _varied_params(sweep)]
    params = ranked_params + [p for p in _varied_params(sweep) if p not in ranked_params]
    add("progress", lambda: F.search_progress(sweep))
    st_start = _st_start(sweep, dists)
    add("learning_curves", lambda: F.learning_curves(sweep, a.color_by, dists.get(a.color_by or ""), a.rungs, st_start))

    def importance() -> Any:
        if not a.importance.ok:
            return f"no importances: {a.importance.note}"
        import optuna
        from optuna.importance import PedAnovaImportanceEvaluator

        mfig = F.importance_bars(a.importance.values, a.importance.evaluator, sweep.metric)
        pfig = optuna.visualization.plot_param_importances(
            astudy, evaluator=PedAnovaImportanceEvaluator(target_quantile=a.importance.quantile),
            target_name=F.metric_label(sweep.metric))
        pfig.update_layout(title=f"Hyperparameter importance: {a.importance.evaluator}")
        return mfig, pfig

    add("importance", importance)

    def parallel() -> Any:
        if astudy is None or len(astudy.trials) < 2 or not params:
            return "parallel coordinates need at least 2 scored trials"
        import optuna

        shown = params[:8]
        mfig = F.parallel_coordinates(sweep, shown, dists, values)
        pfig = optuna.visualization.plot_parallel_coordinate(astudy, params=shown,
                                                             target_name=F.metric_label(sweep.metric))
        pfig.update_layout(template=F.PLOTLY_TEMPLATE)
        return mfig, pfig

    add("parallel_coordinates", parallel)
    add("slice", lambda: F.slice_plot(sweep, params[:12], dists, values) if params else "no parameter was varied")
    add("per_class_iou", lambda: F.per_class_iou(sweep, top_k) or "no per-class IoU was reported")
    add("pseudo_labels", lambda: F.pseudo_labels(sweep, st_start) or "no pseudo-label statistics (st_ratio) reported")
    if out is not None and any(f.has_html for f in figs):
        from plotly.offline import get_plotlyjs

        a.files.append(out.write(PLOTLY_JS, get_plotlyjs()))
    return figs


# ---------------------------------------------------------------------- analyze


def analyze(path: str, out: str | None = None, *, metric: str = DEFAULT_METRIC, mode: str | None = None,
            color_by: str | None = None, top_k: int = 5, write: bool = True) -> Analysis:
    """Read a sweep folder and write its tables, figures and report.html to `out` (default PATH/analysis).

    With write=False nothing is written (figures are still rendered, as PNG bytes in `.figures`).
    Raises SelftuneError for a path that is not a sweep, a sweep with no evaluation yet, an unknown metric
    or --color-by parameter.
    """
    if top_k < 1:
        raise SelftuneError(f"--top-k must be >= 1, got {top_k}")
    path = str(path)
    if "://" not in path:
        path = str(Path(path).expanduser().resolve())
    sweep = load_sweep(path, metric, mode)
    notes: list[str] = []
    try:
        study = load_study(path, sweep.meta)
    except SelftuneError as exc:
        study = None
        notes.append(f"Optuna study: {exc}; parameter ranges are inferred from the trials")
    sweep.trials["optuna_state"] = optuna_states(sweep, study)
    importance, astudy = param_importances(sweep, study)
    if importance.note:
        notes.append(f"importance: {importance.note}")
    dists = param_distributions(study, sweep.trials)
    varied = _varied_params(sweep)
    if color_by is not None:
        color_by = _resolve_param(sweep, color_by)
    else:
        color_by = next((p for p in importance.ranked() if p in varied), None) or \
            ("lr" if "lr" in varied else (varied[0] if varied else None))
    key_params = [p for p in importance.ranked() if p in varied][:3] or varied[:3]
    rungs = asha_rungs(sweep.meta)
    a = Analysis(sweep, "", study, importance, color_by, key_params, rungs, asha_review(sweep, rungs),
                 [], notes=notes)
    a.next_steps = next_steps(sweep, importance, dists, a.asha, key_params)
    output = None
    if write:
        output = Output(out or (path.rstrip("/") + "/analysis"))
        a.out = output.root
        public = sweep.trials.copy()
        a.files.append(output.write("trials.parquet", _parquet(public)))
        a.files.append(output.write("trials.csv", public.to_csv(index=False)))
        a.files.append(output.write("history.parquet", _parquet(sweep.history)))
    a.figures = make_figures(a, sweep, astudy, dists, top_k, output)
    if output is not None:
        a.files.append(output.write("report.html", report_html(a, top_k)))
    return a


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# ---------------------------------------------------------------------- text and HTML


def top_table(a: Analysis, top_k: int) -> pd.DataFrame:
    t, metric = a.trials, a.sweep.metric
    rows = []
    for i, (_, r) in enumerate(t.head(top_k).iterrows(), 1):
        row = {"rank": i, "trial": r["trial_id"], "status": r["status"], f"best {metric}": _fmt(r[f"best.{metric}"]),
               "at iter": _fmt(r["best_iteration"]) if pd.notna(r["best_iteration"]) else "-",
               "iters run": _fmt(r["iteration"]) if pd.notna(r["iteration"]) else "-"}
        for p in a.key_params:
            row[p] = _fmt(r.get(f"param.{p}"))
        rows.append(row)
    return pd.DataFrame(rows)


def status_line(a: Analysis) -> str:
    counts = a.status_counts()
    return ", ".join(f"{n} {STATUS_WORDS[s]}" for s, n in counts.items())


def summary_text(a: Analysis, top_k: int = 5) -> str:
    s = a.sweep
    lines = [f"sweep {s.name}: {len(a.trials)} trials: {status_line(a)}",
             f"metric: {s.metric} ({s.mode})" + (f"; importance: {a.importance.evaluator}" if a.importance.ok else "")]
    if a.importance.ok:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(a.importance.values.items())[:5])
        lines.append(f"most important: {top}" + (f" ({a.importance.note})" if a.importance.note else ""))
    lines.append("")
    lines.append(top_table(a, top_k).to_string(index=False))
    lines.append("")
    if a.next_steps:
        lines.append("what to run next:")
        lines.extend(f"  - {x}" for x in a.next_steps)
    for n in a.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1a202c; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #e2e8f0; padding-bottom: 4px; margin-top: 1.6em; }
.sub { color: #4a5568; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #e2e8f0; padding: 4px 8px; text-align: left; }
th { background: #f7fafc; }
.badge { display: inline-block; padding: 2px 8px; margin: 2px 6px 2px 0; border-radius: 10px; background: #edf2f7; }
.next li { margin-bottom: 6px; } code { background: #f7fafc; padding: 1px 4px; border-radius: 3px; }
figure { margin: 18px 0 30px; } figure img { max-width: 100%; border: 1px solid #e2e8f0; }
figcaption { color: #4a5568; font-size: 0.92em; max-width: 1000px; }
.note { color: #975a16; }
"""


def _codeify(text: str) -> str:
    """Escape, then show `backticked` parts as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def report_html(a: Analysis, top_k: int) -> str:
    s = a.sweep
    e = html.escape
    counts = "".join(f'<span class="badge">{n} {e(STATUS_WORDS[k])}</span>' for k, n in a.status_counts().items())
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>selftune sweep {e(s.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Sweep {e(s.name)}</h1>",
             f"<p class='sub'>{e(s.path)} &middot; {len(a.trials)} trials &middot; metric {e(s.metric)} ({s.mode}) "
             f"&middot; space {e(str(s.meta.get('sweep', {}).get('space', '?')))} &middot; analysed {now}</p>",
             f"<p>{counts}</p>",
             f"<h2>Top {min(top_k, len(a.trials))} trials</h2>",
             top_table(a, top_k).to_html(index=False, escape=True, border=0),
             "<h2>What to run next</h2><ul class='next'>",
             *[f"<li>{_codeify(x)}</li>" for x in a.next_steps],
             "</ul>"]
    if len(a.asha):
        cols = {"rung": "rung (iteration)", "reached": "trials reached", "stopped": "stopped here",
                "stopped_values": f"{s.metric} of stopped", "went_on_values": f"{s.metric} of those that went on",
                "went_on_final": "their final best", "best_trial_rank": "eventual best's rank here",
                "spearman_rung_vs_final": "Spearman (rung vs final)"}
        view = a.asha[list(cols)].rename(columns=cols)
        view[cols["spearman_rung_vs_final"]] = view[cols["spearman_rung_vs_final"]].map(
            lambda v: "-" if v is None or pd.isna(v) else f"{v:.2f}")
        parts += ["<h2>ASHA's cuts</h2>",
                  "<p>At each rung ASHA keeps the top 1/reduction_factor of the trials seen there so far. A cut was "
                  "right when the stopped trials were below those that went on, and the values at the rung predict "
                  "the final ones (Spearman close to 1).</p>", view.to_html(index=False, escape=True, border=0)]
    if a.importance.ok:
        imp = pd.DataFrame({"parameter": list(a.importance.values),
                            "importance": [f"{v:.3f}" for v in a.importance.values.values()]})
        parts += [f"<h2>Importance</h2><p>{e(a.importance.evaluator)}"
                  + (f" &middot; <span class='note'>{e(a.importance.note)}</span>" if a.importance.note else "")
                  + "</p>", imp.head(10).to_html(index=False, escape=True, border=0)]
    parts.append("<h2>Figures</h2>")
    for f in a.figures:
        parts.append(f"<figure id='{f.name}'><h3>{e(f.title)}</h3>")
        if f.png:
            b64 = base64.b64encode(f.png).decode()
            parts.append(f"<img alt='{e(f.title)}' src='data:image/png;base64,{b64}'>")
        else:
            parts.append(f"<p class='note'>{e(f.note)}</p>")
        link = f" <a href='{f.name}.html'>Interactive version</a>." if f.has_html else ""
        parts.append(f"<figcaption>{e(f.caption)}{link}</figcaption></figure>")
    parts.append("<h2>Files and other tools</h2><p><code>trials.parquet</code> / <code>trials.csv</code> (one row "
                 "per trial), <code>history.parquet</code> (one row per evaluation); load them with "
                 "<code>selftune.analysis.load_trials</code> / <code>load_history</code> or pandas.</p><ul>"
                 f"<li><code>tensorboard --logdir {e(s.path)}</code>: every trial's curves, per-class IoU, "
                 "pseudo-label counts, thresholds and prediction panels</li>"
                 f"<li><code>optuna-dashboard {e(_dashboard_storage(s))}</code>: the Optuna study</li>"
                 "<li><code>notebooks/sweep_analysis.ipynb</code> with <code>SELFTUNE_SWEEP</code> set to this folder</li>"
                 "</ul>")
    if a.notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li class='note'>{e(n)}</li>" for n in a.notes], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _dashboard_storage(s: Sweep) -> str:
    """What to give optuna-dashboard: the journal in the sweep folder, else the storage the sweep recorded."""
    local = s.path.rstrip("/") + "/optuna_journal.log"
    if "://" in s.path or os.path.isfile(local):
        return local
    return str(s.meta.get("optuna_storage") or local).removeprefix("journal:")


def print_summary(a: Analysis, top_k: int, file: Any = None) -> None:
    file = file or sys.stdout
    print(a.summary(top_k), file=file)
    if a.out:
        print(f"\nwrote {a.out}: report.html, trials.parquet/.csv, history.parquet, "
              f"{sum(1 for f in a.figures if f.png)} figures (PNG + interactive HTML)", file=file)
