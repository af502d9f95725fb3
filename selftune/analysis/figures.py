"""The figures of `selftune analyze`: each function returns (matplotlib Figure, plotly Figure).

Matplotlib renders the PNGs: figures are built as `matplotlib.figure.Figure` objects, never through
pyplot, so no display or backend is needed (and a notebook's inline backend is left alone); plotly
renders the interactive HTML.
Trial status is drawn the same way everywhere (`STATUS_STYLE`): colour and marker in scatter
plots, line style and end marker in curves (dashed with an x: stopped by ASHA at a rung).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from selftune.analysis.tables import Sweep, _fmt
from selftune.sweepfolder import (
    COMPLETED,
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


@dataclass(frozen=True)
class Style:
    label: str
    color: str
    marker: str  # matplotlib
    symbol: str  # plotly
    ls: str  # matplotlib line style
    dash: str  # plotly dash


STATUS_STYLE: dict[str, Style] = {
    COMPLETED: Style("completed", "#2b6cb0", "o", "circle", "-", "solid"),
    EARLY_STOPPED: Style("stopped by patience", "#2c7a7b", "s", "square", "-", "solid"),
    STOPPED_BY_SCHEDULER: Style("stopped by ASHA", "#dd6b20", "X", "x", "--", "dash"),
    STOPPED_BY_BUDGET: Style("stopped by the sweep budget", "#975a16", "P", "cross", "-.", "dashdot"),
    DIVERGED: Style("diverged", "#c53030", "v", "triangle-down", ":", "dot"),
    ERRORED: Style("errored", "#4a5568", "D", "diamond", ":", "dot"),
    RUNNING: Style("running", "#6b46c1", ">", "triangle-right", "-", "solid"),
    DAMAGED: Style("record damaged", "#a0aec0", "h", "hexagon", ":", "dot"),
}
BAD = FAILED

METRIC_LABELS = {
    "val_miou": "val mIoU (EMA model)",
    "val_miou_raw": "val mIoU (raw model)",
    "train_miou": "train mIoU (EMA model)",
    "val_loss": "val loss (EMA model)",
    "train_val_gap": "train - val mIoU",
    "st_ratio": "pseudo-label acceptance",
}
PLOTLY_TEMPLATE = "plotly_white"
DPI = 110


def metric_label(metric: str) -> str:
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    if metric.startswith("val_iou/"):
        return f"val IoU, {metric.split('/', 1)[1].replace('_', ' ')}"
    return metric


def is_fraction(metric: str) -> bool:
    """mIoU, IoU and ratios live in [0, 1]: their axes start at 0 and never pass 1."""
    return "iou" in metric or "ratio" in metric


def _fraction_ylim(ax: Any, values: Any) -> None:
    vals = [v for v in np.ravel(np.asarray(values, dtype=float)) if math.isfinite(v)]
    top = max(vals) if vals else 1.0
    ax.set_ylim(0, min(1.0, math.ceil((top * 1.1 + 1e-9) * 20) / 20) if top > 0 else 1.0)


def _plotly_fraction_range(values: Any) -> list[float] | None:
    vals = [v for v in np.ravel(np.asarray(values, dtype=float)) if math.isfinite(v)]
    top = max(vals) if vals else 1.0
    return [0, min(1.0, math.ceil((top * 1.1 + 1e-9) * 20) / 20) if top > 0 else 1.0]


def _status_legend(ax: Any, statuses: Any, *, lines: bool, loc: str = "best", extra: list[Any] | None = None,
                   **kw: Any) -> None:
    """A legend of the statuses present (line styles or markers), on an Axes or a whole Figure."""
    handles = list(extra or [])
    for s in STATUS_STYLE:
        if s in set(statuses):
            st = STATUS_STYLE[s]
            if lines:
                handles.append(Line2D([], [], color="0.35", ls=st.ls, marker=st.marker if s != COMPLETED else None,
                                      markersize=7, label=st.label))
            else:
                handles.append(Line2D([], [], color=st.color, ls="", marker=st.marker, markersize=7, label=st.label))
    if handles:
        ax.legend(handles=handles, loc=loc, fontsize=8, framealpha=0.9, **kw)


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, dpi=DPI)
    return fig, fig.subplots(nrows, ncols, **kw)


def _cmap(name: str) -> Any:
    return matplotlib.colormaps[name]


def _log_axis(axis: Any) -> None:
    """Readable log ticks: 1, 2, 5 x 10^k as plain numbers, no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _fmt(float(v))))
    axis.set_minor_formatter(NullFormatter())


def _new_plotly(**layout: Any) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(template=PLOTLY_TEMPLATE, **layout)
    return fig


def _hover(row: pd.Series, params: list[str], metric: str) -> str:
    bits = [f"trial {row['trial_id']} ({STATUS_STYLE.get(row['status'], STATUS_STYLE['running']).label})"]
    v = row.get(f"best.{metric}")
    if v is not None and not pd.isna(v):
        bits.append(f"best {metric} {v:.4f} @ {row.get('best_iteration')}")
    for p in params[:6]:
        val = row.get(f"param.{p}")
        if val is not None and not (isinstance(val, float) and math.isnan(val)):
            bits.append(f"{p} = {_fmt(val)}")
    return "<br>".join(bits)


# ---------------------------------------------------------------------- 1. search progress


