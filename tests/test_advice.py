"""The "what to run next" rules (selftune.analysis.advice), each on a small hand-built sweep: real trial and
history frames in the layout `load_sweep` makes (best trial first), real Optuna distributions, no sweep run."""

from __future__ import annotations

from typing import Any

import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution

from selftune.analysis import advice
from selftune.analysis.advice import Findings
from selftune.analysis.asha import asha_review
from selftune.analysis.study import Importance
from selftune.analysis.tables import Sweep

M = "val_miou"


def trial(tid: str, status: str, best: float | None, best_it: int | None, it: int, **params: Any) -> dict[str, Any]:
    row = {"trial_id": tid, "status": status, f"best.{M}": float("nan") if best is None else best,
           "best_iteration": pd.NA if best_it is None else best_it, "iteration": it, "message": None}
    row.update({f"param.{k}": v for k, v in params.items()})
    return row


def findings(rows: list[dict[str, Any]], history: list[tuple[str, int, float]] = (), *,
             dists: dict[str, Any] | None = None, importance: Importance | None = None,
             key_params: list[str] | None = None, max_t: int | None = None, rungs: list[float] = ()) -> Findings:
    t = pd.DataFrame(rows)
    t["best_iteration"] = t["best_iteration"].astype("Int64")
    t["iteration"] = t["iteration"].astype("Int64")
    h = pd.DataFrame(list(history), columns=["trial_id", "iteration", M])
    sweep = Sweep("/sweeps/s", {"max_t": max_t} if max_t else {}, [], M, "max", t, h)
    return Findings(sweep, importance or Importance(), dists or {}, asha_review(sweep, list(rungs)),
                    key_params or [])


def test_best_trial_names_it_and_how_to_export_it() -> None:
    f = findings([trial("a", "completed", 0.5, 40, 40, lr=0.003, st_weight=1.5),
                  trial("b", "stopped_by_asha", 0.3, 10, 10, lr=0.001, st_weight=0.5)], key_params=["lr", "st_weight"])
    assert advice.best_trial(f) == [
        "Best so far: trial a (completed), val_miou 0.5000 at iteration 40 (lr=0.003, st_weight=1.5). "
        "Export it with `selftune export /sweeps/s --out best.yaml` and use it as base_config of the next sweep."]
    assert advice.best_trial(findings([trial("d", "diverged", None, None, 10)])) == []


def test_still_improving_only_when_the_best_is_the_last_evaluation_at_max_t_and_rising() -> None:
    rows = [trial("a", "completed", 0.5, 40, 40)]
    rising = [("a", 30, 0.4), ("a", 40, 0.5)]
    assert advice.still_improving(findings(rows, rising, max_t=40)) == [
        "The best trial was still improving at max_t (40 iterations): a longer run (max_iters, or --max-t) "
        "will likely gain more."]
    assert advice.still_improving(findings(rows, rising)) == []  # no max_t recorded
    assert advice.still_improving(findings(rows, [("a", 30, 0.5), ("a", 40, 0.5)], max_t=40)) == []  # flat
    early = [trial("a", "early_stopped", 0.5, 30, 40)]
    assert advice.still_improving(findings(early, [("a", 30, 0.5), ("a", 40, 0.45)], max_t=40)) == []


def test_param_ranges_say_widen_at_an_edge_narrow_inside_and_list_choices() -> None:
    rows = [trial("a", "completed", 0.6, 40, 40, hi=0.95, lo=0.011, mid=0.5, cat="x"),
            trial("b", "completed", 0.5, 40, 40, hi=0.7, lo=0.3, mid=0.3, cat="y"),
            trial("c", "completed", 0.4, 40, 40, hi=0.2, lo=0.9, mid=0.6, cat="x")]
    dists = {"hi": FloatDistribution(0.0, 1.0), "lo": FloatDistribution(0.01, 1.0, log=True),
             "mid": FloatDistribution(0.0, 1.0), "cat": CategoricalDistribution(["x", "y", "z"])}
    imp = Importance(values={"hi": 0.5, "lo": 0.3, "mid": 0.2}, evaluator="PED-ANOVA")
    f = findings(rows, dists=dists, importance=imp, key_params=["hi", "lo", "mid"])
    assert advice.param_ranges(f) == [
        "hi (importance 0.50): the best value 0.95 is at the upper end of its range [0, 1]; widen the range upward.",
        "lo (importance 0.30): the best value 0.011 is at the lower end of its range [0.01, 1] log; widen the range "
        "downward.",
        "mid (importance 0.20): the best value 0.5 lies inside its range [0, 1]; the top 3 trials span 0.3 to 0.6: "
        "a follow-up sweep can narrow the range to about that."]
    assert advice.param_ranges(findings(rows, dists=dists, key_params=["cat", "gone"])) == [
        "cat: best value x; the top 3 trials used x, y (choices: x, y, z)."]  # no distribution for "gone": skipped


def test_pinned_offsets_need_two_at_their_bounds() -> None:
    dists = {f"threshold_offset[{i}]": FloatDistribution(-0.2, 0.2) for i in range(3)}
    two = findings([trial("a", "completed", 0.5, 40, 40, **{"threshold_offset[0]": 0.2, "threshold_offset[1]": -0.2,
                                                            "threshold_offset[2]": 0.0})], dists=dists)
    assert advice.pinned_offsets(two) == [
        "2 per-class threshold offsets of the best trial sit at their bounds (threshold_offset[0], "
        "threshold_offset[1]): try the thresholds_independent space."]
    one = findings([trial("a", "completed", 0.5, 40, 40, **{"threshold_offset[0]": 0.2, "threshold_offset[1]": 0.1,
                                                            "threshold_offset[2]": 0.0})], dists=dists)
    assert advice.pinned_offsets(one) == []


