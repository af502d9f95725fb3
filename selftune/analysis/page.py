"""The report page: `report.html` of an analysed sweep, one self-contained file (figures inlined as PNG,
links to their interactive versions beside it), and the top-trials table it shares with the terminal summary."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
from typing import Any

import pandas as pd

from selftune.analysis.result import Analysis, Figure, top_table
from selftune.analysis.study import (
    COMPLETE_COLUMN,
    SELFTUNE_COLUMN,
    Importance,
    importance_table,
    method_importance_table,
    why_they_differ,
)
from selftune.analysis.tables import STATUS_WORDS, Sweep, _fmt

VERDICT_FIGURE = "verdict_per_class"  # drawn in the first section, with the verdict, not among the figures

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
.verdict { font-size: 1.08em; font-weight: 600; padding: 8px 12px; border-left: 5px solid #a0aec0; background: #f7fafc; }
.alert { border: 1px solid #c53030; background: #fff5f5; padding: 0 14px 6px; margin-top: 1.2em; }
.alert h2 { color: #c53030; border: none; margin-top: 0.6em; }
.verdict.win { border-color: #2f855a; } .verdict.lose { border-color: #c53030; }
"""


def _codeify(text: str) -> str:
    """Escape, then show `backticked` parts as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _figure_html(f: Figure) -> list[str]:
    e = html.escape
    parts = [f"<figure id='{f.name}'><h3>{e(f.title)}</h3>"]
    if f.png:
        b64 = base64.b64encode(f.png).decode()
        parts.append(f"<img alt='{e(f.title)}' src='data:image/png;base64,{b64}'>")
    else:
        parts.append(f"<p class='note'>{e(f.note)}</p>")
    link = f" <a href='{f.name}.html'>Interactive version</a>." if f.has_html else ""
    parts.append(f"<figcaption>{e(f.caption)}{link}</figcaption></figure>")
    return parts


def _num(fmt: str) -> Any:
    return lambda v: "-" if v is None or pd.isna(v) else format(v, fmt)


def verdict_section(a: Analysis) -> list[str]:
    """The report's first section: the verdict (when the sweep wrote one) and the per-method breakdown."""
    parts: list[str] = []
    v = a.verdict
    if v is None and a.verdict_note:  # that it is missing, where it would be
        parts += ["<h2>Verdict</h2>", f"<p class='verdict'>{html.escape(a.verdict_note)}</p>"]
    if v is not None:
        style = {"helps": "win", "hurts": "lose"}.get(v.outcome or "", "")
        lines = v.lines()
        parts += ["<h2>Verdict</h2>", f"<p class='verdict {style}'>{html.escape(lines[0])}</p>",
                  "<pre class='note'>" + html.escape("\n".join(lines[1:])) + "</pre>"]
        arms = v.arms()
        if len(arms):
            arms[arms.columns[4]] = arms[arms.columns[4]].map(_num(".4f"))
            parts += ["<p>Both arms' best configs (chosen on val) retrained with fresh seeds, from the same start for "
                      "the same iterations, patience off; each run's best val evaluation scored once on "
                      f"{html.escape(str(v.split))}. Helps or hurts only when the 95% interval excludes 0.</p>",
                      arms.to_html(index=False, escape=True, border=0)]
        fig = next((f for f in a.figures if f.name == VERDICT_FIGURE), None)
        if fig is not None:
            parts += _figure_html(fig)
        per_class = v.per_class()
        if len(per_class):
            for col in ("difference (points)", "low", "high"):
                per_class[col] = per_class[col].map(_num("+.1f"))
            parts += [f"<h3>Per class ({html.escape(str(v.split))} IoU points, self-training minus supervised, 95% "
                      "interval)</h3>", per_class.to_html(index=False, escape=True, border=0)]
        runs = v.runs()
        if len(runs):
            parts += ["<h3>Confirmation runs</h3>", runs.to_html(index=False, escape=True, border=0,
                                                                  float_format=lambda x: f"{x:.4f}")]
    if a.methods is not None:
        m = a.methods.copy()
        key = f"best {a.sweep.metric}"
        m[key] = m[key].map(_fmt)
        parts += ["<h2>Methods</h2><p>Trials per method (the <code>method</code> parameter) and the best "
                  f"{html.escape(a.sweep.metric)} each reached.</p>", m.to_html(index=False, escape=True, border=0)]
    return parts


