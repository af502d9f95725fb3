"""The verdict's runs: the best self-training config and the best supervised one (from the trials, or from a tuned
control search run here when the space has no supervised trials), retrained with fresh seeds in waves until the
answer is clear (`sequential`), scored image by image (`verdict`, `intervals`), written to verdict.json.

The sweep file's confirm_seeds, confirm_max_seeds and confirm_score are read here, from `plan.sweep`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from selftune.fileio import write_atomic
from selftune.search.plan import ARMS, SweepPlan
from selftune.search.stage import iterations_done
from selftune.search.study import close_open_trials
from selftune.sweepfolder import CONFIRM_DIR, CONTROL_SEARCH_DIR, REMOTE_SCHEMES, SWEEP_FILE, VERDICT_FILE, read_trials


def outcomes_of(experiment_dir: str) -> dict[str, str]:
    """Each trial's ending as the sweep folder gives it (the one rule), for the study's trials left open."""
    return {t.trial_id: t.outcome for t in read_trials(experiment_dir)}


def run_verdict(plan: SweepPlan, ranked: list[dict[str, Any]], trials: list[Any], started_at: float | None = None
                ) -> dict[str, Any] | None:
    """The verdict (`selftune.search.verdict`): pick both arms' best configs by val, retrain them with fresh seeds
    as Ray tasks (resumed run by run after a crash), score every run image by image, write verdict.json."""
    import json

    from selftune.search import sequential
    from selftune.search.verdict import (
        arm_summary,
        build_verdict,
        confirm_runs,
        fresh_seeds,
        no_verdict,
        self_training_methods,
    )
    from selftune.trainable.config import TrainConfig

    s, exp = plan.sweep, plan.experiment_dir
    if exp.startswith(REMOTE_SCHEMES):
        print("selftune: no verdict: its confirmation runs need a local or shared (NFS) sweep folder", file=sys.stderr)
        return None
    st_methods = set(self_training_methods())
    st_entries = [e for e in ranked if e["config"]["method"] in st_methods]
    record: dict[str, Any] | None = None
    if not st_entries:
        record = no_verdict(f"no self-training trial finished an evaluation ({len(ranked)} trials)")
    best_st = st_entries[0] if st_entries else None
    sup_entry, tuned = None, s.control == "tuned"
    if best_st is not None and tuned:
        sup_entries = [e for e in ranked if e["config"]["method"] == "supervised"]
        if not sup_entries:
            method = best_st["config"]["method"]
            n = s.control_trials or sum(1 for e in st_entries if e["config"]["method"] == method)
            ids = {e["trial_id"] for e in st_entries if e["config"]["method"] == method}
            iters = None if s.control_trials else (_iterations([t for t in trials if t.trial_id in ids]) or None)
            sup_entries = run_control_search(plan, n, best_st["config"], iters, started_at)
        sup_entry = sup_entries[0] if sup_entries else None
        if sup_entry is None:
            record = no_verdict("the tuned control search finished no evaluation")
    if record is not None or best_st is None:
        record = record or no_verdict("nothing to compare")
        write_atomic(Path(exp) / VERDICT_FILE, json.dumps(record, indent=1))
        return record

    base = TrainConfig.from_dict(plan.base)
    sup_config = sup_entry["config"] if sup_entry is not None else base.as_supervised().to_dict()
    planned = list(plan.confirm_looks)
    alphas = sequential.nominal_alphas(planned)
    threads = max(1, int(s.cpus_per_trial))
    from selftune.data import split_exists

    split = "test" if split_exists(Path(plan.data_root), "test") else "val"
    print(f"selftune: confirming: {best_st['config']['method']} (trial {best_st['trial_id']}) and "
          f"{'tuned supervised (trial ' + sup_entry['trial_id'] + ')' if sup_entry else 'the untuned base config'}"
          f", fresh seeds per arm: {planned[0]}" + (f", up to {planned[-1]} while unclear" if len(planned) > 1 else ""),
          file=sys.stderr)
    runs: list[Any] = []
    results: list[dict[str, Any]] = []
    cms: list[Any] = []
    looks: list[dict[str, Any]] = []
    stopped = ""
    for k, n in enumerate(planned):
        wave = confirm_runs(best_st["config"], sup_config, fresh_seeds(base.seed, n)[len(runs) // len(ARMS):],
                            plan.stage_model, Path(exp) / CONFIRM_DIR, threads,
                            keep_last=0 if s.confirm_score == "best" else s.confirm_last)
        wave.sort(key=lambda r: r.arm != "self_training")  # the longer runs first: the wave's tail is a short run
        done = _confirm_wave(plan, wave, split, base)
        if done is None:
            record = no_verdict(f"confirmation run(s) without a best model (diverged before any evaluation?) among "
                                f"{', '.join(r.out_dir for r in wave)}")
            write_atomic(Path(exp) / VERDICT_FILE, json.dumps(record, indent=1))
            return record
        runs, results, cms = runs + wave, results + done[0], cms + done[1]
        look = look_at(runs, cms, split, plan, alphas[k], alphas[-1])
        looks.append(look["summary"])
        nxt = planned[k + 1] if k + 1 < len(planned) else None
        decision = sequential.decide(look["low"], look["high"], look["mean"], seeds=n, seeds_next=nxt,
                                     spread=look["spread"], image_half_width=look["image_half_width"],
                                     last_alpha=alphas[-1])
        if decision.stop:
            stopped = decision.reason
            break
        stopped = _no_room_for_wave(plan, started_at, runs, results, nxt - n)
        if stopped:
            break
    search_dir = Path(exp) / CONTROL_SEARCH_DIR
    control_trials = read_trials(str(search_dir)) if (search_dir / SWEEP_FILE).is_file() else []
    trial_iters, search_iters = _iterations(trials), _iterations(control_trials)
    confirm_iters = sum(int(res["iterations"]) for res in results)
    total = trial_iters + search_iters + plan.stage_iters + confirm_iters
    compute = {"trials": trial_iters, "control_search": search_iters, "stage": plan.stage_iters,
               "confirmation": confirm_iters, "confirmation_share": confirm_iters / max(1, total),
               "total": total, "budget_iters": s.budget_iters, "time_budget_s": s.time_budget_s,
               "seconds": None if started_at is None else round(time.monotonic() - started_at, 1)}
    best = ranked[0]
    record = build_verdict(
        st=arm_summary(best_st, "self-training", True),
        sup=arm_summary(sup_entry, "supervised" if tuned else "supervised (untuned base config)", tuned),
        runs=runs, results=results, cms=cms, split=split, class_names=plan.class_names, metric=s.metric,
        best_by_val={"trial_id": best["trial_id"], "method": best["config"]["method"], "metric": best["metric"],
                     "value": best["value"]},
        compute=compute, stage_model=plan.stage_model, seed=s.seed, alpha=alphas[len(looks) - 1], looks=looks,
        planned=planned, stopped=stopped, score=s.confirm_score)
    write_atomic(Path(exp) / VERDICT_FILE, json.dumps(record, indent=1))
    return record


def _confirm_wave(plan: SweepPlan, wave: list[Any], split: str, base: Any) -> tuple[list[Any], list[Any]] | None:
    """Train one wave of confirmation runs as Ray tasks (each resumed from its checkpoint after a crash), then score
    each image by image; None when a run left no model to score."""
    from selftune.search import adapter
    from selftune.search.verdict import score_run, train_run
    from selftune.trainable.config import TrainConfig

    s = plan.sweep
    iters = TrainConfig.from_dict(wave[0].config).max_iters
    results = adapter.run_tasks(
        [(train_run, (r.config, plan.data_root, r.out_dir)) for r in wave], cpus=s.cpus_per_trial,
        gpus=s.gpus_per_trial, desc=f"confirmation, {len(wave) // len(ARMS)} seed{'s' if len(wave) > len(ARMS) else ''}",
        progress=lambda: (sum(iterations_done(Path(r.out_dir)) for r in wave), iters * len(wave)))
    if any(not Path(res["best_model"]).is_file() for res in results):
        return None
    cms = adapter.run_tasks(
        [(score_run, (r.out_dir, s.confirm_score, plan.data_root, split, base.point_radius, base.point_ring))
         for r in wave], cpus=s.cpus_per_trial, gpus=s.gpus_per_trial)
    return list(results), list(cms)


def look_at(runs: list[Any], cms: list[Any], split: str, plan: SweepPlan, alpha: float, last_alpha: float
            ) -> dict[str, Any]:
    """The paired difference of the runs so far at a look's level `1 - alpha`; the images' half-width at the last
    look's level `1 - last_alpha` (what the futility rule projects)."""
    import numpy as np

    from selftune.search import intervals

    seeds = sorted({r.seed for r in runs})
    by = {(r.arm, r.seed): cm for r, cm in zip(runs, cms, strict=True)}
    a = np.stack([by[("self_training", x)] for x in seeds])
    b = np.stack([by[("supervised", x)] for x in seeds])
    _, stat = intervals.statistic_for(plan.sweep.metric, plan.class_names)
    d = intervals.paired_difference(a, b, stat, seed=plan.sweep.seed, confidence=1 - alpha)
    summary = {"seeds": len(seeds), "mean": d.mean, "low": d.low, "high": d.high, "confidence": 1 - alpha,
               "outcome": d.outcome}
    print(f"selftune: verdict look at {len(seeds)} seeds: {d.mean * 100:+.2f} points, "
          f"{(1 - alpha) * 100:.1f}% interval [{d.low * 100:+.2f}, {d.high * 100:+.2f}]", file=sys.stderr)
    return {"summary": summary, "mean": d.mean, "low": d.low, "high": d.high, "spread": d.spread,
            "image_half_width": d.image_half_width_at(1 - last_alpha)}