def compute_axis(sweep: Sweep) -> tuple[pd.Series, str]:
    """Per-trial compute and its axis label: GPU-hours when the sweep used GPUs, else CPU-hours
    (minutes for short sweeps)."""
    t = sweep.trials
    col = sweep.compute_column
    hours = pd.to_numeric(t[col], errors="coerce").fillna(0.0)
    unit = "GPU" if col == "gpu_hours" else "CPU"
    per = sweep.gpus_per_trial if unit == "GPU" else float(sweep.meta.get("sweep", {}).get("cpus_per_trial") or 1)
    how = f"trial wall time × {per:g} {unit}{'s' if per != 1 else ''} per trial"
    if hours.sum() < 1.0:
        return hours * 60, f"cumulative {unit}-minutes ({how})"
    return hours, f"cumulative {unit}-hours ({how})"


def progress_table(sweep: Sweep) -> pd.DataFrame:
    """Trials in completion order with cumulative iterations and compute, and the best value so far."""
    t = sweep.trials.copy()
    compute, _ = compute_axis(sweep)
    t["_compute"] = compute
    t["_end"] = t.get("ended_at", pd.NaT)
    t["_running"] = t["status"] == RUNNING
    t = t.sort_values(["_running", "_end", "number"], na_position="last", kind="stable")
    key = f"best.{sweep.metric}"
    value = pd.to_numeric(t[key], errors="coerce").where(~t["status"].isin(BAD))
    t["cum_iterations"] = pd.to_numeric(t["iteration"], errors="coerce").fillna(0).cumsum()
    t["cum_compute"] = t["_compute"].cumsum()
    t["value"] = value
    best = value.cummax() if sweep.mode == "max" else value.cummin()
    t["best_so_far"] = best.ffill()  # a diverged trial adds compute, not a value: the step goes on
    return t.drop(columns=["_compute", "_end", "_running"]).reset_index(drop=True)