def alerts_section(a: Analysis) -> list[str]:
    """The failure signals (advice.ALERTS), before the trials are ranked."""
    if not a.alerts:
        return []
    return ["<div class='alert'><h2>Read this first</h2><ul>", *[f"<li>{_codeify(x)}</li>" for x in a.alerts],
            "</ul></div>"]


def report_html(a: Analysis, top_k: int, refresh: float | None = None) -> str:
    """The page; with `refresh` (seconds, `analyze --watch`) the browser reloads it that often."""
    s = a.sweep
    e = html.escape
    counts = "".join(f'<span class="badge">{n} {e(STATUS_WORDS[k])}</span>' for k, n in a.status_counts().items())
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S" if refresh else "%Y-%m-%d %H:%M")
    reload = f"<meta http-equiv='refresh' content='{max(1, math.ceil(refresh))}'>" if refresh else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{reload}<title>selftune sweep {e(s.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Sweep {e(s.name)}</h1>",
             f"<p class='sub'>{e(s.path)} &middot; {len(a.trials)} trials &middot; metric {e(s.metric)} ({s.mode}) "
             f"&middot; space {e(str(s.meta.get('sweep', {}).get('space', '?')))} &middot; analysed {now}</p>",
             f"<p>{counts}</p>",
             *verdict_section(a),
             *alerts_section(a),
             f"<h2>Top {min(top_k, len(a.trials))} trials</h2>",
             top_table(a, top_k).to_html(index=False, escape=True, border=0),
             "<h2>What to run next</h2><ul class='next'>",
             *[f"<li>{_codeify(x)}</li>" for x in a.advice],
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
    if a.importance.ok or a.method_importance:
        parts += importance_section(a)
    parts.append("<h2>Figures</h2>")
    for f in a.figures:
        if f.name != VERDICT_FIGURE:
            parts += _figure_html(f)
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


def importance_section(a: Analysis) -> list[str]:
    """The importances, each table saying which evaluator and which trials its numbers come from."""
    e = html.escape
    s = a.sweep
    c = a.complete_importance
    cnote = c.evaluator if c is not None and c.ok else (c.note if c is not None else "")
    split = bool(a.method_importance)
    parts = ["<h2>Importance</h2>"]
    if split:
        parts.append("<p>A sweep over methods is a conditional space: each method's knobs exist only in that "
                     "method's trials. So the method and the knobs every trial has are ranked over all trials "
                     "(first table), and each method's knobs within that method's trials (second table, one "
                     "Optuna study per method; the shared knobs are ranked there too, as a yardstick).</p>")
    if a.importance.ok:
        imp = importance_table(a.importance, c or Importance())
        parts += [f"<p><b>{'Method and shared knobs, ' if split else ''}over all trials.</b> "
                  f"<i>{e(SELFTUNE_COLUMN)}</i>: {e(a.importance.evaluator)}"
                  + (f" &middot; <span class='note'>{e(a.importance.note)}</span>" if a.importance.note else "")
                  + (f"; <i>{e(COMPLETE_COLUMN)}</i>: {e(cnote)}" if cnote else "") + ".</p>",
                  imp.head(12).to_html(index=False, escape=True, border=0),
                  f"<p>{e(why_they_differ(s))}</p>"]
    elif a.importance.note:
        parts.append(f"<p class='note'>{e(a.importance.note)}</p>")
    if split:
        parts += ["<p><b>Each method's knobs, within its own trials</b> (PED-ANOVA, the top quantile of that "
                  "method's trials against all of them):</p>",
                  method_importance_table(a.method_importance).to_html(index=False, escape=True, border=0)]
    d = a.dashboard_importance
    if d is not None:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in list(d.values.items())[:6]) if d.ok else d.note
        parts.append(f"<p><b>optuna-dashboard</b> shows {e(shown)}: {e(d.evaluator or 'PED-ANOVA')}"
                     + ("; it ranks a method's own knobs against the shared ones, each over the trials that have "
                        "it, so they can outrank knobs every trial has" if split else "")
                     + ". selftune's numbers above are what the notebook shows too.</p>")
    return parts


def _dashboard_storage(s: Sweep) -> str:
    """What to give optuna-dashboard: the journal in the sweep folder, else the storage the sweep recorded."""
    local = s.path.rstrip("/") + "/optuna_journal.log"
    if "://" in s.path or os.path.isfile(local):
        return local
    return str(s.meta.get("optuna_storage") or local).removeprefix("journal:")