def _no_room_for_wave(plan: SweepPlan, started_at: float | None, runs: list[Any], results: list[dict[str, Any]],
                      seeds: int) -> str:
    """With time_budget_s: why `seeds` more seeds per arm do not fit ("" when they do). Each arm's run as long as its
    slowest so far, the wave's runs on max_concurrent slots, at least one run long (as `adapter.TimeBudget`
    reserves it)."""
    from selftune.search import sequential

    budget = plan.sweep.time_budget_s
    if budget is None or started_at is None or not results:
        return ""
    arm_s = {arm: max((float(res.get("seconds") or 0.0) for r, res in zip(runs, results, strict=True) if r.arm == arm),
                      default=0.0) for arm in ARMS}
    wave_s = sequential.wave_seconds(seeds, arm_s["self_training"], arm_s["supervised"], plan.sweep.max_concurrent)
    left = budget - (time.monotonic() - started_at)
    if wave_s <= left:
        return ""
    return (f"budget (time_budget_s has no room for the next wave: about {wave_s:.0f} s of runs, {max(0.0, left):.0f} s "
            "left; a larger time_budget_s lets it go on)")


def _iterations(trials: list[Any]) -> int:
    """Optimizer iterations the trials ran, in all (each trial's last evaluated iteration)."""
    return sum(max((int(r.get("iteration", 0)) for r in t.results), default=0) for t in trials)


