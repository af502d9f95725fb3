"""`analyze`: tables, figures (PNG + interactive HTML), a one-page report and a terminal summary.

Everything is read offline from the sweep folder; outputs go to one folder (default PATH/analysis),
each file written atomically (`selftune.fileio.write_atomic`). Nothing outside it is touched.
What is where: `asha` reviews ASHA's cuts, `advice` says what to run next, `verdict` reads verdict.json,
`result` holds what analyze found (`Analysis`) and the terminal summary, `page` renders report.html,
`figures` draws the figures; this module runs them in order and writes what they make.
"""

from __future__ import annotations

import io
import os
import posixpath
import sys
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from selftune.analysis.advice import alerts, next_steps
from selftune.analysis.asha import asha_review
from selftune.analysis.page import VERDICT_FIGURE, report_html
from selftune.analysis.result import Analysis, Figure
from selftune.analysis.study import (
    METHOD,
    complete_importances,
    dashboard_importances,
    load_study,
    method_importances,
    optuna_states,
    param_distributions,
    param_importances,
    trial_values,
)
from selftune.analysis.tables import DEFAULT_METRIC, NoResultsYet, Sweep, load_sweep, method_table
from selftune.analysis.verdict import Verdict, load_verdict, verdict_note
from selftune.errors import SelftuneError
from selftune.fileio import write_atomic
from selftune.sweepfolder import sweep_rungs, trials_that_count
from selftune.trainable.methods import DEFAULT_METHOD, counts_as_self_training

PLOTLY_JS = "plotly.min.js"


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
        write_atomic(target, blob)
        return target


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


def _varied_params(sweep: Sweep, rows: pd.Index | None = None) -> list[str]:
    t = sweep.trials if rows is None else sweep.trials.loc[rows]
    out = []
    for c in t.columns:
        if c.startswith("param.") and t[c].dropna().astype(str).nunique() > 1:
            out.append(c.removeprefix("param."))
    return out


def _searched_methods(sweep: Sweep) -> bool:
    col = f"param.{METHOD}"
    return col in sweep.trials and sweep.trials[col].dropna().astype(str).nunique() > 1


def trial_methods(sweep: Sweep) -> pd.Series:
    """Each trial's method: its `method` parameter (the methods space), else the base config's."""
    base = str(sweep.meta.get("base", {}).get("method", DEFAULT_METHOD))
    col = f"param.{METHOD}"
    if col not in sweep.trials:
        return pd.Series(base, index=sweep.trials.index, dtype=object)
    return sweep.trials[col].map(lambda m: str(m) if isinstance(m, str) else base)


def self_training_trials(sweep: Sweep) -> pd.Index:
    """The trials whose method self-trains (its trait, `MethodSpec.self_training`)."""
    return sweep.trials.index[trial_methods(sweep).map(counts_as_self_training).astype(bool)]


def shared_knobs(sweep: Sweep) -> list[str]:
    """Varied parameters every trial that counts has (for a sweep over methods: the method, lr, warmup); every
    varied parameter for a sweep that did not search methods."""
    varied = _varied_params(sweep)
    if not _searched_methods(sweep):
        return varied
    t = trials_that_count(sweep.trials, sweep.metric)
    t = t if len(t) else sweep.trials
    return [p for p in varied if t[f"param.{p}"].notna().all()]