def test_no_importance_says_why_and_what_to_do() -> None:
    rows = [trial("a", "completed", 0.5, 40, 40)]
    assert advice.no_importance(findings(rows, importance=Importance(note="fewer than 2 scored trials"))) == [
        "No importances: fewer than 2 scored trials. Run more trials (num_samples) before narrowing ranges."]
    assert advice.no_importance(findings(rows, importance=Importance(values={"lr": 1.0}, note="rough"))) == []
    assert advice.no_importance(findings(rows)) == []


def test_asha_cuts_where_the_best_ranked_and_how_well_the_rung_predicted() -> None:
    rows = [trial("a", "completed", 0.9, 40, 40), trial("b", "completed", 0.8, 40, 40),
            trial("c", "completed", 0.7, 40, 40), trial("d", "stopped_by_asha", 0.2, 10, 10),
            trial("e", "stopped_by_asha", 0.1, 10, 10)]
    sound = [("a", 10, 0.6), ("b", 10, 0.5), ("c", 10, 0.4), ("d", 10, 0.2), ("e", 10, 0.1)]
    assert advice.asha_cuts(findings(rows, sound, rungs=[10])) == [
        "2 of 5 trials were stopped by ASHA (2 at iteration 10). The eventual best trial ranked 1 of 5 at the first "
        "rung (iteration 10). Values at that rung predicted the final ones well (Spearman 1.00): the cuts look sound."]
    late = [("a", 10, 0.3), ("b", 10, 0.5), ("c", 10, 0.6), ("d", 10, 0.7), ("e", 10, 0.65)]
    assert advice.asha_cuts(findings(rows, late, rungs=[10])) == [
        "2 of 5 trials were stopped by ASHA (2 at iteration 10). The eventual best trial ranked 5 of 5 at the first "
        "rung (iteration 10); ASHA nearly cut it: raise grace_period or lower reduction_factor. Values at that rung "
        "predicted the final ones poorly (Spearman -1.00): cuts there are noisy; a longer grace period makes them "
        "safer."]
    assert advice.asha_cuts(findings([trial("a", "completed", 0.9, 40, 40)], [("a", 10, 0.5)])) == []  # no ASHA


def test_budget_diverged_errored_patience_and_running_each_get_a_line() -> None:
    rows = [trial("a", "completed", 0.5, 40, 40, lr=0.001), trial("b", "stopped_by_budget", 0.4, 20, 20, lr=0.001),
            trial("c", "diverged", None, None, 10, lr=1e30), trial("d", "errored", None, None, 0, lr=0.001),
            trial("e", "early_stopped", 0.3, 20, 30, lr=0.003), trial("f", "running", 0.2, 10, 10, lr=0.001)]
    rows[3]["message"] = "CUDA out of memory"
    f = findings(rows)
    assert advice.budget_cuts(f) == [
        "1 trial(s) were cut by the sweep's budget, not by ASHA: raise time_budget_s / budget_iters or lower "
        "num_samples to let them finish."]
    assert advice.diverged(f) == ["1 trial(s) diverged, with lr 1e+30; no trial with lr <= 0.003 diverged: cap lr "
                                  "below 1e+30."]
    assert advice.errored(f) == ["1 trial(s) raised an error (d: CUDA out of memory); see error.txt in their folders. "
                                 "`selftune sweep --resume` retries them."]
    assert advice.early_stopped(f) == ["1 trial(s) stopped by their own patience before max_t."]
    assert advice.still_running(f) == [
        "1 trial(s) are still running or pending: this analysis covers what they reported so far; run "
        "`selftune analyze` again when the sweep has ended."]
    quiet = findings([trial("a", "completed", 0.5, 40, 40)])
    for rule in (advice.budget_cuts, advice.diverged, advice.errored, advice.early_stopped, advice.still_running):
        assert rule(quiet) == [], rule.__name__


def test_diverged_without_an_lr_explanation() -> None:
    mixed = findings([trial("a", "completed", 0.5, 40, 40, lr=0.01), trial("c", "diverged", None, None, 10, lr=0.001)])
    assert advice.diverged(mixed) == ["1 trial(s) diverged, with lr 0.001; lr alone does not explain it: check "
                                      "st_weight and grad_clip of those trials."]
    no_lr = findings([trial("a", "completed", 0.5, 40, 40), trial("c", "diverged", None, None, 10)])
    assert advice.diverged(no_lr) == ["1 trial(s) diverged: c."]


def test_next_steps_runs_every_rule_in_order() -> None:
    rows = [trial("a", "completed", 0.9, 40, 40, lr=0.001), trial("b", "stopped_by_asha", 0.2, 10, 10, lr=0.001),
            trial("c", "diverged", None, None, 10, lr=1e30), trial("f", "running", 0.1, 10, 10, lr=0.001)]
    hist = [("a", 10, 0.5), ("a", 40, 0.9), ("b", 10, 0.2), ("c", 10, 0.05), ("f", 10, 0.1)]
    f = findings(rows, hist, max_t=40, rungs=[10], importance=Importance(note="only 2 trials"))
    lines = advice.next_steps(f.sweep, f.importance, f.dists, f.asha, f.key_params)
    assert lines == [line for rule in advice.RULES for line in rule(f)]
    assert [s.split(" ")[0] for s in lines] == ["Best", "The", "No", "1", "1", "1"]
    assert "stopped by ASHA" in lines[3] and "diverged" in lines[4] and "still running" in lines[5]
