"""What `analyze` found (`Analysis`, with its `Figure`s) and the plain-text summary the terminal prints;
`page` renders the same as report.html."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from selftune.analysis.study import METHOD, Importance
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
    verdict_note: str | None = None  # without one: why the sweep should have one (missing, damaged) or not yet
    methods: pd.DataFrame | None = None  # per method (param.method): trials and best value; None without methods
    complete_importance: Importance | None = None  # the same evaluator over COMPLETE trials only (optuna.importance)
    method_importance: dict[str, Importance] = field(default_factory=dict)  # per method: its knobs, its trials
    dashboard_importance: Importance | None = None  # optuna-dashboard's own computation on the persisted study
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


def _has(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and pd.isna(v))


def own_knobs(a: Analysis, row: pd.Series, top: int = 3) -> str:
    """A trial's own knobs (its method's, not the key parameters), ranked by its method's importance: `k=v, ...`."""
    method = row.get(f"param.{METHOD}")
    imp = a.method_importance.get(str(method))
    ranked = imp.ranked() if imp is not None else []
    names = [c.removeprefix("param.") for c in row.index if c.startswith("param.") and _has(row[c])]
    names = [n for n in names if n != METHOD and n not in a.key_params]
    names = sorted(names, key=lambda n: ranked.index(n) if n in ranked else len(ranked))
    return ", ".join(f"{n}={_fmt(row[f'param.{n}'])}" for n in names[:top]) or "-"


def top_table(a: Analysis, top_k: int) -> pd.DataFrame:
    """The best trials: their method (a sweep over methods), the key parameters every trial has, and each
    trial's own knobs (the ones it has, most important for its method first)."""
    t, metric = a.trials, a.sweep.metric
    methods = f"param.{METHOD}" in t and t[f"param.{METHOD}"].notna().any()
    rows = []
    for i, (_, r) in enumerate(t.head(top_k).iterrows(), 1):
        row = {"rank": i, "trial": r["trial_id"]}
        if methods:
            row[METHOD] = _fmt(r.get(f"param.{METHOD}"))
        row.update({"status": r["status"], f"best {metric}": _fmt(r[f"best.{metric}"]),
                    "at iter": _fmt(r["best_iteration"]) if pd.notna(r["best_iteration"]) else "-",
                    "iters run": _fmt(r["iteration"]) if pd.notna(r["iteration"]) else "-"})
        for p in a.key_params:
            row[p] = _fmt(r.get(f"param.{p}"))
        if methods:
            row["its own knobs"] = own_knobs(a, r)
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
    elif a.verdict_note:  # where the verdict would be: that it is missing, naming the file
        lines += [f"VERDICT: {a.verdict_note}", ""]
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
            lines.append(f"  over COMPLETE trials only (as optuna.importance counts): {ctop}")
    for method, imp in a.method_importance.items():
        mtop = ", ".join(f"{k} {v:.2f}" for k, v in list(imp.values.items())[:4]) if imp.ok else imp.note
        lines.append(f"  within {method} trials ({imp.n_trials}): {mtop}")
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