def search_progress(sweep: Sweep) -> tuple[Any, Any]:
    from plotly.subplots import make_subplots

    p = progress_table(sweep)
    _, compute_label = compute_axis(sweep)
    label = metric_label(sweep.metric)
    fig, axes = _subplots(1, 2, figsize=(12, 4.6), sharey=True)
    pfig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06)
    for ax, (col, xlabel), c in zip(axes, [("cum_iterations", "cumulative optimizer iterations (all trials)"),
                                            ("cum_compute", compute_label)], (1, 2), strict=True):
        ax.step(p[col], p["best_so_far"], where="post", color="black", lw=1.8, label="best so far")
        pfig.add_scatter(x=p[col], y=p["best_so_far"], mode="lines", line=dict(shape="hv", color="black", width=2),
                         name="best so far", showlegend=c == 1, row=1, col=c)
        for status, g in p.groupby("status", sort=False):
            st = STATUS_STYLE.get(status, STATUS_STYLE[RUNNING])
            y = pd.to_numeric(g[f"best.{sweep.metric}"], errors="coerce")
            ax.scatter(g[col], y, marker=st.marker, color=st.color, s=42, zorder=3, edgecolor="white", linewidth=0.5)
            pfig.add_scatter(x=g[col], y=y, mode="markers", name=st.label, legendgroup=status, showlegend=c == 1,
                             marker=dict(symbol=st.symbol, color=st.color, size=9),
                             hovertext=[_hover(r, [], sweep.metric) for _, r in g.iterrows()], hoverinfo="text",
                             row=1, col=c)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        pfig.update_xaxes(title_text=xlabel, rangemode="tozero", row=1, col=c)
    axes[0].set_ylabel(f"best {label} of each trial")
    if is_fraction(sweep.metric):
        _fraction_ylim(axes[0], p[f"best.{sweep.metric}"])
        pfig.update_yaxes(range=_plotly_fraction_range(p[f"best.{sweep.metric}"]), row=1, col=1)
    _status_legend(fig, p["status"], lines=False, loc="lower center", ncol=7, frameon=False,
                   extra=[Line2D([], [], color="black", lw=1.8, label="best so far")])  # below: hides no point
    order = "trials in completion order" + (" (running trials last)" if (p["status"] == RUNNING).any() else "")
    fig.suptitle(f"Search progress: best {label} against compute ({order})", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    pfig.update_layout(template=PLOTLY_TEMPLATE, title=f"Search progress: best {label} against compute ({order})",
                       yaxis_title=f"best {label} of each trial", height=480)
    return fig, pfig


# ---------------------------------------------------------------------- 2. learning curves


@dataclass
class ColorMap:
    """Colours for one hyperparameter's values: continuous (viridis, log norm for log ranges) or categorical."""

    param: str
    kind: str  # "continuous" | "categorical"
    norm: Any = None
    categories: list[Any] | None = None
    log: bool = False

    def color(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "#a0aec0"
        if self.kind == "categorical":
            i = self.categories.index(value) if self.categories and value in self.categories else 0
            return mcolors.to_hex(_cmap("tab10")(i % 10))
        return mcolors.to_hex(_cmap("viridis")(self.norm(float(value))))


def color_map(sweep: Sweep, param: str, dist: Any | None) -> ColorMap:
    values = [v for v in sweep.trials[f"param.{param}"].tolist()
              if v is not None and not (isinstance(v, float) and math.isnan(v))]
    numeric = values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    choices = getattr(dist, "choices", None)
    if not numeric or (choices is not None and len(choices) <= 10):
        cats = list(choices) if choices is not None else sorted(set(map(str, values)))
        return ColorMap(param, "categorical", categories=cats)
    lo = float(getattr(dist, "low", min(values)))
    hi = float(getattr(dist, "high", max(values)))
    log = bool(getattr(dist, "log", False)) and lo > 0
    if hi <= lo:
        hi = lo + 1.0
    norm = mcolors.LogNorm(lo, hi) if log else mcolors.Normalize(lo, hi)
    return ColorMap(param, "continuous", norm=norm, log=log)


def learning_curves(sweep: Sweep, color_by: str | None, dist: Any | None, rungs: list[float],
                    st_start: int | None = None) -> tuple[Any, Any]:
    h, t = sweep.history, sweep.trials
    metric = sweep.metric
    label = metric_label(metric)
    cmap = color_map(sweep, color_by, dist) if color_by else None
    best_id = t["trial_id"].iloc[0] if len(t) and not pd.isna(t[f"best.{metric}"].iloc[0]) else None
    fig, ax = _subplots(figsize=(11, 5.6))
    pfig = _new_plotly(title=f"Learning curves: {label}" + (f", coloured by {color_by}" if color_by else ""),
                       xaxis_title="optimizer iteration", yaxis_title=label, height=560)
    for r in rungs:
        ax.axvline(r, color="0.55", lw=0.8, ls=(0, (1, 3)), zorder=0)
        pfig.add_vline(x=r, line=dict(color="gray", width=1, dash="dot"))
    if rungs:
        ax.text(rungs[0], 1.0, " ASHA rungs", transform=ax.get_xaxis_transform(), va="top", ha="left",
                fontsize=8, color="0.4")
        pfig.add_annotation(x=rungs[0], y=1.0, yref="paper", text=" ASHA rungs", showarrow=False, xanchor="left",
                            yanchor="top", font=dict(size=10, color="#666666"))
    if st_start:
        ax.axvline(st_start, color="#b83280", lw=0.9, ls=(0, (4, 3)), zorder=0, alpha=0.6)
        pfig.add_vline(x=st_start, line=dict(color="#b83280", width=1, dash="dash"))
    best_point = None
    for _, row in t.iterrows():
        g = h[h["trial_id"] == row["trial_id"]]
        if metric not in g:
            continue
        g = g[["iteration", metric]].dropna()
        if g.empty:
            continue
        st = STATUS_STYLE.get(row["status"], STATUS_STYLE[RUNNING])
        color = cmap.color(row.get(f"param.{color_by}")) if cmap else st.color
        is_best = row["trial_id"] == best_id
        lw = 2.6 if is_best else 1.4
        ax.plot(g["iteration"], g[metric], color=color, ls=st.ls, lw=lw, alpha=0.95 if is_best else 0.8,
                zorder=3 if is_best else 2)
        end_x, end_y = g["iteration"].iloc[-1], g[metric].iloc[-1]
        if row["status"] != COMPLETED:
            ax.scatter([end_x], [end_y], marker=st.marker, s=85 if row["status"] in BAD else 70,
                       color=STATUS_STYLE[row["status"]].color if row["status"] in BAD else color,
                       edgecolor="black" if row["status"] in BAD else "white", linewidth=0.6, zorder=4)
        if is_best:
            bi = g[metric].idxmax() if sweep.mode == "max" else g[metric].idxmin()
            best_point = (g.loc[bi, "iteration"], g.loc[bi, metric], f"best: {row['trial_id']}")
            ax.scatter([best_point[0]], [best_point[1]], marker="*", s=200, color="gold",
                       edgecolor="black", linewidth=0.7, zorder=5)
            ax.annotate(best_point[2], best_point[:2], textcoords="offset points", xytext=(-8, 9), ha="right",
                        fontsize=8)
        hover = _hover(row, [color_by] if color_by else [], metric)
        pfig.add_scatter(x=g["iteration"], y=g[metric], mode="lines+markers",
                         line=dict(color=color, dash=st.dash, width=lw + 0.4),
                         marker=dict(size=[4] * (len(g) - 1) + [11 if row["status"] != COMPLETED else 4],
                                     symbol=["circle"] * (len(g) - 1) + [st.symbol], color=color),
                         name=f"{row['trial_id']} ({st.label})", hovertext=hover, hoverinfo="text+y",
                         showlegend=False)
    ax.set_xlabel("optimizer iteration")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if is_fraction(metric) and metric in h:
        _fraction_ylim(ax, h[metric])
        pfig.update_yaxes(range=_plotly_fraction_range(h[metric]))
    extra = [Line2D([], [], color="black", marker="*", markerfacecolor="gold", ls="", markersize=12,
                    label="best evaluation")]
    if st_start:
        extra.append(Line2D([], [], color="#b83280", ls=(0, (4, 3)), lw=0.9, label=f"self-training starts ({st_start})"))
    if cmap and cmap.kind == "categorical":
        extra += [Line2D([], [], color=cmap.color(c), lw=2, label=f"{color_by} = {_fmt(c)}") for c in cmap.categories or []]
    _status_legend(ax, t["status"], lines=True, loc="lower right", extra=extra)
    if best_point is not None:  # after the curves, so drawn on top, as the PNG's zorder=5
        bx, by, text = best_point
        pfig.add_scatter(x=[bx], y=[by], mode="markers", name="best evaluation", hovertext=text,
                         hoverinfo="text+x+y", marker=dict(symbol="star", size=18, color="gold",
                                                           line=dict(color="black", width=1)))
        pfig.add_annotation(x=bx, y=by, text=text, showarrow=False, xanchor="right", yanchor="bottom", xshift=-8,
                            yshift=9, font=dict(size=10))
    if st_start:
        pfig.add_scatter(x=[None], y=[None], mode="lines", name=f"self-training starts ({st_start})",
                         hoverinfo="skip", line=dict(color="#b83280", width=1, dash="dash"))
    for status in STATUS_STYLE:  # the legend explains line styles; each line's hover names its trial
        if status in set(t["status"]):
            st = STATUS_STYLE[status]
            pfig.add_scatter(x=[None], y=[None], mode="lines+markers", name=st.label, hoverinfo="skip",
                             line=dict(color="gray", dash=st.dash), marker=dict(symbol=st.symbol, size=9, color="gray"))
    if cmap and cmap.kind == "categorical":
        for c in cmap.categories or []:
            pfig.add_scatter(x=[None], y=[None], mode="lines", name=f"{color_by} = {_fmt(c)}", hoverinfo="skip",
                             line=dict(color=cmap.color(c), width=3))
    pfig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.15, xanchor="left", x=0))
    if cmap and cmap.kind == "continuous":
        sm = ScalarMappable(norm=cmap.norm, cmap="viridis")
        cb = fig.colorbar(sm, ax=ax, pad=0.02)
        cb.set_label(f"{color_by}" + (" (log scale)" if cmap.log else ""))
        if cmap.log:
            _log_axis(cb.ax.yaxis)
        lo, hi = cmap.norm.vmin, cmap.norm.vmax
        pvals = np.log10([lo, hi]) if cmap.log else [lo, hi]
        ticks = np.linspace(pvals[0], pvals[1], 5)
        pfig.add_scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip", marker=dict(
            colorscale="Viridis", cmin=pvals[0], cmax=pvals[1], color=[pvals[0]], showscale=True,
            colorbar=dict(title=color_by, tickvals=ticks,
                          ticktext=[_fmt(10 ** v if cmap.log else v) for v in ticks])))
    title = f"Learning curves: {label}" + (f", coloured by {color_by}" if color_by else "")
    ax.set_title(title)
    fig.tight_layout()
    return fig, pfig


