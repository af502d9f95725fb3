"""The report's two renderings of one figure (the PNG from matplotlib, the interactive HTML from plotly) draw the
same things in the same places: a hand-built sweep in the layout `load_sweep` makes (best trial first), real
Optuna distributions, a conditional space (a parameter only some methods use), no sweep run."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib import colors as mcolors
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from selftune.analysis import figures as F
from selftune.analysis.tables import Sweep
from tests.helpers import make_sweep, sweep_trials

M = "val_miou"
NAN = float("nan")
DISTS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "method": CategoricalDistribution(["supervised", "ema",
         "rounds"]), "st_weight": FloatDistribution(0.0, 2.0), "rounds": IntDistribution(1, 5)}
PARAMS = ["method", "lr", "st_weight"]  # importance order, not alphabetical
ROWS = [  # trial_id, status, best value, lr, method, st_weight (absent for supervised)
    ("a", "completed", 0.61, 3e-3, "ema", 1.2),
    ("b", "completed", 0.52, 1e-3, "rounds", 0.4),
    ("c", "stopped_by_asha", 0.40, 2e-2, "ema", 1.9),
    ("d", "completed", 0.33, 5e-4, "supervised", NAN),  # the worst: drawn first, coloured the darkest
    ("e", "diverged", NAN, 8e-2, "ema", 0.1),  # not scored: in neither rendering
]


def sweep() -> tuple[Sweep, pd.Series]:
    t = pd.DataFrame([{"trial_id": tid, "status": s, f"best.{M}": v, "best_iteration": 30, "iteration": 40,
                       "param.lr": lr, "param.method": m, "param.st_weight": w} for tid, s, v, lr, m, w in ROWS])
    h = pd.DataFrame([(tid, it, v * it / 30 if it <= 30 else v * 0.97) for tid, _, v, *_ in ROWS
                      for it in (10, 20, 30, 40) if v == v], columns=["trial_id", "iteration", M])
    s = Sweep("/sweeps/s", {}, [], M, "max", t, h)
    return s, t[f"best.{M}"].where(t["status"] != "diverged")


def png_ticks(ax: Any, n_axes: int) -> list[list[tuple[float, str]]]:
    """The tick labels the PNG writes beside each axis (text at x = axis + 0.04), per axis, bottom-up order kept."""
    out: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for txt in ax.texts:
        x, y = txt.get_position()
        out[round(x - 0.04)].append((y, txt.get_text()))
    return [out[k] for k in range(n_axes)]


@pytest.fixture(scope="module")
def parallel() -> tuple[Any, Any]:
    s, values = sweep()
    fig, pfig = F.parallel_coordinates(s, PARAMS, DISTS, values)
    return fig.axes[0], pfig.data[0]  # the PNG's axes, the Parcoords trace


def test_parcoords_axes_are_the_pngs_in_the_same_order(parallel) -> None:
    ax, pc = parallel
    labels = [x.get_text() for x in ax.get_xticklabels()]
    assert labels == ["val mIoU (EMA model)", "method", "lr (log)", "st_weight"]
    assert [d.label for d in pc.dimensions] == labels


def test_each_axis_spans_the_searched_range_with_the_pngs_ticks(parallel) -> None:
    ax, pc = parallel
    ticks = png_ticks(ax, len(pc.dimensions))
    for d, tk in zip(pc.dimensions, ticks, strict=True):
        assert list(zip(d.tickvals, d.ticktext, strict=True)) == tk
        assert list(d.range) == [F.NA_POS, 1.0]  # one shared height scale, as the PNG's one y axis
    by_label = {d.label: list(d.ticktext) for d in pc.dimensions}
    assert by_label["lr (log)"] == ["0.0001", "0.00316", "0.1"]  # searched 1e-4..1e-1, observed 5e-4..2e-2
    assert by_label["method"] == ["supervised", "ema", "rounds"]
    assert by_label["st_weight"] == ["0", "1", "2", "n/a"]
    assert by_label["val mIoU (EMA model)"] == ["0.330", "0.610"]


def test_colour_is_the_metric_on_the_pngs_scale(parallel) -> None:
    ax, pc = parallel
    viridis = F._cmap("viridis")
    assert pc.line.colorscale[0][1].lower() == mcolors.to_hex(viridis(0.0))  # viridis, not Blues
    assert (pc.line.cmin, pc.line.cmax) == (0.33, 0.61)
    assert pc.line.colorbar.title.text == "val mIoU (EMA model)"
    assert list(pc.line.color) == [0.33, 0.40, 0.52, 0.61]  # worst first, best drawn on top, as the PNG
    for line, v in zip(ax.lines, pc.line.color, strict=False):  # the PNG's lines, in the same order and colours
        assert line.get_color() == viridis((v - pc.line.cmin) / (pc.line.cmax - pc.line.cmin))


def test_a_trial_without_a_conditional_param_is_drawn_at_na_in_both(parallel) -> None:
    ax, pc = parallel
    lines = ax.lines[:4]  # the 4 scored trials' lines come before the axis lines
    d = next(line for line in lines if line.get_ydata()[0] == 0.0)  # trial d, the worst: the metric's 0
    assert list(d.get_ydata()) == pytest.approx([0.0, 0.0, math.log10(5) / 3, F.NA_POS])  # supervised: n/a
    assert all(not pd.isna(y) for line in lines for y in line.get_ydata())
    st = next(x for x in pc.dimensions if x.label == "st_weight")
    assert list(st.values) == [F.NA_POS, 1.9 / 2, 0.4 / 2, 1.2 / 2]
    assert all(F.NA_POS not in x.values and "n/a" not in x.ticktext for x in pc.dimensions if x.label != "st_weight")


def test_learning_curves_twin_has_the_pngs_star_annotation_rungs_and_st_start() -> None:
    s, _ = sweep()
    fig, pfig = F.learning_curves(s, "lr", DISTS["lr"], [10.0, 20.0], st_start=15)
    ax = fig.axes[0]
    gold = mcolors.to_rgba("gold")
    star = next(c for c in ax.collections if tuple(c.get_facecolor()[0]) == gold)
    (sx, sy), = star.get_offsets().tolist()
    pstar = [tr for tr in pfig.data if tr.marker and tr.marker.symbol == "star"]
    assert len(pstar) == 1 and (pstar[0].x, pstar[0].y) == ((sx,), (sy,))
    assert (sx, sy) == (30, pytest.approx(0.61))
    texts = {t.get_text() for t in ax.texts}
    notes = {a.text: a for a in pfig.layout.annotations}
    assert {"best: a", " ASHA rungs"} <= texts and {"best: a", " ASHA rungs"} <= set(notes)
    assert (notes["best: a"].x, notes["best: a"].y) == (sx, sy) and pstar[0].hovertext == "best: a"
    assert notes[" ASHA rungs"].x == 10.0
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    names = {tr.name for tr in pfig.data}
    assert {"best evaluation", "self-training starts (15)"} <= legend & names


def test_the_report_writes_the_parcoords_twin(tmp_path: Path) -> None:
    from selftune.analysis.report import analyze

    a = analyze(str(make_sweep(tmp_path, "s", sweep_trials(6))), str(tmp_path / "out"))
    html = (tmp_path / "out" / "parallel_coordinates.html").read_text()
    assert '"type":"parcoords"' in html and '"colorscale":[[0.0,"#440154"]' in html  # viridis, as the PNG
    labels = re.findall(r'"label":"([^"]+)"', html)
    assert labels[1:] == a.importance.ranked()  # importance order
    assert not [n for n in a.notes if n.startswith("parallel_coordinates")]