def run_control_search(plan: SweepPlan, trials: int, st_config: dict[str, Any], iterations: int | None = None,
                       started: float | None = None) -> list[dict[str, Any]]:
    """The tuned control of a space without supervised trials: `trials` trials of the `supervised` space (the shared
    knobs) in <sweep>/control_search, its own Ray experiment and Optuna study, resumed after a crash; ranked. Its
    base is the best self-training trial's config made supervised, so what the space fixed for the self-training
    trials (binary mode, its loss) holds for the control too. Equal tuning in iterations: it stops once its trials
    ran `iterations` (what the best self-training method's trials ran) in all; and it keeps inside the sweep's
    time_budget_s with the confirmation's time kept free, like the trials."""
    import dataclasses

    from selftune.search import adapter
    from selftune.search.export import rank_trials
    from selftune.trainable.config import TrainConfig

    path = Path(plan.experiment_dir) / CONTROL_SEARCH_DIR
    print(f"selftune: tuned supervised control: {trials} trials of space 'supervised' -> {path}", file=sys.stderr)
    base = TrainConfig.from_dict(st_config).as_supervised(max_iters=plan.max_t).to_dict()
    control = dataclasses.replace(  # a sweep of its own inside this one's folder, with this one's settings
        plan, sweep=plan.sweep.replace(name=CONTROL_SEARCH_DIR, space="supervised", num_samples=trials), base=base,
        storage=plan.experiment_dir, experiment_dir=str(path), stage_model=None, stage_iters=0, methods=("supervised",))
    path.mkdir(parents=True, exist_ok=True)
    if not (path / SWEEP_FILE).is_file():
        write_atomic(path / SWEEP_FILE, yaml.safe_dump(control.meta(), sort_keys=False))
    main = adapter.tuner_spec(plan, started)
    reserve = main.confirm_runs * plan.max_t  # IterationBudget starts with the confirmation's reserve spent
    spec = dataclasses.replace(main, plan=control, enqueue=(),
                               budget_iters=None if iterations is None else iterations + reserve)
    tuner = (adapter.restore_tuner(str(path), spec, restart_errored=False) if adapter.can_restore(str(path))
             else adapter.build_tuner(spec))
    adapter.fit(tuner, plan.sweep.metric)
    close_open_trials(plan.optuna_storage, CONTROL_SEARCH_DIR, outcomes_of(str(path)))
    return rank_trials(str(path), plan.sweep.metric, "max")


__all__ = ["look_at", "outcomes_of", "run_control_search", "run_verdict"]