# ---------------------------------------------------------------------- 3. importance


def importance_bars(values: dict[str, float], evaluator: str, metric: str, complete: dict[str, float] | None = None,
                    top: int = 15) -> tuple[Any, Any]:
    """Importances, largest first; with `complete`, beside each bar the same evaluator over COMPLETE trials only."""
    import plotly.graph_objects as go

    names = list(values)[:top]
    names += [p for p in (complete or {}) if p not in names][: max(0, top - len(names))]
    series = [("over completed + pruned trials (selftune)", values, "#2b6cb0")]
    if complete:
        series.append(("over COMPLETE trials only (optuna-dashboard)", complete, "#dd6b20"))
    k = len(series)
    height = 0.8 / k
    y = np.arange(len(names))[::-1]  # largest on top
    fig, ax = _subplots(figsize=(8.5, (0.3 + 0.2 * k) * len(names) + 1.8))
    pfig = go.Figure()
    top_v = 0.0
    for i, (label, vals, color) in enumerate(series):
        v = [float(vals.get(p, 0.0)) for p in names]
        top_v = max(top_v, *v) if v else top_v
        pos = y + (k - 1) * height / 2 - i * height
        bars = ax.barh(pos, v, height, color=color, label=label)
        for b, x in zip(bars, v, strict=True):
            ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {x:.2f}", va="center", fontsize=7.5)
        pfig.add_bar(x=v, y=names, orientation="h", name=label, marker_color=color,
                     text=[f"{x:.2f}" for x in v], textposition="outside")
    ax.set_yticks(y, names)
    ax.set_xlabel("importance (sums to 1 over all parameters)")
    ax.set_xlim(0, top_v * 1.18 if top_v else 1)
    ax.set_title(f"Hyperparameter importance for {metric_label(metric)}\n{evaluator}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    if complete:
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    pfig.update_layout(template=PLOTLY_TEMPLATE, barmode="group", height=(26 + 16 * k) * len(names) + 180,
                       title=f"Hyperparameter importance: {evaluator}",
                       yaxis=dict(autorange="reversed"), xaxis_title="importance (sums to 1)",
                       legend=dict(orientation="h", yanchor="top", y=-0.15, xanchor="left", x=0))
    return fig, pfig


# ---------------------------------------------------------------------- 4. parallel coordinates


NA_POS = -0.1  # where a trial without the parameter (a conditional space's other branch) sits: below the axis


def _axis_position(values: pd.Series, dist: Any) -> tuple[pd.Series, list[tuple[float, str]]]:
    """Each value's height on its axis (0 to 1 over the searched range; log ranges in log space) and ticks."""
    choices = getattr(dist, "choices", None)
    if choices is not None:
        n = max(1, len(choices) - 1)
        pos = values.map(lambda v: choices.index(v) / n if v in choices else np.nan)
        return pos, [(i / n, _fmt(c)) for i, c in enumerate(choices)]
    num = pd.to_numeric(values, errors="coerce")
    lo = float(getattr(dist, "low", num.min()))
    hi = float(getattr(dist, "high", num.max()))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return num * 0 + 0.5, [(0.5, _fmt(lo))]
    if getattr(dist, "log", False) and lo > 0:
        pos = (np.log(num) - math.log(lo)) / (math.log(hi) - math.log(lo))
        ticks = [(k, _fmt(float(math.exp(math.log(lo) + k * (math.log(hi) - math.log(lo)))))) for k in (0, 0.5, 1)]
        return pos, ticks
    return (num - lo) / (hi - lo), [(k, _fmt(lo + k * (hi - lo))) for k in (0, 0.5, 1)]


@dataclass
class ParallelAxes:
    """What both renderings of the parallel coordinates draw: one axis per name (the metric, then the
    parameters in importance order), each trial's height on it (0 to 1, NA_POS where it has no value)
    and its ticks; the scored trials in drawing order (best last, on top) and their metric values."""

    names: list[str]  # axis labels, " (log)" on log-searched parameters
    positions: list[pd.Series]
    ticks: list[list[tuple[float, str]]]
    order: pd.Index
    values: pd.Series
    norm: Any  # the metric's colour scale

    @property
    def has_na(self) -> bool:
        return any(pos == NA_POS for tk in self.ticks for pos, _ in tk)


def parallel_axes(sweep: Sweep, params: list[str], dists: dict[str, Any], values: pd.Series) -> ParallelAxes:
    t = sweep.trials
    y = pd.to_numeric(values, errors="coerce")
    y = y.where(np.isfinite(y))
    keep = y.notna()
    vlo, vhi = float(y[keep].min()), float(y[keep].max())
    norm = mcolors.Normalize(vlo, vhi if vhi > vlo else vlo + 1e-9)
    order = y[keep].sort_values(ascending=sweep.mode == "max").index  # best drawn last, on top
    positions = [(y - vlo) / (vhi - vlo) if vhi > vlo else y * 0 + 0.5]
    ticks = [[(0.0, f"{vlo:.3f}"), (1.0, f"{vhi:.3f}")]]
    names = [metric_label(sweep.metric)]
    for p in params:
        dist = dists.get(p)
        pos, tk = _axis_position(t[f"param.{p}"], dist)
        if pos.loc[order].isna().any():
            pos, tk = pos.fillna(NA_POS), [*tk, (NA_POS, "n/a")]
        positions.append(pos)
        ticks.append(tk)
        log = getattr(dist, "log", False) and float(getattr(dist, "low", 0)) > 0
        names.append(p + (" (log)" if log else ""))
    return ParallelAxes(names, positions, ticks, order, y, norm)


def parallel_coordinates(sweep: Sweep, params: list[str], dists: dict[str, Any], values: pd.Series,
                         scope: str = "") -> tuple[Any, Any]:
    """Parallel coordinates, axes in importance order, each spanning its searched range; the PNG and the
    interactive twin (a plotly Parcoords) draw the same `parallel_axes`. `scope` names the trials drawn
    (a method's: "method=rounds") in the title."""
    import plotly.graph_objects as go

    pa = parallel_axes(sweep, params, dists, values)
    t = sweep.trials
    label = metric_label(sweep.metric)
    cmap = _cmap("viridis")
    bottom = NA_POS if pa.has_na else 0.0
    fig, ax = _subplots(figsize=(max(9.0, 1.5 * len(pa.names) + 2), 5.4))
    for i in pa.order:
        ys = [float(a.loc[i]) for a in pa.positions]
        st = STATUS_STYLE.get(t.loc[i, "status"], STATUS_STYLE[RUNNING])
        is_best = i == pa.order[-1]
        ax.plot(range(len(pa.names)), ys, color=cmap(pa.norm(pa.values.loc[i])), lw=2.6 if is_best else 1.4,
                ls=st.ls, alpha=0.95, marker="o", ms=3, zorder=3 if is_best else 2)
    for k, tk in enumerate(pa.ticks):
        ax.axvline(k, color="0.3", lw=0.8, zorder=1)
        for pos, text in tk:
            ax.text(k + 0.04, pos, text, fontsize=7.5, va="center", ha="left", color="0.25",
                    style="italic" if pos == NA_POS else "normal",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7), zorder=4)
    ax.set_xticks(range(len(pa.names)), pa.names, rotation=20, ha="right", fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(bottom - 0.05, 1.05)
    ax.set_xlim(-0.2, len(pa.names) - 0.5)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = ScalarMappable(norm=pa.norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.03).set_label(label)
    statuses = set(t.loc[pa.order, "status"])
    if len(statuses) > 1:
        _status_legend(ax, statuses, lines=True, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4,
                       frameon=False)
    what = f"{len(pa.order)} scored {scope} trials" if scope else f"{len(pa.order)} scored trials"
    title = (f"Parallel coordinates: {what} across the {len(params)} most important "
             "parameters (each axis spans its searched range" + ("; n/a: not used by the trial" if pa.has_na
                                                                 else "") + ")")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()

    dims = [dict(label=name, range=[bottom, 1.0], values=pos.loc[pa.order].to_numpy(dtype=float),
                 tickvals=[p for p, _ in tk], ticktext=[s for _, s in tk])
            for name, pos, tk in zip(pa.names, pa.positions, pa.ticks, strict=True)]
    pfig = go.Figure(go.Parcoords(dimensions=dims, line=dict(
        color=pa.values.loc[pa.order].to_numpy(dtype=float), colorscale="Viridis", cmin=pa.norm.vmin,
        cmax=pa.norm.vmax, showscale=True, colorbar=dict(title=label)), labelside="bottom", labelangle=-20))
    pfig.update_layout(template=PLOTLY_TEMPLATE, title=title.replace(" (each", "<br>(each"), height=540,
                       margin=dict(b=110))
    return fig, pfig


# ---------------------------------------------------------------------- 5. slice


def _param_axis_values(values: pd.Series, dist: Any) -> tuple[pd.Series, list[str] | None]:
    """x positions for a parameter: the values, or category indices (with their labels)."""
    choices = getattr(dist, "choices", None)
    numeric = pd.to_numeric(values, errors="coerce")
    if choices is not None or numeric.isna().all():
        cats = list(choices) if choices is not None else sorted(set(values.dropna().astype(str)))
        idx = values.map(lambda v: cats.index(v) if v in cats else (cats.index(str(v)) if str(v) in cats else np.nan))
        return idx, [_fmt(c) for c in cats]
    return numeric, None


def slice_plot(sweep: Sweep, params: list[str], dists: dict[str, Any], values: pd.Series, scope: str = ""
               ) -> tuple[Any, Any]:
    from plotly.subplots import make_subplots

    t = sweep.trials
    n = len(params)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    label = metric_label(sweep.metric)
    fig, axes = _subplots(nrows, ncols, figsize=(3.4 * ncols + 0.6, 3.0 * nrows + 0.9),
                             sharey=True, squeeze=False)
    pfig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, subplot_titles=params,
                         horizontal_spacing=0.04, vertical_spacing=0.12 if nrows > 1 else 0.2)
    y = pd.to_numeric(values, errors="coerce")
    finite = y[np.isfinite(y)]
    bottom = 0.0 if is_fraction(sweep.metric) else (float(finite.min()) if len(finite) else 0.0)
    shown: set[str] = set()
    for i, p in enumerate(params):
        ax = axes[i // ncols][i % ncols]
        r, c = i // ncols + 1, i % ncols + 1
        dist = dists.get(p)
        x, cats = _param_axis_values(t[f"param.{p}"], dist)
        for status in STATUS_STYLE:
            m = (t["status"] == status) & x.notna()
            if not m.any():
                continue
            st = STATUS_STYLE[status]
            yy = y[m] if status not in BAD else pd.Series(bottom, index=t.index[m])
            ax.scatter(x[m], yy, marker=st.marker, color=st.color, s=44, alpha=0.85, edgecolor="white", linewidth=0.4,
                       zorder=3, clip_on=False)
            pfig.add_scatter(x=x[m], y=yy, mode="markers", name=st.label, legendgroup=status,
                             showlegend=status not in shown, marker=dict(symbol=st.symbol, color=st.color, size=8),
                             hovertext=[_hover(row, [p], sweep.metric) for _, row in t[m].iterrows()],
                             hoverinfo="text", row=r, col=c)
            shown.add(status)
        log = bool(getattr(dist, "log", False))
        if log:
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
            pfig.update_xaxes(type="log", row=r, col=c)
        if cats is not None:
            ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=8)
            ax.set_xlim(-0.5, len(cats) - 0.5)
            pfig.update_xaxes(tickvals=list(range(len(cats))), ticktext=cats, row=r, col=c)
        elif dist is not None and hasattr(dist, "low"):
            lo, hi = float(dist.low), float(dist.high)
            if log:
                ax.set_xlim(lo / 1.15, hi * 1.15)
            else:
                pad = (hi - lo) * 0.04 or 0.5
                ax.set_xlim(lo - pad, hi + pad)
            ax.axvspan(lo, hi, color="0.93", zorder=0)
        ax.set_xlabel(p + (" (log)" if log else ""), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for row_axes in axes:
        row_axes[0].set_ylabel(label, fontsize=9)
    if is_fraction(sweep.metric):
        _fraction_ylim(axes[0][0], y)
        pfig.update_yaxes(range=_plotly_fraction_range(y))
    handles = [Line2D([], [], color=STATUS_STYLE[s].color, marker=STATUS_STYLE[s].marker, ls="", markersize=7,
                      label=STATUS_STYLE[s].label + (" (drawn at the bottom)" if s in BAD else ""))
               for s in STATUS_STYLE if s in shown]
    height = 3.0 * nrows + 0.9
    within = f"{scope} trials: " if scope else ""
    fig.suptitle(f"{within}{label} against each parameter (best value of finished trials, last value of ASHA-stopped "
                 "ones; shaded: the searched range)", fontsize=10, y=1 - 0.08 / height)
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.3 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    pfig.update_layout(template=PLOTLY_TEMPLATE, height=300 * nrows + 120,
                       title=f"{within}{label} against each parameter (diverged/errored trials drawn at the bottom)")
    return fig, pfig


# ---------------------------------------------------------------------- 6. per-class IoU


def per_class_iou(sweep: Sweep, top_k: int) -> tuple[Any, Any] | None:
    import plotly.graph_objects as go

    t = sweep.trials
    cols = [c for c in t.columns if c.startswith("best.val_iou/")]
    ranked = trials_that_count(t, sweep.metric).head(top_k)
    if not cols or ranked.empty:
        return None
    classes = [c.removeprefix("best.val_iou/").replace("_", " ") for c in cols]
    k = len(ranked)
    width = 0.8 / k
    fig, ax = _subplots(figsize=(max(8.0, 1.3 * len(classes) + 2), 4.8))
    pfig = go.Figure()
    palette = _cmap("tab10")
    x = np.arange(len(classes))
    for i, (_, row) in enumerate(ranked.iterrows()):
        vals = pd.to_numeric(row[cols], errors="coerce").to_numpy(dtype=float)
        name = f"#{i + 1} {row['trial_id']} (mIoU {row.get('best.val_miou', float('nan')):.3f})"
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=name, color=palette(i % 10))
        pfig.add_bar(x=classes, y=vals, name=name, marker_color=mcolors.to_hex(palette(i % 10)))
    ax.set_xticks(x, classes, rotation=20 if len(classes) > 6 else 0)
    ax.set_ylabel("val IoU at the trial's best evaluation")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if k > 3 else 1, loc="upper right")
    ax.set_title(f"Per-class val IoU of the top {k} trials (EMA model, at each trial's best checkpoint)")
    fig.tight_layout()
    pfig.update_layout(template=PLOTLY_TEMPLATE, barmode="group", yaxis=dict(range=[0, 1], title="val IoU"),
                       title=f"Per-class val IoU of the top {k} trials", height=480)
    return fig, pfig


