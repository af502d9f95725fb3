"""What `analyze` found (`Analysis`, with its `Figure`s) and the plain-text summary the terminal prints;
`page` renders the same as report.html."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from selftune.analysis.study import Importance
from selftune.analysis.tables import STATUS_ORDER, STATUS_WORDS, Sweep, _fmt
from selftune.analysis.verdict import Verdict


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
    next_steps: list[str]  # every advice line, the alerts first
    verdict: Verdict | None = None  # verdict.json: the best self-training trial against the supervised control
    methods: pd.DataFrame | None = None  # per method (param.method): trials and best value; None without methods
    complete_importance: Importance | None = None  # the same evaluator over COMPLETE trials only (optuna-dashboard)
    alerts: list[str] = field(default_factory=list)  # the failure signals next_steps starts with
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

    @property
    def advice(self) -> list[str]:
        """next_steps without the alerts (shown on their own, first)."""
        return [x for x in self.next_steps if x not in self.alerts]

    def summary(self, top_k: int = 5) -> str:
        return summary_text(self, top_k)


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


# ---------------------------------------------------------------------- terminal summary


def summary_text(a: Analysis, top_k: int = 5) -> str:
    s = a.sweep
    lines = []
    if a.verdict is not None:  # what the sweep was for, first
        lines += [*a.verdict.lines(), ""]
    if a.methods is not None:
        lines += [f"per method ({s.metric}):", a.methods.drop(columns="statuses").to_string(
            index=False, formatters={f"best {s.metric}": _fmt}), ""]
    lines += [f"sweep {s.name}: {len(a.trials)} trials: {status_line(a)}",
             f"metric: {s.metric} ({s.mode})" + (f"; importance: {a.importance.evaluator}" if a.importance.ok else "")]
    if a.importance.ok:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(a.importance.values.items())[:5])
        lines.append(f"most important: {top}" + (f" ({a.importance.note})" if a.importance.note else ""))
        c = a.complete_importance
        if c is not None and c.ok:
            ctop = ", ".join(f"{k} {v:.2f}" for k, v in list(c.values.items())[:5])
            lines.append(f"  over COMPLETE trials only (what optuna-dashboard shows): {ctop}")
    if a.alerts:  # before the table: they say whether its ranking means anything
        lines += ["", "read this first:", *(f"  ! {x}" for x in a.alerts)]
    lines.append("")
    lines.append(top_table(a, top_k).to_string(index=False))
    lines.append("")
    if a.advice:
        lines.append("what to run next:")
        lines.extend(f"  - {x}" for x in a.advice)
    for n in a.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
