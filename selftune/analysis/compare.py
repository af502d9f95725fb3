"""`selftune compare A B [C...]`: several sweeps side by side, offline.

For each sweep: the best value so far against compute (optimizer iterations summed over its trials, in
completion order), all on one figure; the incumbent (best trial, its method and parameters); trials
per status; importances; and the verdict when the sweep has one. Written as report.html plus the
figure (PNG and interactive HTML) to one folder (default ./compare), and printed as a table.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from selftune.analysis.page import CSS
from selftune.analysis.study import Importance, load_study, param_importances
from selftune.analysis.tables import DEFAULT_METRIC, STATUS_ORDER, STATUS_WORDS, Sweep, _fmt, load_sweep
from selftune.analysis.verdict import Verdict, load_verdict
from selftune.errors import SelftuneError
from selftune.sweepfolder import read_sweep_meta, trials_that_count
from selftune.trainable.methods import DEFAULT_METHOD

FIGURE = "progress"


@dataclass
class Compared:
    """One sweep as the comparison shows it."""

    label: str  # the sweep's name, or its folder when two sweeps share a name
    sweep: Sweep
    importance: Importance
    verdict: Verdict | None

    @property
    def best(self) -> pd.Series | None:
        """The best trial (ranked first, scored, neither diverged nor errored), or None."""
        ok = trials_that_count(self.sweep.trials, self.sweep.metric)
        return ok.iloc[0] if len(ok) else None

    @property
    def iterations(self) -> int:
        """Optimizer iterations summed over the sweep's trials: its compute on the figure's axis."""
        return int(pd.to_numeric(self.sweep.trials["iteration"], errors="coerce").fillna(0).sum())

    def method(self, row: pd.Series) -> str:
        """A trial's method: its `method` parameter (the methods space), else the base config's."""
        m = row.get("param.method")
        if isinstance(m, str):
            return m
        return str(self.sweep.meta.get("base", {}).get("method", DEFAULT_METHOD))

    def status_counts(self) -> dict[str, int]:
        counts = self.sweep.trials["status"].value_counts()
        return {s: int(counts[s]) for s in STATUS_ORDER if s in counts}


@dataclass
class Comparison:
    """What `compare` found and wrote."""

    sweeps: list[Compared]
    metric: str
    mode: str
    out: str = ""
    png: bytes | None = None
    has_html: bool = False
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. one sweep folder given twice

    def summary(self) -> str:
        return summary_text(self)


def _labels(sweeps: list[Sweep]) -> list[str]:
    """Each sweep's name; the folder name where names repeat; a number where folder names repeat too."""
    names = [s.name for s in sweeps]
    labels = [n if names.count(n) == 1 else posixpath.basename(s.path.rstrip("/")) for n, s in zip(names, sweeps,
                                                                                                   strict=True)]
    return [lab if labels.count(lab) == 1 else f"{lab} ({i + 1})" for i, lab in enumerate(labels)]


def load_comparison(paths: list[str], metric: str | None = None, mode: str | None = None) -> Comparison:
    """Read every sweep (tables, study, importances, verdict). Raises SelftuneError naming a bad one.
    Without `metric`, the one every sweep recorded as its own (selftune_sweep.yaml), else val_miou."""
    if len(paths) < 2:
        raise SelftuneError(f"compare needs at least two sweep folders, got {len(paths)}")
    paths = [str(p) if "://" in str(p) else str(Path(p).expanduser().resolve()) for p in paths]
    warnings = [f"{p} is given {paths.count(p)} times: its columns below are one sweep, not {paths.count(p)}"
                for p in dict.fromkeys(paths) if paths.count(p) > 1]
    if metric is None:
        own = {read_sweep_meta(p).get("metric") for p in paths}
        metric = own.pop() if len(own) == 1 and isinstance(next(iter(own)), str) else DEFAULT_METRIC
    sweeps = [load_sweep(p, metric, mode) for p in paths]
    out = []
    for label, s in zip(_labels(sweeps), sweeps, strict=True):
        try:
            study = load_study(s.path, s.meta)
        except SelftuneError:
            study = None  # ranges are then inferred from the trials
        importance, _ = param_importances(s, study)
        out.append(Compared(label, s, importance, load_verdict(s.path)))
    return Comparison(out, metric, sweeps[0].mode, warnings=warnings)