def _subsweep(sweep: Sweep, rows: pd.Index) -> Sweep:
    """The same sweep with only `rows` of its trial table (and their history)."""
    import dataclasses

    trials = sweep.trials.loc[rows]
    return dataclasses.replace(sweep, trials=trials,
                               history=sweep.history[sweep.history["trial_id"].isin(trials["trial_id"])])


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
                   "its distribution among all scored trials (blue: completed, and ASHA-stopped at their last value; "
                   "orange: the same evaluator over COMPLETE trials only, as optuna-dashboard and "
                   "optuna.importance count). Tune the top ones; freeze the bottom ones. With few trials these are "
                   "rough."),
    "parallel_coordinates": ("Parallel coordinates",
                             "One line per scored trial across the most important parameters, coloured by its value "
                             "(best value if finished, last value if stopped by ASHA). Bands of good lines show the "
                             "good region of each parameter. In a sweep over methods this one spans the method and "
                             "the knobs every trial has; each method's own knobs get a figure of their own, over "
                             "that method's trials."),
    "slice": ("Metric against each parameter",
              "One panel per parameter (most important first), x on a log scale for log-searched parameters; the "
              "grey band is the searched range. Good values bunched at an edge mean the range should widen. In a "
              "sweep over methods: the method and the shared knobs here, each method's own knobs over its own "
              "trials below."),
    "per_class_iou": ("Per-class IoU of the top trials",
                      "Val IoU per class at each top trial's best checkpoint. Classes where all top trials are low "
                      "are the ones self-training (or more labels) must fix; bars that differ show which trial "
                      "trades one class for another."),
    "verdict_per_class": ("Per-class verdict",
                          "Each bar is one class's IoU of the self-training arm minus the supervised arm's, in IoU "
                          "points: the mean over the confirmation's fresh seeds (both arms' best configs retrained from "
                          "the same start for the same iterations), with its 95% interval (seeds and test images), on "
                          "test when the dataset has it, else on val. Green: helped (the interval is above 0); red: "
                          "hurt (below 0); grey: no clear difference."),
    "pseudo_labels": ("Pseudo-label acceptance",
                      "Share of the teacher's predicted pixels whose confidence passed their class threshold, per "
                      "evaluation window, self-training trials only (a supervised trial makes no pseudo-labels). "
                      "Left: per class for the best of them (a class stuck near 0 gets no pseudo-labels"
                      ": its threshold is too high); right: all classes for every self-training trial."),
}


def _st_start(sweep: Sweep, dists: dict[str, Any]) -> int | None:
    """The base config's self-training start, unless the sweep searched it (then it differs per trial)."""
    base = sweep.meta.get("base", {})
    if "st_start_iter" in dists or not counts_as_self_training(str(base.get("method", DEFAULT_METHOD))):
        return None
    v = base.get("st_start_iter")
    return int(v) if isinstance(v, int | float) and v > 0 else None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def _html(pfig: Any) -> str:
    return pfig.to_html(include_plotlyjs="directory", full_html=True)


def _verdict_figure(v: Verdict) -> Any:
    from selftune.analysis import figures as F

    per_class = v.per_class()
    if not len(per_class):
        return "the verdict has no per-class differences"
    return F.verdict_per_class(per_class, str(v.split))