# ---------------------------------------------------------------------- 7. pseudo-label acceptance


def pseudo_labels(sweep: Sweep, st_start: int | None) -> tuple[Any, Any] | None:
    from plotly.subplots import make_subplots

    h, t = sweep.history, sweep.trials
    if "st_ratio" not in h or h["st_ratio"].notna().sum() == 0:
        return None
    ranked = trials_that_count(t, sweep.metric)
    best_id = ranked["trial_id"].iloc[0] if len(ranked) else t["trial_id"].iloc[0]
    cls_cols = [c for c in h.columns if c.startswith("st_ratio/")]
    fig, (a1, a2) = _subplots(1, 2, figsize=(13, 4.8), sharey=True)
    pfig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05, subplot_titles=(
        f"best trial {best_id}: per class", "every trial: all classes together"))
    g = h[h["trial_id"] == best_id].sort_values("iteration")
    palette = _cmap("tab10")
    for i, c in enumerate(cls_cols):
        color = mcolors.to_hex(palette(i % 10))
        name = c.removeprefix("st_ratio/").replace("_", " ")
        a1.plot(g["iteration"], g[c], marker="o", ms=3, lw=1.5, color=color, label=name)
        pfig.add_scatter(x=g["iteration"], y=g[c], mode="lines+markers", name=name, line=dict(color=color),
                         legendgroup="classes", row=1, col=1)
    a1.set_title(f"Best trial {best_id}: accepted share per class", fontsize=10)
    if st_start:
        a1.plot([], [], color="0.5", ls=(0, (1, 3)), lw=0.8, label=f"self-training starts ({st_start})")
    a1.legend(fontsize=8, ncol=2, loc="upper left")
    for _, row in t.iterrows():
        gg = h[h["trial_id"] == row["trial_id"]].sort_values("iteration")
        st = STATUS_STYLE.get(row["status"], STATUS_STYLE[RUNNING])
        is_best = row["trial_id"] == best_id
        a2.plot(gg["iteration"], gg["st_ratio"], ls=st.ls, color="black" if is_best else st.color,
                lw=2.4 if is_best else 1.0, alpha=1.0 if is_best else 0.6, zorder=3 if is_best else 2)
        pfig.add_scatter(x=gg["iteration"], y=gg["st_ratio"], mode="lines",
                         line=dict(color="black" if is_best else st.color, dash=st.dash, width=3 if is_best else 1),
                         name=f"{row['trial_id']} ({st.label})", legendgroup="trials", row=1, col=2)
    a2.set_title("Every trial: accepted share, all classes (black: best trial)", fontsize=10)
    _status_legend(a2, t["status"], lines=True, loc="upper left")
    for ax in (a1, a2):
        if st_start:
            ax.axvline(st_start, color="0.5", ls=(0, (1, 3)), lw=0.8)
        ax.set_xlabel("optimizer iteration")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    a1.set_ylabel("accepted pseudo-label pixels / predicted pixels")
    fig.suptitle("Pseudo-label acceptance: share of the teacher's predictions above their class threshold "
                 "(since the previous evaluation)", fontsize=11)
    fig.tight_layout()
    pfig.update_layout(template=PLOTLY_TEMPLATE, height=500, title="Pseudo-label acceptance (st_ratio)",
                       yaxis=dict(range=[0, 1.05], title="accepted / predicted pixels"))
    pfig.update_xaxes(title_text="optimizer iteration")
    return fig, pfig