# ---------------------------------------------------------------------- the tables


def overview(c: Comparison) -> pd.DataFrame:
    """One row per sweep: trials, statuses, compute, the best value and trial, and the verdict."""
    rows = []
    for e in c.sweeps:
        b = e.best
        rows.append({
            "sweep": e.label, "trials": len(e.sweep.trials),
            "statuses": ", ".join(f"{n} {STATUS_WORDS[s]}" for s, n in e.status_counts().items()),
            "iterations": e.iterations,
            f"best {c.metric}": _fmt(float(b[f"best.{c.metric}"])) if b is not None else "-",
            "best trial": b["trial_id"] if b is not None else "-",
            "method": e.method(b) if b is not None else "-",
            "verdict": verdict_cell(e.verdict),
        })
    return pd.DataFrame(rows)


def verdict_cell(v: Verdict | None) -> str:
    """The verdict in a few words: helps / hurts / no clear difference, the difference and its interval."""
    return "-" if v is None else v.cell()


def incumbents(c: Comparison) -> pd.DataFrame:
    """The best trial of each sweep: value, iteration, method and every parameter it sampled."""
    rows = []
    for e in c.sweeps:
        b = e.best
        if b is None:
            rows.append({"sweep": e.label, "best trial": "-", c.metric: "-", "at iteration": "-", "method": "-",
                         "params": "-"})
            continue
        params = {k.removeprefix("param."): v for k, v in b.items() if k.startswith("param.") and k != "param.method"
                  and not (v is None or (isinstance(v, float) and math.isnan(v)))}
        rows.append({"sweep": e.label, "best trial": b["trial_id"], c.metric: _fmt(float(b[f"best.{c.metric}"])),
                     "at iteration": _fmt(b["best_iteration"]) if pd.notna(b["best_iteration"]) else "-",
                     "method": e.method(b), "params": ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "-"})
    return pd.DataFrame(rows)


def status_table(c: Comparison) -> pd.DataFrame:
    """Trials per status (columns) for each sweep (rows)."""
    present = [s for s in STATUS_ORDER if any(s in e.status_counts() for e in c.sweeps)]
    return pd.DataFrame([{"sweep": e.label, **{STATUS_WORDS[s]: e.status_counts().get(s, 0) for s in present},
                          "total": len(e.sweep.trials)} for e in c.sweeps])


def importance_table(c: Comparison) -> pd.DataFrame:
    """Each sweep's importances (value and rank) side by side, parameters in order of their best rank."""
    params: dict[str, int] = {}
    for e in c.sweeps:
        for rank, p in enumerate(e.importance.values):
            params[p] = min(params.get(p, rank), rank)
    order = sorted(params, key=lambda p: (params[p], p))

    def cell(e: Compared, p: str) -> str:
        if not e.importance.ok:
            return "-"
        if p not in e.importance.values:
            return "-"
        return f"{e.importance.values[p]:.3f} (#{list(e.importance.values).index(p) + 1})"

    return pd.DataFrame({"parameter": order, **{e.label: [cell(e, p) for p in order] for e in c.sweeps}})


def verdict_table(c: Comparison) -> pd.DataFrame | None:
    """The verdicts (headline and the difference with its interval) of the sweeps that have one, or None."""
    rows = [{"sweep": e.label, "headline": e.verdict.headline, "verdict": e.verdict.cell()}
            for e in c.sweeps if e.verdict is not None]
    return pd.DataFrame(rows) if rows else None


# ---------------------------------------------------------------------- compare