def make_figures(a: Analysis, sweep: Sweep, astudy: Any | None, dists: dict[str, Any], top_k: int,
                 out: Output | None) -> list[Figure]:
    from selftune.analysis import figures as F

    values = trial_values(sweep)
    figs: list[Figure] = []

    def add(name: str, build: Any, scope: str = "") -> None:
        title, caption = CAPTIONS[name.split("__", 1)[0]]
        if scope:
            title, caption = f"{title}: {scope}", f"Within the {scope} trials only, over that method's own knobs. " + \
                caption.split(" In a sweep over methods")[0]
        fig = Figure(name.replace("__", "_"), title, caption)
        try:
            made = build()
        except Exception as exc:  # one broken figure must not cost the whole report
            fig.note = f"could not draw this figure: {type(exc).__name__}: {exc}"
            a.notes.append(f"{fig.name}: {fig.note}")
            if os.environ.get("SELFTUNE_DEBUG"):
                traceback.print_exc()
            made = None
        if isinstance(made, str):
            fig.note = made
        elif made is not None:
            mfig, pfig = made
            fig.png = _png(mfig)
            if out is not None:
                a.files.append(out.write(f"{fig.name}.png", fig.png))
                if pfig is not None:
                    a.files.append(out.write(f"{fig.name}.html", _html(pfig)))
                    fig.has_html = True
        figs.append(fig)

    shared = shared_knobs(sweep)
    ranked_params = [p for p in a.importance.ranked() if p in shared]
    params = ranked_params + [p for p in shared if p not in ranked_params]
    methods = trial_methods(sweep)
    add("progress", lambda: F.search_progress(sweep))
    st_start = _st_start(sweep, dists)
    add("learning_curves", lambda: F.learning_curves(sweep, a.color_by, dists.get(a.color_by or ""), a.rungs, st_start))

    def importance() -> Any:
        if not a.importance.ok:
            return f"no importances: {a.importance.note}"
        c = a.complete_importance
        if c is None or not c.ok:
            return F.importance_bars(a.importance.values, a.importance.evaluator, sweep.metric)
        both = (f"PED-ANOVA, top {a.importance.quantile:.0%}, over {a.importance.n_trials} trials (blue) and over "
                f"{c.n_trials} COMPLETE trials (orange)")
        return F.importance_bars(a.importance.values, both, sweep.metric, c.values)

    add("importance", importance)

    def parallel() -> Any:
        if astudy is None or len(astudy.trials) < 2 or not params:  # astudy: the scored trials, finite values
            return "parallel coordinates need at least 2 scored trials"
        return F.parallel_coordinates(sweep, params[:8], dists, values)

    add("parallel_coordinates", parallel)
    add("slice", lambda: F.slice_plot(sweep, params[:12], dists, values) if params else "no parameter was varied")
    if _searched_methods(sweep):  # each method's own knobs, over its own trials
        for method, own in method_knobs(a, sweep).items():
            rows = sweep.trials.index[methods == method]
            sub, scope = _subsweep(sweep, rows), f"{METHOD}={method}"
            scored = int(values.loc[rows].notna().sum())

            def per_method(kind: str, sub: Sweep = sub, own: list[str] = own, rows: pd.Index = rows,
                           scored: int = scored, scope: str = scope) -> Any:
                if scored < 2:
                    return f"{scope}: {kind} need at least 2 scored trials; it has {scored}"
                if kind == "parallel coordinates":
                    return F.parallel_coordinates(sub, own[:8], dists, values.loc[rows], scope=scope)
                return F.slice_plot(sub, own[:12], dists, values.loc[rows], scope=scope)

            add(f"parallel_coordinates__{method}", lambda f=per_method: f("parallel coordinates"), scope)
            add(f"slice__{method}", lambda f=per_method: f("slices"), scope)
    add("per_class_iou", lambda: F.per_class_iou(sweep, top_k) or "no per-class IoU was reported")

    def pseudo() -> Any:
        selftraining = self_training_trials(sweep)
        if not len(selftraining):
            return "no self-training trial (every trial is supervised)"
        sub = _subsweep(sweep, selftraining)
        return F.pseudo_labels(sub, st_start) or "no pseudo-label statistics (st_ratio) reported"

    add("pseudo_labels", pseudo)
    if a.verdict is not None:
        add(VERDICT_FIGURE, lambda: _verdict_figure(a.verdict))
    if out is not None and any(f.has_html for f in figs):
        from plotly.offline import get_plotlyjs

        a.files.append(out.write(PLOTLY_JS, get_plotlyjs()))
    return figs


def method_knobs(a: Analysis, sweep: Sweep) -> dict[str, list[str]]:
    """Per method, its own varied knobs (not the shared ones), most important within its trials first."""
    methods = trial_methods(sweep)
    shared = set(shared_knobs(sweep)) | {METHOD}
    out = {}
    for method in methods.dropna().unique():
        own = [p for p in _varied_params(sweep, sweep.trials.index[methods == method]) if p not in shared]
        imp = a.method_importance.get(str(method))
        ranked = [p for p in (imp.ranked() if imp is not None else []) if p in own]
        if own:
            out[str(method)] = ranked + [p for p in own if p not in ranked]
    return out


# ---------------------------------------------------------------------- analyze