# ---------------------------------------------------------------------- 8. the verdict, per class


HELPS, HURTS = "#2f855a", "#c53030"


def verdict_per_class(per_class: pd.DataFrame, split: str) -> tuple[Any, Any]:
    """Self-training minus supervised IoU (points) per class on `split`, mean over the confirmation seeds with its
    95% interval: one horizontal bar per class, largest on top; green (helped) or red (hurt) only where the
    interval excludes 0, grey otherwise. `per_class` is `Verdict.per_class()`."""
    import plotly.graph_objects as go

    df = per_class.iloc[::-1]  # barh draws bottom-up: largest last, so on top
    names = [str(n) for n in df["class"]]
    vals, lo, hi = (df[c].to_numpy(dtype=float) for c in ("difference (points)", "low", "high"))
    colors = [HELPS if w == "helped" else HURTS if w == "hurt" else "0.65" for w in df["word"]]
    fig, ax = _subplots(figsize=(8.5, 0.42 * len(names) + 2.3))
    ax.barh(names, vals, color=colors, xerr=[vals - lo, hi - vals], error_kw=dict(ecolor="0.25", capsize=3, lw=1))
    span = min(max(float(np.nanmax(np.abs(np.r_[lo, hi]))) if len(names) else 1.0, 1.0), 100.0)
    for y, (v, h) in enumerate(zip(vals, hi, strict=True)):
        ax.text(max(h, v) + 0.02 * span, y, f"{v:+.1f}", va="center", ha="left", fontsize=8)
    ax.axvline(0, color="0.2", lw=0.9)
    ax.set_xlim(-span * 1.25, span * 1.25)
    ax.set_xlabel("IoU points: self-training minus tuned supervised (mean over seeds, 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    what = "test (scored once, after every choice)" if split == "test" else "val (the split trials were chosen on)"
    title = f"Per-class IoU difference on {what}"
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[Line2D([], [], color=HELPS, lw=6, label="helped (interval above 0)"),
                       Line2D([], [], color=HURTS, lw=6, label="hurt (interval below 0)"),
                       Line2D([], [], color="0.65", lw=6, label="no clear difference")],
              loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    pfig = go.Figure(go.Bar(x=vals, y=names, orientation="h", marker_color=[mcolors.to_hex(c) for c in colors],
                            error_x=dict(type="data", symmetric=False, array=hi - vals, arrayminus=vals - lo),
                            text=[f"{v:+.1f}" for v in vals], textposition="outside"))
    pfig.update_layout(template=PLOTLY_TEMPLATE, title=title, height=40 * len(names) + 160,
                       xaxis=dict(title="IoU points (self-training minus supervised)", range=[-span * 1.3, span * 1.3]))
    return fig, pfig


# ---------------------------------------------------------------------- 9. several sweeps (selftune compare)


def compare_progress(sweeps: list[tuple[str, Sweep]], metric: str, mode: str) -> tuple[Any, Any]:
    """Each sweep's best value so far against the optimizer iterations its trials had run (in completion
    order), one colour per sweep; faint dots are the trials' own values."""
    label = metric_label(metric)
    fig, ax = _subplots(figsize=(11, 5.4))
    pfig = _new_plotly(title=f"Best {label} so far against compute", height=540,
                       xaxis_title="cumulative optimizer iterations (all trials of the sweep)",
                       yaxis_title=f"best {label} so far")
    palette = _cmap("tab10")
    values = []
    for i, (name, sweep) in enumerate(sweeps):
        p = progress_table(sweep)
        p = p[p["best_so_far"].notna()]
        color = mcolors.to_hex(palette(i % 10))
        if p.empty:
            continue
        x, y = p["cum_iterations"].to_numpy(dtype=float), p["best_so_far"].to_numpy(dtype=float)
        ax.step(x, y, where="post", color=color, lw=2.0, label=f"{name}: {_fmt(float(y[-1]))} after {int(x[-1])} it.")
        ax.scatter(p["cum_iterations"], p["value"], color=color, s=18, alpha=0.35, zorder=2)
        ax.scatter([x[-1]], [y[-1]], color=color, s=60, zorder=4, edgecolor="black", linewidth=0.6)
        pfig.add_scatter(x=x, y=y, mode="lines+markers", line=dict(shape="hv", color=color, width=2.5), name=name,
                         hovertext=[f"{name}: trial {t}" for t in p["trial_id"]], hoverinfo="text+x+y")
        pfig.add_scatter(x=p["cum_iterations"], y=p["value"], mode="markers", marker=dict(color=color, size=6,
                         opacity=0.4), name=f"{name}: each trial", showlegend=False,
                         hovertext=[f"{name}: trial {t}" for t in p["trial_id"]], hoverinfo="text+y")
        values += list(y) + [v for v in p["value"] if pd.notna(v)]
    ax.set_xlabel("cumulative optimizer iterations (all trials of the sweep, in completion order)")
    ax.set_ylabel(f"best {label} so far")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if is_fraction(metric) and values:
        _fraction_ylim(ax, values)
        pfig.update_yaxes(range=_plotly_fraction_range(values))
    ax.legend(loc="lower right" if mode == "max" else "upper right", fontsize=9, framealpha=0.9)
    ax.set_title(f"Best {label} so far against compute: {len(sweeps)} sweeps (dots: each trial)", fontsize=11)
    fig.tight_layout()
    pfig.update_xaxes(rangemode="tozero")
    return fig, pfig
