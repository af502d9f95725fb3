"""The verdict: the interval from paired seeds and test images, its three words, the confirmation runs' configs,
the keys that control it, and a real tiny sweep in which supervised training is best, killed while it confirms."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from selftune.errors import ConfigError, SelftuneError
from selftune.search import intervals
from selftune.search.adapter import TimeBudget
from selftune.search.plan import fair_share, plan_sweep
from selftune.search.sweepfile import SweepConfig
from selftune.search.verdict import ConfirmRun, build_verdict, confirm_runs
from selftune.sweepfolder import read_verdict
from selftune.trainable.config import TrainConfig
from tests.helpers import kill_sweep_when, tiny_config

# ---------------------------------------------------------------------- made-up per-image scores


def runs_scoring(acc: list[float], images: int = 40, pixels: int = 100, k: int = 3, seed: int = 0) -> np.ndarray:
    """Per-image confusion matrices [seeds, images, K, K] of runs whose pixel accuracy is `acc[s]` on average,
    with image-to-image spread (some images are harder), errors spread over the other classes."""
    hard = np.random.default_rng(99).uniform(-0.1, 0.1, size=images)  # the same images are hard for every run
    rng = np.random.default_rng(seed)  # each run's own noise
    out = np.zeros((len(acc), images, k, k), dtype=np.int64)
    for s, a in enumerate(acc):
        for i in range(images):
            truth = i % k
            right = round(pixels * float(np.clip(a + hard[i] + rng.normal(0, 0.01), 0, 1)))
            out[s, i, truth, truth] = right
            out[s, i, truth, (truth + 1) % k] = pixels - right
    return out


def test_helps_hurts_and_no_clear_difference_from_made_up_scores() -> None:
    better, worse = runs_scoring([0.80, 0.82, 0.81]), runs_scoring([0.60, 0.61, 0.59])
    helps = intervals.paired_difference(better, worse)
    assert helps.outcome == "helps" and 0 < helps.low < helps.mean < helps.high
    assert intervals.paired_difference(worse, better).outcome == "hurts"
    # seeds that disagree: +4, -3, +1 points of accuracy: the interval spans 0
    a, b = runs_scoring([0.74, 0.67, 0.71], seed=1), runs_scoring([0.70, 0.70, 0.70], seed=2)
    unclear = intervals.paired_difference(a, b)
    assert unclear.outcome == "no clear difference" and unclear.low < 0 < unclear.high
    assert unclear.seed_half_width > 0 and len(unclear.per_seed) == 3


def test_one_seed_or_too_few_images_never_decide_and_widen_the_interval() -> None:
    # one seed sees no training noise: the interval is the whole scale, never the images' alone
    d = intervals.paired_difference(runs_scoring([0.8]), runs_scoring([0.6]))
    assert d.seeds == 1 and d.seed_half_width == float("inf") and (d.low, d.high) == (-1.0, 1.0)
    assert d.outcome == "no clear difference" and d.to_dict()["seed_half_width"] is None
    # one test image (and one seed): it was "95% CI [+0.00, +0.00]" and a 2-pixel difference read "helps"
    one = intervals.paired_difference(runs_scoring([0.72], images=1), runs_scoring([0.70], images=1))
    assert one.outcome == "no clear difference" and one.high - one.low == 2.0
    # many seeds, too few images: the test set's own variance is unseen, so no decision either
    few = intervals.paired_difference(runs_scoring([0.8, 0.82, 0.81], images=3), runs_scoring([0.6, 0.61, 0.59],
                                                                                                images=3))
    assert few.images < intervals.MIN_IMAGES and few.outcome == "no clear difference"


def test_a_stricter_level_widens_the_interval() -> None:
    a, b = runs_scoring([0.74, 0.70, 0.73], seed=1), runs_scoring([0.70, 0.69, 0.70], seed=2)
    wide = intervals.paired_difference(a, b, confidence=0.99)
    narrow = intervals.paired_difference(a, b, confidence=0.95)
    assert wide.mean == narrow.mean and wide.low < narrow.low and wide.high > narrow.high


def test_the_statistic_follows_the_sweep_metric() -> None:
    cm = np.array([[8, 2], [1, 9]])
    assert intervals.statistic_for("val_miou", ["bg", "fg"])[0] == "mIoU"
    name, f1 = intervals.statistic_for("val_f1", ["bg", "fg"])
    assert name == "f1" and f1(cm) == pytest.approx(18 / 21)
    name, iou = intervals.statistic_for("val_iou/fg", ["bg", "fg"])
    assert name == "IoU of fg" and iou(cm) == pytest.approx(9 / 12)
    assert intervals.statistic_for("val_auc", ["bg", "fg"])[0] == "mIoU"  # no AUC from a confusion matrix


def _verdict(st_acc: list[float], sup_acc: list[float], **kw: object) -> dict:
    seeds = list(range(1000, 1000 + len(st_acc)))
    cfg = TrainConfig.from_dict(tiny_config(method="ema_self_training", st_start_iter=10)).to_dict()
    runs, results, cms = [], [], []
    a, b = runs_scoring(st_acc, seed=1), runs_scoring(sup_acc, seed=2)
    for i, s in enumerate(seeds):
        for arm, arr in (("self_training", a), ("supervised", b)):
            runs.append(ConfirmRun(arm, s, cfg, f"/x/{arm}_seed{s}"))
            results.append({"status": "completed", "best_val_miou": 0.5, "best_iteration": 30, "iterations": 40})
            cms.append(arr[i])
    st = {"label": "self-training", "tuned": True, "trial_id": "st1", "method": "ema_self_training"}
    sup = {"label": "supervised", "tuned": True, "trial_id": "sup1", "method": "supervised"}
    args = dict(st=st, sup=sup, runs=runs, results=results, cms=cms, split="test", class_names=["a", "b", "c"],
                metric="val_miou", best_by_val={"trial_id": "sup1", "method": "supervised", "metric": "val_miou",
                                                "value": 0.6}, compute={"trials": 100, "confirmation": 240},
                stage_model=None)
    return build_verdict(**{**args, **kw})


def test_the_headline_says_the_three_words_with_the_interval() -> None:
    helps, hurts = _verdict([0.80, 0.82, 0.81], [0.60, 0.61, 0.59]), _verdict([0.60, 0.61, 0.59], [0.8, 0.82, 0.81])
    unclear = _verdict([0.74, 0.67, 0.71], [0.70, 0.70, 0.70])
    assert helps["headline"].startswith("VERDICT: self-training HELPS: ema_self_training (trial st1) vs tuned "
                                        "supervised (trial sup1), test mIoU +")
    assert hurts["headline"].startswith("VERDICT: self-training HURTS")
    assert unclear["headline"].startswith("VERDICT: NO CLEAR DIFFERENCE between self-training and supervised")
    for v in (helps, hurts, unclear):
        d = v["difference"]
        assert f"95% CI [{d['low'] * 100:+.2f}, {d['high'] * 100:+.2f}]" in v["headline"]
        assert "3 fresh seeds per arm, 40 iterations each from scratch" in v["headline"]
        assert v["lines"][0] == v["headline"] and any("best trial by val is supervised" in f for f in v["flags"])
    # per class: a word only where Holm's adjusted interval excludes 0 (never the class's own 95% alone)
    for v in (helps, hurts, unclear):
        for d in v["per_class"].values():
            if d["word"]:
                assert (d["word"] == "helped") == (d["holm"]["low"] > 0) and d["holm"]["confidence"] >= 0.95
                assert (d["word"] == "hurt") == (d["holm"]["high"] < 0)
    assert any("helped none; hurt none" not in line for line in helps["lines"] if "per class" in line)


def test_flags_one_seed_an_untuned_control_and_a_best_checkpoint_before_self_training() -> None:
    v = _verdict([0.8], [0.6], sup={"label": "x", "tuned": False, "trial_id": None, "method": "supervised"})
    flags = " | ".join(v["flags"])
    assert "one seed per arm" in flags and "UNTUNED" in flags and "UNTUNED supervised (base config)" in v["headline"]
    assert v["outcome"] == "no clear difference" and "at least 3 seeds per arm" in flags  # what it would need
    early = _verdict([0.8, 0.8], [0.6, 0.6], results=[
        {"status": "completed", "best_val_miou": 0.5, "best_iteration": it, "iterations": 40}
        for it in (10, 40, 40, 40)])
    assert any("predates self-training (iteration <= 10) on seed 1000" in f for f in early["flags"])


# ---------------------------------------------------------------------- the confirmation's configs


def test_both_arms_start_alike_and_run_alike(tmp_path: Path) -> None:
    stage = str(tmp_path / "shared_stage" / "best_model_ema.pt")
    rounds = TrainConfig.from_dict(tiny_config(method="rounds", teacher_checkpoint=stage, max_iters=30,
                                               patience=3)).to_dict()
    sup = TrainConfig.from_dict(tiny_config(method="supervised", lr=2e-3, dice_weight=0.5, max_iters=30)).to_dict()
    runs = confirm_runs(rounds, sup, [1000, 1001], stage, tmp_path / "confirm", threads=1)
    assert [(r.arm, r.seed) for r in runs] == [("self_training", 1000), ("supervised", 1000),
                                               ("self_training", 1001), ("supervised", 1001)]
    st, su = TrainConfig.from_dict(runs[0].config), TrainConfig.from_dict(runs[1].config)
    assert st.method == "rounds" and st.teacher_checkpoint == stage and st.patience == 0 and st.seed == 1000
    assert su.method == "supervised" and su.init_checkpoint == stage and su.max_iters == st.max_iters == 30
    assert su.lr == 2e-3 and su.dice_weight == 0.5 and su.patience == 0  # its own tuned knobs
    mt = TrainConfig.from_dict(tiny_config(method="ema_self_training", max_iters=30)).to_dict()
    [_, b] = confirm_runs(mt, sup, [7], stage, tmp_path / "confirm", threads=1)
    assert TrainConfig.from_dict(b.config).init_checkpoint is None  # the mean teacher started from scratch


def test_every_method_gets_a_fair_share_of_the_first_trials() -> None:
    methods = ("supervised", "ema_self_training", "rounds", "s4gan")
    assert [p["method"] for p in fair_share(methods, 4)] == list(methods)
    assert [p["method"] for p in fair_share(methods, 6)] == list(methods) * 2  # whole cycles over the start-up
    assert fair_share(("rounds",), 4) == ()


def _report(budget: TimeBudget, trial: str, method: str, pace: float, value: float | None = None, **extra: Any) -> None:
    """One trial report of `pace` seconds per iteration (step 0.5 s and an evaluation every 10 iterations)."""
    budget(trial, {"step_seconds": 0.5, "eval_seconds": (pace - 0.5) * 10, "val_miou": value,
                   "config": {"method": method}, **extra})


def test_the_time_budget_keeps_the_confirmation_s_time_free() -> None:
    now = time.monotonic()
    b = TimeBudget(1000.0, now, looks=(2, 3), concurrent=2, max_t=40, eval_every=10)
    assert b.reserve_s() == 0 and not b.closed() and not b.stop_all()  # nothing measured yet: nothing reserved
    _report(b, "t1", "supervised", 1.0, 0.30)  # a supervised run: 40 s
    # no self-training method measured: its arm at the slowest pace (40 s); look 1: 2 seeds x 2 arms on 2 slots,
    # look 2: one seed per arm, as long as one run
    assert b.reserve_s() == pytest.approx(80 + 40)
    for _ in range(3):  # a method's pace is the median of its reports, however many
        _report(b, "t1", "supervised", 1.0, 0.30)
    _report(b, "t2", "rounds", 2.0, 0.50)  # 80 s, the best self-training method
    _report(b, "t3", "ema_self_training", 3.0, 0.40)  # 120 s, slower but worse by val: not the one confirmed
    assert b.reserve_s() == pytest.approx(max(2 * 120 / 2, 80) + max(120 / 2, 80))  # 200 s
    assert b.reserve_s(looks=1) == pytest.approx(120) and not b.closed()  # 1,000 s left: trials go on starting
    b.deadline = time.monotonic() + 150  # 150 s left: the first look fits, both do not: no new trial, none cut
    assert b.closed() and not b.stop_all()
    _report(b, "t3", "ema_self_training", 3.0, 0.60)  # now the best: the confirmation runs at its pace
    assert b.reserve_s() == pytest.approx(max(2 * 160 / 2, 120) + max(160 / 2, 120))  # 280 s
    assert b.reserve_s(looks=1) == pytest.approx(160) and b.stop_all()  # 150 s left: the running trials are cut
    # a sweep over methods waits until a trial of each method has reached the grace period (a busy machine's
    # stage left the demo 36 s of trials and no evaluated self-training trial: a verdict of none)
    w = TimeBudget(1.0, now - 10, looks=(2,), concurrent=2, max_t=40, eval_every=10, methods=("supervised", "rounds"),
                   grace=20)
    _report(w, "t1", "supervised", 1.0, iteration=20)
    assert not w.stop_all() and not w.closed()  # past its deadline, but no rounds trial has reached iteration 20
    _report(w, "t2", "rounds", 1.0, iteration=10)
    assert not w.stop_all()
    _report(w, "t2", "rounds", 1.0, iteration=20)
    assert w.stop_all() and w.closed()


def test_the_time_budget_pickles_the_time_it_has_left() -> None:
    """Ray keeps the stopper in tuner.pkl and restores it on resume, in another process: the time left travels,
    the monotonic deadline does not."""
    import pickle

    b = TimeBudget(100.0, time.monotonic() - 30, looks=(2,), concurrent=2, max_t=40, eval_every=10)
    _report(b, "t1", "supervised", 1.0, 0.3)
    state = pickle.dumps(b)
    time.sleep(0.2)
    c = pickle.loads(state)
    assert c.deadline - time.monotonic() == pytest.approx(70, abs=0.5)  # 70 s left when pickled, 70 s left now
    assert c.per_iter == b.per_iter and c.best == b.best and "left" not in c.__dict__


def test_a_closed_search_suggests_no_new_trial_and_does_not_save_its_clock(capsys: pytest.CaptureFixture[str]) -> None:
    from ray.tune.search import Searcher

    from selftune.search.adapter import ClosingLimiter

    class Counting(Searcher):
        def suggest(self, trial_id: str) -> dict:
            return {"lr": 0.1}

    shut = {"now": False}
    limiter = ClosingLimiter(Counting(metric="val_miou", mode="max"), max_concurrent=2)
    limiter.closed = lambda: shut["now"]
    assert limiter.suggest("a") == {"lr": 0.1}
    shut["now"] = True
    state = limiter.get_state()
    assert "closed" not in state and state["started_trials"] == 1
    limiter.set_state(state)  # a restored searcher keeps this run's clock
    assert limiter.suggest("b") == Searcher.FINISHED
    assert "no new trials after 1" in capsys.readouterr().err


# ---------------------------------------------------------------------- bad input, before any trial


@pytest.mark.parametrize(("key", "value", "message"), [
    ("confirm_seeds", -1, "confirm_seeds must be an integer >= 1, got -1"),
    ("confirm_seeds", "three", "confirm_seeds must be a whole number, got 'three'"),
    ("confirm_seeds", 2.5, "confirm_seeds must be a whole number, got 2.5"),
    ("confirm_seeds", True, "confirm_seeds must be a whole number, got True"),
    ("confirm_max_seeds", 0, "confirm_max_seeds must be an integer >= 1, got 0"),
    ("confirm_max_seeds", 2.5, "confirm_max_seeds must be a whole number, got 2.5"),
    ("confirm_max_seeds", 2, "confirm_max_seeds 2 is below confirm_seeds 3"),
    ("confirm_score", "median", "confirm_score must be one of"),
    ("control", "maybe", "control must be one of tuned, base, none (or true / false), got 'maybe'"),
    ("control_trials", 0, "control_trials must be an integer >= 1, got 0"),
])
def test_bad_verdict_keys_fail_by_name(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SweepConfig.from_dict({key: value})


def test_control_true_and_false_still_read() -> None:
    assert SweepConfig.from_dict({"confirm_seeds": "3"}).confirm_seeds == 3  # YAML's '3' reads right
    assert SweepConfig.from_dict({"control": True}).control == "tuned"
    assert SweepConfig.from_dict({"control": False}).control == "none"


def test_a_control_the_space_cannot_serve_fails_before_any_trial(tiny_data: Path, tmp_path: Path) -> None:
    base = tiny_config()
    with pytest.raises(SelftuneError, match="control 'tuned': space 'supervised' has no self-training method"):
        plan_sweep(SweepConfig(data=str(tiny_data), base=base, space="supervised", storage=str(tmp_path)))
    with pytest.raises(SelftuneError, match="control_trials 4: only a tuned control search uses it, and space "
                                            "'methods' has supervised trials"):
        plan_sweep(SweepConfig(data=str(tiny_data), base=base, space="methods", control_trials=4,
                               storage=str(tmp_path)))
    with pytest.raises(SelftuneError, match=r"budget_iters 200 leaves nothing for the trials: the shared stage \(0\) "
                                            r"and the verdict's confirmation runs \(2 arms x confirm_max_seeds 5 x max_t "
                                            r"40\) take 400"):
        plan_sweep(SweepConfig(data=str(tiny_data), base=base, space="methods", num_samples=-1, budget_iters=200,
                               storage=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------------- a real tiny sweep, killed while it confirms

SPACE = '''
def crippled_self_training(trial, ctx):
    """Supervised at a working LR against a mean teacher that cannot learn (LR 1e-7): supervised is best."""
    method = trial.suggest_categorical("method", ["supervised", "ema_self_training"])
    trial.suggest_float("lr", 2e-3, 3e-3) if method == "supervised" else trial.suggest_float("lr", 1e-7, 2e-7)
    return {}
'''


@pytest.mark.slow  # a real sweep killed and resumed: 1-2 minutes on 2 CPUs
def test_supervised_best_a_kill_while_confirming_and_the_answer_is_not_helps(tiny_data: Path, tmp_path: Path
                                                                            ) -> None:
    (tmp_path / "verdict_test_spaces.py").write_text(SPACE)
    storage = tmp_path / "results"
    base = tiny_config(max_iters=20, eval_every=5, st_start_iter=5, st_rampup_iters=5, log_images=False)
    script = textwrap.dedent(f"""
        from selftune.search import SweepConfig, run_sweep
        run_sweep(SweepConfig(name="confirm", data={str(tiny_data)!r}, base={base!r},
                              space="verdict_test_spaces:crippled_self_training", num_samples=2, max_concurrent=1,
                              scheduler="fifo", storage={str(storage)!r}, num_cpus=2, verbose=0, confirm_seeds=2,
                              confirm_max_seeds=2))
    """)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    exp = storage / "confirm"
    kill_sweep_when(script, lambda: any((exp / "confirm").glob("*/metrics.jsonl")), cwd=tmp_path, env=env,
                    what="its confirmation", timeout_s=300)  # once a confirmation run has evaluated
    assert read_verdict(str(exp)) is None
    cut = {p.parent.name: len(p.read_text().splitlines()) for p in (exp / "confirm").glob("*/metrics.jsonl")}

    import ray

    from selftune.search import resume_sweep

    sys.path.insert(0, str(tmp_path))
    try:
        summary = resume_sweep(str(exp), num_cpus=2)
    finally:
        ray.shutdown()
        sys.path.remove(str(tmp_path))
    v = read_verdict(str(exp))
    assert v is not None and summary.verdict == v and v["format"] == 2
    for name, n in cut.items():  # resumed from its checkpoint: no evaluation twice, none lost
        its = [json.loads(line)["iteration"] for line in (exp / "confirm" / name / "metrics.jsonl").read_text()
               .splitlines()]
        assert its == [5, 10, 15, 20], (name, n, its)
    assert v["best_trial_by_val"]["method"] == "supervised"
    assert any("best trial by val is supervised" in f for f in v["flags"])
    assert v["outcome"] != "helps"  # a mean teacher at LR 1e-7 against supervised at 3e-3
    assert (v["outcome"] == "hurts") == (v["difference"]["high"] < 0)


def test_a_methods_sweep_with_fewer_trials_than_methods_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    from selftune.trainable.methods import method_names

    base, names = tiny_config(), method_names()
    with pytest.raises(SelftuneError, match=rf"num_samples 2 is fewer than the {len(names)} methods of space "
                                            rf"'methods' \({', '.join(names)}\): {', '.join(names[2:])} would "
                                            r"never run"):
        plan_sweep(SweepConfig(data=str(tiny_data), base=base, space="methods", num_samples=2, storage=str(tmp_path)))
    with pytest.warns(UserWarning, match="fewer than the fair share"):
        plan_sweep(SweepConfig(data=str(tiny_data), base=base, space="methods", num_samples=len(names) + 1,
                               trials_per_method=2, storage=str(tmp_path)))
    assert [p["method"] for p in fair_share(("a", "b"), 1, per_method=2)] == ["a", "b", "a", "b"]


def test_budget_iters_holds_the_control_search_too(tiny_data: Path, tmp_path: Path) -> None:
    """A space without supervised trials: the trials get half of what the confirmation leaves, the control search
    (as many iterations as the best self-training method's trials) the other half."""
    from selftune.search.adapter import tuner_spec

    plan = plan_sweep(SweepConfig(data=str(tiny_data), base=tiny_config(), space="thresholds", num_samples=-1,
                                  budget_iters=1000, storage=str(tmp_path)))
    reserve = 2 * 5 * 40  # 2 arms x confirm_max_seeds (5 by default) x max_t
    assert tuner_spec(plan).budget_iters == 1000 - (1000 - reserve) // 2
    with_sup = plan_sweep(SweepConfig(data=str(tiny_data), base=tiny_config(), space="methods", num_samples=-1,
                                      budget_iters=1000, storage=str(tmp_path)))
    assert tuner_spec(with_sup).budget_iters == 1000  # its own supervised trials are the control


def test_a_budget_that_did_not_hold_is_said_with_by_how_much() -> None:
    from selftune.search.verdict import budget_lines

    assert budget_lines({"total": 900, "budget_iters": 1000, "seconds": 100.0, "time_budget_s": 120.0}) == []
    over = budget_lines({"total": 1100, "budget_iters": 1000, "seconds": 54.0, "time_budget_s": 20.0})
    assert "1100 iterations in all against budget_iters 1000 (100 over" in over[0]
    assert "54 s against time_budget_s 20 (34 s over" in over[1]


def test_a_run_keeps_its_last_evaluations_and_each_score_reads_them(tiny_data: Path, tmp_path: Path) -> None:
    from selftune.search.verdict import SCORES, score_run
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.loop import train

    cfg = TrainConfig.from_dict(tiny_config(method="supervised", max_iters=12, eval_every=3, keep_last=2,
                                            log_images=False))
    train(cfg, tiny_data, tmp_path / "run", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / "last").glob("ema_*.pt"))
    assert kept == ["ema_00000009.pt", "ema_00000012.pt"]
    scores = {s: score_run(str(tmp_path / "run"), s, str(tiny_data), "test", 3.0, 0.0) for s in SCORES}
    images = scores["best"].shape[0]
    assert scores["last_mean"].sum() == 2 * scores["best"].sum() and scores["average"].shape[0] == images
    avg = ckpt.load(tmp_path / "run" / "last" / "average.pt")
    a, b = (ckpt.load(tmp_path / "run" / "last" / k)["model"] for k in kept)
    key = next(k for k, v in avg["model"].items() if v.is_floating_point() and not (a[k] == b[k]).all())
    assert ((a[key] + b[key]) / 2 - avg["model"][key]).abs().max() < 1e-6  # the mean of the two


