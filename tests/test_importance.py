"""Importance over a conditional space (a sweep over methods), on a synthetic study whose answer is known: the
objective depends only on `lr` and `method`, every other knob is noise. The sweep folder is written by hand in
the layout a sweep leaves (selftune_sweep.yaml, Ray's experiment state, params.json and result.json per trial,
the Optuna journal), so no Ray and no training: seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from selftune.analysis import load_sweep, param_importances
from selftune.analysis.study import (
    complete_importances,
    dashboard_importances,
    load_study,
    method_importances,
    shared_params,
)
from tests.helpers import METHOD_BASE, SHARED, flat_space, methods_space, write_sweep


@pytest.fixture(scope="module")
def methods_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("imp"), "methods-synthetic", methods_space)


def test_method_and_lr_lead_the_ranking_over_all_trials(methods_sweep: Path) -> None:
    sweep = load_sweep(str(methods_sweep))
    study = load_study(str(methods_sweep))
    imp, astudy = param_importances(sweep, study)
    assert imp.ok, imp.note
    assert set(imp.values) == SHARED  # no method's own knob is ranked against the shared ones
    assert set(imp.ranked()[:2]) == {"lr", "method"}, imp.values
    assert imp.values["warmup_iters"] < min(imp.values["lr"], imp.values["method"])
    assert sum(imp.values.values()) == pytest.approx(1.0)
    assert imp.n_trials == len(astudy.trials) == 72  # completed and ASHA-stopped ones
    complete = complete_importances(astudy, imp.quantile)
    assert set(complete.values) == SHARED and set(complete.ranked()[:2]) == {"lr", "method"}
    assert complete.n_trials == 54


def test_each_methods_knobs_are_ranked_within_its_own_trials(methods_sweep: Path) -> None:
    sweep = load_sweep(str(methods_sweep))
    _, astudy = param_importances(sweep, load_study(str(methods_sweep)))
    by = method_importances(astudy)
    assert set(by) == set(METHOD_BASE)
    counts = {m: sum(t.params["method"] == m for t in astudy.trials) for m in METHOD_BASE}
    for method, imp in by.items():
        assert imp.ok, (method, imp.note)
        assert imp.scope == f"method={method}" and imp.n_trials == counts[method]
        assert "method" not in imp.values
        assert imp.ranked()[0] == "lr", (method, imp.values)  # within a method only lr matters
    assert {"dice_weight"} < set(by["supervised"].values) and "st_weight" not in by["supervised"].values
    assert {"rounds", "st_weight"} < set(by["rounds"].values) and "ema_decay" not in by["rounds"].values
    assert {"ema_decay", "st_weight"} < set(by["ema_self_training"].values)


def test_a_space_without_methods_ranks_every_parameter_at_once(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "flat", flat_space, n=40)
    sweep = load_sweep(str(path))
    imp, astudy = param_importances(sweep, load_study(str(path)))
    assert shared_params(astudy) is None and method_importances(astudy) == {}
    assert set(imp.values) == {"lr", "threshold_base", "st_weight"} and imp.ranked()[0] == "lr"


def test_dashboard_column_is_optuna_dashboards_own_computation(methods_sweep: Path) -> None:
    """optuna-dashboard calls get_param_importances(study, PedAnovaImportanceEvaluator()) on the persisted study."""
    from optuna.importance import PedAnovaImportanceEvaluator

    study = load_study(str(methods_sweep))
    d = dashboard_importances(study)
    expected = optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    assert d.values == pytest.approx(expected) and list(d.values) == list(expected)
    assert d.n_trials == 54 and "10%" in d.evaluator


def test_the_report_follows_the_method(methods_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures per method, curves coloured by method, the pseudo-label panel over self-training trials only, the
    top table with the method and the knobs each trial has; the terminal and the page show the same numbers."""
    from selftune.analysis import figures as F
    from selftune.analysis.report import analyze
    from selftune.analysis.result import top_table

    seen: dict[str, Any] = {}
    real = F.pseudo_labels

    def spy(sweep: Any, st_start: Any) -> Any:
        seen["methods"] = set(sweep.trials["param.method"])
        return real(sweep, st_start)

    monkeypatch.setattr(F, "pseudo_labels", spy)
    a = analyze(str(methods_sweep), str(tmp_path / "out"))
    assert a.color_by == "method"
    assert "method" not in a.key_params and set(a.key_params) <= SHARED
    assert seen["methods"] == {"ema_self_training", "rounds"}
    names = {f.name: f for f in a.figures}
    for method in METHOD_BASE:
        for kind in ("parallel_coordinates", "slice"):
            f = names[f"{kind}_{method}"]
            assert f.png and f"method={method}" in f.title, (f.name, f.note)
            assert (tmp_path / "out" / f"{kind}_{method}.png").is_file()
    top = top_table(a, 5)
    assert list(top.columns[:3]) == ["rank", "trial", "method"] and "its own knobs" in top.columns
    for _, row in top.iterrows():
        assert row["its own knobs"] != "-"
        for knob in row["its own knobs"].split(", "):
            assert f"param.{knob.split('=')[0]}" in a.trials.columns
    report = (tmp_path / "out" / "report.html").read_text()
    section = report.split("<h2>Importance</h2>")[1].split("<h2>")[0]
    assert "within its own trials" in section and "optuna-dashboard</b> shows" in section
    for p, v in a.importance.values.items():
        assert f"{v:.3f}" in section, p
    summary = a.summary()
    for method, imp in a.method_importance.items():
        assert f"within {method} trials ({imp.n_trials}): {imp.ranked()[0]}" in summary