def analyze(path: str, out: str | None = None, *, metric: str = DEFAULT_METRIC, mode: str | None = None,
            color_by: str | None = None, top_k: int = 5, write: bool = True, refresh: float | None = None
            ) -> Analysis:
    """Read a sweep folder and write its tables, figures and report.html to `out` (default PATH/analysis).

    With write=False nothing is written (figures are still rendered, as PNG bytes in `.figures`). With
    `refresh` (seconds) the page reloads itself that often (`watch`).
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
    complete = complete_importances(astudy, importance.quantile)  # the same, COMPLETE trials only
    dists = param_distributions(study, sweep.trials)
    varied = shared_knobs(sweep)  # for a sweep over methods: the method and the knobs every trial has
    if color_by is not None:
        color_by = _resolve_param(sweep, color_by)
    elif METHOD in varied:  # a sweep over methods: the curves tell the methods apart
        color_by = METHOD
    else:
        color_by = next((p for p in importance.ranked() if p in varied), None) or \
            ("lr" if "lr" in varied else (varied[0] if varied else None))
    key_params = [p for p in importance.ranked() if p in varied and p != METHOD][:3] or \
        [p for p in varied if p != METHOD][:3]
    rungs = sweep_rungs(sweep.meta)
    verdict = load_verdict(path, warn=False)  # one damaged or missing is said where the verdict would be
    a = Analysis(sweep, "", study, importance, color_by, key_params, rungs, asha_review(sweep, rungs),
                 [], verdict=verdict, verdict_note=None if verdict else verdict_note(path, sweep.meta),
                 methods=method_table(sweep), complete_importance=complete, notes=notes,
                 method_importance=method_importances(astudy), dashboard_importance=dashboard_importances(study))
    a.next_steps = next_steps(sweep, importance, dists, a.asha, key_params)
    a.alerts = alerts(sweep, importance, dists, a.asha, key_params)  # next_steps starts with them
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
        a.files.append(output.write("report.html", report_html(a, top_k, refresh)))
    return a


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# ---------------------------------------------------------------------- watch


def status_of(a: Analysis) -> str:
    """One line for `watch`: trials by status and the best so far."""
    from selftune.analysis.result import status_line

    s, t = a.sweep, a.trials
    ok = trials_that_count(t, s.metric)
    best = (f"best {s.metric} {ok.iloc[0][f'best.{s.metric}']:.4f} (trial {ok.iloc[0]['trial_id']})" if len(ok)
            else f"no {s.metric} yet")
    return f"{len(t)} trials: {status_line(a)}; {best}"


def watch(path: str, out: str | None = None, *, every: float = 30.0, rounds: int | None = None, file: Any = None,
          **kw: Any) -> int:
    """Analyse the sweep every `every` seconds while it runs, rewriting the report (which reloads itself as
    often), and print one status line a round; `rounds` ends it after that many, Ctrl-C at any time (exit 0).
    The last page written is rewritten without the reload, so it stays put once watching ends.
    A sweep with no evaluation yet is waited for; any other error ends it as analyze's would."""
    import time

    if every <= 0:
        raise SelftuneError(f"--watch takes seconds > 0, got {every:g}")
    if rounds is not None and rounds < 1:
        raise SelftuneError(f"--watch-rounds must be >= 1, got {rounds}")
    file = file or sys.stdout
    done, last, final = 0, None, None
    try:
        while True:
            done += 1
            stamp = time.strftime("%H:%M:%S")
            try:
                a = analyze(path, out, refresh=every, **kw)
                last, final = a.out, a
                print(f"[{stamp}] round {done}: {status_of(a)}", file=file, flush=True)
            except NoResultsYet as exc:
                print(f"[{stamp}] round {done}: waiting: {exc}", file=file, flush=True)
            if rounds is not None and done >= rounds:
                break
            time.sleep(every)
    except KeyboardInterrupt:
        print("\nstopped watching", file=file)
    if final is not None and last:  # the final page: the same report, without the auto-reload
        Output(last).write("report.html", report_html(final, kw.get("top_k", 5), None))
        print(f"report: {last}/report.html", file=file)
    return 0


# ---------------------------------------------------------------------- terminal summary


def print_summary(a: Analysis, top_k: int, file: Any = None) -> None:
    file = file or sys.stdout
    print(a.summary(top_k), file=file)
    if a.out:
        print(f"\nwrote {a.out}: report.html, trials.parquet/.csv, history.parquet, "
              f"{sum(1 for f in a.figures if f.png)} figures (PNG + interactive HTML)", file=file)