def test_a_metric_whose_class_is_absent_from_test_is_refused_before_any_trial(tiny_data: Path, tmp_path: Path
                                                                              ) -> None:
    """metric val_iou/road with no road pixels in test/ printed "+nan points, 95% CI [-100.00, +100.00]" after all
    the work; now it is refused by name before anything runs."""
    import shutil

    from PIL import Image

    from selftune.data import read_classes
    from selftune.data.format import read_mask

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    classes = read_classes(data)
    road = classes.names.index("road")
    for f in sorted((data / "test" / "masks").iterdir()):  # road -> background, in the dataset's own format
        mask = read_mask(f, classes)
        mask[mask == road] = 0
        rgb = np.zeros((*mask.shape, 3), dtype=np.uint8)
        for c, color in enumerate(classes.colors):
            rgb[mask == c] = color
        Image.fromarray(rgb).save(f)
    with pytest.raises(SelftuneError, match=r"metric 'val_iou/road' needs class 'road', which has no pixels in test "
                                            r"\(where the verdict scores\)"):
        plan_sweep(SweepConfig(data=str(data), base=tiny_config(), space="methods", metric="val_iou/road",
                               storage=str(tmp_path / "results")))
    plan_sweep(SweepConfig(data=str(data), base=tiny_config(), space="methods", metric="val_iou/road",
                           control="none", storage=str(tmp_path / "results")))  # no verdict: val is enough