def compare(paths: list[str], out: str | None = "compare", *, metric: str | None = None, mode: str | None = None,
            write: bool = True) -> Comparison:
    """Compare sweep folders; write report.html and the figure to `out` (default ./compare) unless write=False."""
    from selftune.analysis import figures as F
    from selftune.analysis.report import Output, _html, _png

    c = load_comparison(paths, metric, mode)
    mfig, pfig = F.compare_progress([(e.label, e.sweep) for e in c.sweeps], c.metric, c.mode)
    c.png = _png(mfig)
    if write:
        output = Output(out or "compare")
        c.out = output.root
        c.files.append(output.write(f"{FIGURE}.png", c.png))
        c.files.append(output.write(f"{FIGURE}.html", _html(pfig)))
        c.has_html = True
        from plotly.offline import get_plotlyjs

        from selftune.analysis.report import PLOTLY_JS

        c.files.append(output.write(PLOTLY_JS, get_plotlyjs()))
        c.files.append(output.write("overview.csv", overview(c).to_csv(index=False)))
        c.files.append(output.write("report.html", compare_html(c)))
    return c


# ---------------------------------------------------------------------- the outputs


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0)


def compare_html(c: Comparison) -> str:
    e = html.escape
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = ", ".join(x.label for x in c.sweeps)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>selftune compare: {e(names)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Compare {len(c.sweeps)} sweeps</h1>",
             f"<p class='sub'>metric {e(c.metric)} ({c.mode}) &middot; analysed {now}</p><ul>",
             *[f"<li><b>{e(x.label)}</b>: <code>{e(x.sweep.path)}</code></li>" for x in c.sweeps], "</ul>",
             *[f"<p class='note'>warning: {e(w)}</p>" for w in c.warnings],
             "<h2>Overview</h2>", _table(overview(c))]
    verdicts = verdict_table(c)
    if verdicts is not None:
        parts += ["<h2>Verdicts</h2><p>Each sweep's best self-training config against its best supervised config, "
                  "both retrained with fresh seeds from the same start for the same iterations: the mean difference "
                  "and its 95% interval.</p>",
                  _table(verdicts)]
    parts.append(f"<figure id='{FIGURE}'><h3>Best so far against compute</h3>")
    if c.png:
        parts.append(f"<img alt='best so far against compute' src='data:image/png;base64,"
                     f"{base64.b64encode(c.png).decode()}'>")
    link = f" <a href='{FIGURE}.html'>Interactive version</a>." if c.has_html else ""
    parts += [f"<figcaption>Each sweep's best {e(c.metric)} so far (trials in completion order) against the "
              "optimizer iterations all its trials had run by then. The sweep whose line is higher (lower for a "
              f"loss) at the same compute searched better; a line still rising at its right end would gain from "
              f"more trials.{link}</figcaption></figure>",
              "<h2>Incumbents</h2>", _table(incumbents(c)),
              "<h2>Trials per status</h2>", _table(status_table(c)),
              "<h2>Importance</h2><p>PED-ANOVA over each sweep's completed and pruned trials (see the sweep's own "
              "report for the COMPLETE-only column); #n is the rank within the sweep.</p>",
              _table(importance_table(c)),
              "</body></html>"]
    return "\n".join(parts)


def summary_text(c: Comparison) -> str:
    lines = [f"compare {len(c.sweeps)} sweeps on {c.metric} ({c.mode})", *(f"warning: {w}" for w in c.warnings), ""]
    lines.append(overview(c).drop(columns="statuses").to_string(index=False))
    lines += ["", "trials per status:", status_table(c).to_string(index=False), "", "incumbents:",
              incumbents(c).to_string(index=False)]
    imp = importance_table(c)
    if len(imp):
        lines += ["", "importance (PED-ANOVA, rank in the sweep):", imp.to_string(index=False)]
    for x in c.sweeps:
        if x.verdict is not None:
            lines += ["", f"{x.label}: {x.verdict.headline}"]
    return "\n".join(lines)


def print_comparison(c: Comparison, file: Any = None) -> None:
    import sys

    file = file or sys.stdout
    print(c.summary(), file=file)
    if c.out:
        print(f"\nwrote {c.out}: report.html, {FIGURE}.png/.html, overview.csv", file=file)
