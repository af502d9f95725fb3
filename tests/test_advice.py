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


def padding(n: int, **params: Any) -> list[dict[str, Any]]:
    """n completed trials below every other test trial's value: enough scored trials for range advice."""
    return [trial(f"pad{i}", "completed", 0.01, 40, 40, **params) for i in range(n)]


def findings(rows: list[dict[str, Any]], history: list[tuple[str, int, float]] = (), *,
             dists: dict[str, Any] | None = None, importance: Importance | None = None,
             key_params: list[str] | None = None, max_t: int | None = None, rungs: list[float] = (),
             meta: dict[str, Any] | None = None) -> Findings:
    t = pd.DataFrame(rows)
    t["best_iteration"] = t["best_iteration"].astype("Int64")
    t["iteration"] = t["iteration"].astype("Int64")
    h = pd.DataFrame(list(history), columns=["trial_id", "iteration", M])
    meta = {**({"max_t": max_t} if max_t else {}), **(meta or {})}
    sweep = Sweep("/sweeps/s", meta, [], M, "max", t, h)
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
            trial("c", "completed", 0.4, 40, 40, hi=0.2, lo=0.9, mid=0.6, cat="x"),
            *padding(5, hi=0.5, lo=0.5, mid=0.5, cat="z")]
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
                                                            "threshold_offset[2]": 0.0}), *padding(7)], dists=dists)
    assert advice.pinned_offsets(two) == [
        "2 per-class threshold offsets of the best trial sit at their bounds (threshold_offset[0], "
        "threshold_offset[1]): try the thresholds_independent space."]
    one = findings([trial("a", "completed", 0.5, 40, 40, **{"threshold_offset[0]": 0.2, "threshold_offset[1]": 0.1,
                                                            "threshold_offset[2]": 0.0}), *padding(7)], dists=dists)
    assert advice.pinned_offsets(one) == []


def test_no_importance_says_why_and_what_to_do() -> None:
    rows = [trial("a", "completed", 0.5, 40, 40), *padding(7)]
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
    assert [s.split(" ")[0] for s in lines] == ["Too", "Best", "The", "No", "1", "1", "1"]
    assert "stopped by ASHA" in lines[4] and "diverged" in lines[5] and "still running" in lines[6]


# ---------------------------------------------------------------------- the alerts, which lead


CLASSES = ("background", "water body", "building", "road")


def with_ious(row: dict[str, Any], *ious: float) -> dict[str, Any]:
    """A trial row with its per-class val IoU at its best evaluation (CLASSES order)."""
    return {**row, **{f"best.val_iou/{c}": v for c, v in zip(CLASSES, ious, strict=True)}}


def test_nothing_learned_beyond_the_majority_class_leads_and_holds_range_advice_back() -> None:
    """The 11-class defect: trials that learned only the background, ranked and advised on as if they were fine."""
    rows = [with_ious(trial(f"t{i}", "completed", 0.2 - i / 100, 40, 40, lr=0.001 * (i + 1)), 0.8 - i / 50, 0.0,
                      0.01, float("nan")) for i in range(10)]
    dists = {"lr": FloatDistribution(0.0001, 0.1, log=True)}
    f = findings(rows, dists=dists, key_params=["lr"], meta={"data_root": "/data/salak"},
                 importance=Importance(values={"lr": 1.0}, evaluator="PED-ANOVA"))
    assert advice.nothing_learned(f) == [
        "No class was learned beyond the majority one: in the best trial (t0) only background (IoU 0.80), presumably "
        "the majority class, is above IoU 0.05; every other class is at about 0. The trials rank noise, so no range "
        "advice follows: check the labels and the class count with `selftune data check /data/salak`, then lr, "
        "max_iters and the loss before sweeping again."]
    assert advice.param_ranges(f) == []  # 10 trials, a varied key parameter, and still no range advice
    assert advice.dead_classes(f) == []  # said once, by the rule above
    lines = advice.next_steps(f.sweep, f.importance, f.dists, f.asha, f.key_params)
    assert lines[0].startswith("No class was learned") and not any("range [" in x for x in lines)
    assert advice.best_trial(f)[0].endswith("(lr=0.001).")  # named, but not offered as the next base config

    nothing = findings([with_ious(trial("a", "completed", 0.01, 40, 40), 0.04, 0.0, 0.0, 0.0)])
    assert "no class is above IoU 0.05" in advice.nothing_learned(nothing)[0]
    no_per_class = findings([trial("a", "completed", 0.08, 40, 40)], meta={"class_names": list("abcdefghijk")})
    assert "its val mIoU 0.080 is no more than predicting one class everywhere can score (at most 1/11 = 0.091)" in \
        advice.nothing_learned(no_per_class)[0]
    learned = findings([with_ious(trial("a", "completed", 0.4, 40, 40), 0.8, 0.3, 0.0, 0.5)])
    assert advice.nothing_learned(learned) == []
    assert advice.nothing_learned(findings([trial("a", "completed", 0.6, 40, 40)], meta={"class_names": ["a", "b"]})) == []