def test_control_trials_without_a_control_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SelftuneError, match=r"control_trials 3: only a tuned control search uses it, and control "
                                            r"is 'none'"):
        plan_sweep(SweepConfig(data=str(tiny_data), base=tiny_config(), space="thresholds", control="none",
                               control_trials=3, storage=str(tmp_path)))


def test_a_next_wave_without_room_in_the_time_budget_is_said_with_its_seconds() -> None:
    from types import SimpleNamespace

    from selftune.search.confirm import _no_room_for_wave

    plan = SimpleNamespace(sweep=SimpleNamespace(time_budget_s=300.0, max_concurrent=2))
    runs = [SimpleNamespace(arm=a) for a in ("self_training", "supervised", "self_training", "supervised")]
    results = [{"seconds": s} for s in (80.0, 30.0, 90.0, 28.0)]  # each arm at its slowest: 90 s and 30 s
    now = time.monotonic()
    # 2 more seeds per arm on 2 slots: 2 x 120 / 2 = 120 s; 200 s left
    assert _no_room_for_wave(plan, now - 100, runs, results, seeds=2) == ""
    said = _no_room_for_wave(plan, now - 250, runs, results, seeds=2)  # 50 s left
    assert said.startswith("budget (time_budget_s has no room for the next wave: about 120 s of runs, 50 s left")
    assert _no_room_for_wave(plan, now - 250, runs, results, seeds=1) != ""  # one seed: one 90 s run is longer
    assert _no_room_for_wave(SimpleNamespace(sweep=SimpleNamespace(time_budget_s=None, max_concurrent=2)), now - 1e6,
                             runs, results, seeds=2) == ""  # no time budget: always room