def test_classes_at_iou_0_in_every_top_trial_are_named() -> None:
    """The demo defect: three classes at IoU 0 in every top trial, and the advice said nothing."""
    rows = [with_ious(trial("a", "completed", 0.5, 40, 40), 0.9, 0.0, 0.0, 0.6),
            with_ious(trial("b", "completed", 0.4, 40, 40), 0.8, 0.0, 0.3, 0.5),  # building learned here
            with_ious(trial("c", "completed", 0.3, 40, 40), 0.7, 0.005, 0.0, float("nan")),
            with_ious(trial("d", "stopped_by_asha", 0.2, 10, 10), 0.6, 0.2, 0.0, 0.1)]  # below the top 3
    f = findings(rows, meta={"data_root": "/data/demo"})
    assert advice.dead_classes(f) == [
        "1 of 4 classes are at IoU 0 in every one of the top 3 trials: water body. No setting this sweep searched "
        "learns them, and ranking by mean IoU hides it: check that they have labelled pixels (`selftune data check "
        "/data/demo`), weight them up (class_weighting: explicit, class_weights) or lower their pseudo-label "
        "thresholds."]  # not building (learned by b), not road (NaN in c: in neither truth nor prediction)
    assert advice.dead_classes(findings([with_ious(trial("a", "completed", 0.5, 40, 40), 0.9, 0.1, 0.2, 0.3)])) == []
    assert advice.dead_classes(findings([trial("a", "completed", 0.5, 40, 40)])) == []  # no per-class IoU


def test_most_trials_stopped_by_patience_leads_instead_of_the_count() -> None:
    rows = [trial("a", "early_stopped", 0.5, 20, 30), trial("b", "early_stopped", 0.4, 20, 30),
            trial("c", "early_stopped", 0.3, 10, 20), trial("d", "completed", 0.2, 40, 40),
            trial("e", "running", 0.1, 10, 10)]
    f = findings(rows)
    assert advice.mostly_patience(f) == [
        "Most trials stopped by their own patience: 3 of 4 ended before max_t because val_miou stopped improving for "
        "`patience` evaluations. Their scores say when they stalled more than which ranges are good: look at the "
        "learning curves, then raise patience (or lower lr) before reading the ranges."]
    assert advice.early_stopped(f) == []  # the alert says it
    half = findings([trial("a", "early_stopped", 0.5, 20, 30), trial("b", "early_stopped", 0.4, 20, 30),
                     trial("c", "completed", 0.3, 40, 40), trial("d", "completed", 0.2, 40, 40)])
    assert advice.mostly_patience(half) == []
    assert advice.early_stopped(half) == ["2 trial(s) stopped by their own patience before max_t."]


def test_too_few_trials_to_advise_on_ranges() -> None:
    rows = [trial("a", "completed", 0.6, 40, 40, x=0.95), trial("b", "completed", 0.5, 40, 40, x=0.7),
            trial("c", "diverged", None, None, 10, x=0.1)]
    dists = {"x": FloatDistribution(0.0, 1.0)}
    f = findings(rows, dists=dists, key_params=["x"], importance=Importance(note="only 2 trials"))
    assert advice.too_few_trials(f) == [
        "Too few trials to advise on ranges: 2 scored trial(s), and range advice needs at least 8. Run more trials "
        "(num_samples) before widening or narrowing any range."]
    assert advice.param_ranges(f) == []
    assert advice.no_importance(f) == ["No importances: only 2 trials."]  # "run more trials" is said once
    enough = findings(rows[:2] + padding(6, x=0.5), dists=dists, key_params=["x"])
    assert advice.too_few_trials(enough) == []
    assert advice.param_ranges(enough)[0].startswith("x: the best value 0.95 is at the upper end")


def test_the_alerts_come_before_any_other_advice() -> None:
    assert advice.RULES[:len(advice.ALERTS)] == advice.ALERTS
    rows = [with_ious(trial(f"t{i}", "early_stopped", 0.5 - i / 100, 20, 30, x=0.5), 0.9, 0.0, 0.4, 0.5)
            for i in range(4)]
    f = findings(rows, dists={"x": FloatDistribution(0.0, 1.0)}, key_params=["x"])
    lines = advice.next_steps(f.sweep, f.importance, f.dists, f.asha, f.key_params)
    assert [x.split(" ")[0] for x in lines[:4]] == ["1", "Most", "Too", "Best"]
    assert lines[:3] == advice.alerts(f.sweep, f.importance, f.dists, f.asha, f.key_params)
