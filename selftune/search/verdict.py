"""The verdict: does self-training help, hurt, or make no clear difference, against supervised training tuned as hard?

After the search the sweep takes two configs, each the best of its arm by the sweep's metric on val:
- self-training: the best trial of a self-training method;
- supervised: the best supervised trial (of the space, or of the tuned control search when the space has no
  supervised method; `control: base` takes the base config untuned instead, and says so).
It retrains both with `confirm_seeds` fresh seeds (seeds no trial used): the same start (the shared stage when
the self-training trial used it), the same iterations (the self-training trial's run length), patience off,
each run's best val evaluation kept. Retraining removes the best-of-N bias of the trials' own scores. Every
run's model is then scored once on test (val when the dataset has none, and labelled so), image by image,
against the dataset's own masks, and `selftune.search.intervals` turns the paired runs into a mean difference
with a 95% interval: "helps" / "hurts" only when the interval excludes 0.

No Ray here: `selftune.search.confirm` hands these functions to `adapter.run_task(s)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selftune.search import intervals, sequential
from selftune.status import DIVERGED
from selftune.trainable.config import TrainConfig

CONTROL_MODES = ("tuned", "base", "none")  # sweep key control
FRESH_SEED_OFFSET = 1000  # confirmation seed i is base seed + 1000 + i: no trial trains with it
SCORES = {  # sweep key confirm_score: which weights of a confirmation run are scored on test
    "best": "each run's EMA model at its best val evaluation",
    "last_mean": "the mean of each run's EMA models at its last confirm_last evaluations (pixels pooled)",
    "average": "each run's EMA weights averaged over its last confirm_last evaluations",
}


def self_training_methods() -> tuple[str, ...]:
    """The methods that self-train, from the method registry."""
    from selftune.trainable.methods import self_training_methods as registered

    return tuple(registered())


def fresh_seeds(base_seed: int, n: int, offset: int = FRESH_SEED_OFFSET) -> list[int]:
    """`n` seeds no trial trained with (trials keep the base config's seed)."""
    return [base_seed + offset + i for i in range(n)]


def self_training_starts(cfg: TrainConfig) -> int:
    """The first iteration at which `cfg`'s pseudo-labels can change the model (its method says)."""
    from selftune.trainable.methods import get_method

    return int(get_method(cfg.method).self_training_starts(cfg))


@dataclass(frozen=True)
class ConfirmRun:
    """One confirmation run: arm (self_training | supervised), seed, its config and folder."""

    arm: str
    seed: int
    config: dict[str, Any]
    out_dir: str


def confirm_runs(st_config: dict[str, Any], sup_config: dict[str, Any], seeds: list[int], stage_model: str | None,
                 folder: Path, threads: int, keep_last: int = 0) -> list[ConfirmRun]:
    """Both arms on every seed: the self-training config as its trial ran; the supervised one with its own knobs
    from the same start (the shared stage when the self-training trial started from it) for the same iterations.
    Patience off, the runs' threads set to their allocation, no images or test scores logged, the EMA models of
    the last `keep_last` evaluations kept (for `confirm_score` last_mean and average)."""
    st = TrainConfig.from_dict(st_config)
    from_stage = stage_model is not None and stage_model in (st.teacher_checkpoint, st.init_checkpoint)
    start = stage_model if from_stage else st.init_checkpoint
    common = {"patience": 0, "log_images": False, "report_test": False, "num_threads": threads, "keep_last": keep_last}
    runs = []
    for seed in seeds:
        a = st.replace(seed=seed, **common)
        b = TrainConfig.from_dict(sup_config).as_supervised(seed=seed, max_iters=st.max_iters, init_checkpoint=start,
                                                             **common)
        runs.append(ConfirmRun("self_training", seed, a.to_dict(), str(folder / f"self_training_seed{seed}")))
        runs.append(ConfirmRun("supervised", seed, b.to_dict(), str(folder / f"supervised_seed{seed}")))
    return runs


def train_run(config: dict[str, Any], data_root: str, out_dir: str, progress: bool = False) -> dict[str, Any]:
    """Train `config` into `out_dir`, resuming it if a checkpoint is there (a sweep resumed after a crash; state.pt,
    or state.prev.pt when the kill came between the two)."""
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.loop import train

    out = Path(out_dir)
    state = out / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE
    started = state.is_file() or (out / ckpt.PREVIOUS_FILE).is_file()  # state.pt, or its predecessor after a kill
    t0 = time.monotonic()
    result = train(TrainConfig.from_dict(config), Path(data_root), out, progress=progress,
                   resume_from=state.parent if started else None)
    return {"status": result.status, "best_val_miou": result.best_val_miou, "best_iteration": result.best_iteration,
            "iterations": result.iterations, "best_model": str(out / ckpt.BEST_FILE), "message": result.message,
            "seconds": time.monotonic() - t0}


def score_images(model_file: str, data_root: str, split: str, point_radius: float, point_ring: float) -> np.ndarray:
    """int64 [images, K, K]: `model_file` scored image by image on `split`, against the dataset's masks (point
    labels drawn with the sweep base's radius and ring, whatever the run trained with)."""
    from selftune.data.points import PointTargets
    from selftune.trainable.evaluation import confusions_per_image

    _, cms = confusions_per_image(model_file, data_root, split, points=PointTargets(point_radius, point_ring))
    return cms.numpy()


def score_run(out_dir: str, score: str, data_root: str, split: str, point_radius: float, point_ring: float
              ) -> np.ndarray:
    """int64 [images, K, K]: a confirmation run scored image by image as `score` says (`SCORES`): its best model;
    the sum of its last evaluations' models' matrices (their mean, pixels pooled); or their averaged weights."""
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.loop import LAST_DIR

    out = Path(out_dir)
    if score == "best":
        return score_images(str(out / ckpt.BEST_FILE), data_root, split, point_radius, point_ring)
    last = sorted((out / LAST_DIR).glob("ema_*.pt"))
    if not last:
        raise FileNotFoundError(f"{out / LAST_DIR} holds no ema_*.pt: the run kept none of its last models")
    if score == "last_mean":
        return sum(score_images(str(f), data_root, split, point_radius, point_ring) for f in last)
    averaged = out / LAST_DIR / "average.pt"
    average_models(last, averaged)
    return score_images(str(averaged), data_root, split, point_radius, point_ring)


def average_models(files: list[Path], out: Path) -> None:
    """Average the weights of model files of one run (float tensors; counters take the last file's), written to
    `out` in the same format (a model file `evaluate` reads)."""
    from selftune.trainable import checkpoint as ckpt

    loaded = [ckpt.load(f) for f in files]
    last = loaded[-1]
    model = {}
    for key, value in last["model"].items():
        if value.is_floating_point():
            model[key] = sum(d["model"][key].double() for d in loaded).div(len(loaded)).to(value.dtype)
        else:
            model[key] = value
    ckpt.save_atomic({**last, "model": model, "averaged": [str(f.name) for f in files]}, out)


def arm_summary(entry: dict[str, Any] | None, label: str, tuned: bool) -> dict[str, Any]:
    """Where an arm's config came from: its trial (id, method, val score) or the base config."""
    if entry is None:
        return {"label": label, "tuned": tuned, "trial_id": None, "method": "supervised"}
    return {"label": label, "tuned": tuned, "trial_id": entry["trial_id"], "method": entry["config"]["method"],
            "metric": entry["metric"], "value": entry["value"], "iteration": entry["iteration"],
            "trial_path": entry.get("trial_path"), "params": entry.get("params", {})}


def build_verdict(*, st: dict[str, Any], sup: dict[str, Any], runs: list[ConfirmRun], results: list[dict[str, Any]],
                  cms: list[np.ndarray], split: str, class_names: list[str], metric: str,
                  best_by_val: dict[str, Any] | None, compute: dict[str, int], stage_model: str | None,
                  seed: int = 0, alpha: float = sequential.ALPHA, looks: list[dict[str, Any]] | None = None,
                  planned: list[int] | None = None, stopped: str = "", score: str = "best") -> dict[str, Any]:
    """verdict.json: the arms, every confirmation run, the difference with its interval (at the last look's level
    `1 - alpha`: 95% for one look), per class (Holm), the sequential looks, the flags."""
    st_cfg = TrainConfig.from_dict(next(r.config for r in runs if r.arm == "self_training"))
    seeds = sorted({r.seed for r in runs})
    by = {(r.arm, r.seed): (r, res, cm) for r, res, cm in zip(runs, results, cms, strict=True)}
    a = np.stack([by[("self_training", s)][2] for s in seeds])
    b = np.stack([by[("supervised", s)][2] for s in seeds])
    stat_name, stat = intervals.statistic_for(metric, class_names)
    diff = intervals.paired_difference(a, b, stat, seed=seed, confidence=1 - alpha)
    per_class = intervals.holm_calls(a, b, class_names, alpha=alpha, seed=seed)
    absent = [n for n in class_names if n not in per_class]
    run_rows = []
    for s in seeds:
        for arm, arr in (("self_training", a), ("supervised", b)):
            r, res, _ = by[(arm, s)]
            i = seeds.index(s)
            run_rows.append({"arm": arm, "seed": s, "out_dir": r.out_dir, **{k: res.get(k) for k in (
                "status", "best_val_miou", "best_iteration", "iterations", "message")},
                split: float(stat(arr[i].sum(0)))})
    st_start = self_training_starts(st_cfg)
    flags = []
    early = [r["seed"] for r in run_rows if r["arm"] == "self_training" and (r["best_iteration"] or 0) <= st_start]
    if early and score == "best":
        flags.append(f"the self-training arm's best checkpoint predates self-training (iteration <= {st_start}) on "
                     f"seed {', '.join(map(str, early))}: that run's score is its supervised part")
    diverged = sorted({r["arm"] for r in run_rows if r["status"] == DIVERGED})
    if diverged:
        flags.append(f"diverged: the {' and '.join(a.replace('_', '-') for a in diverged)} arm on some seed")
    if len(seeds) == 1:
        flags.append("one seed per arm sees no training noise, the largest source of variance: the verdict cannot "
                     "say helps or hurts; it needs at least 3 seeds per arm (confirm_seeds: 3)")
    if diff.images < intervals.MIN_IMAGES:
        flags.append(f"the {split} split has {diff.images} image{'s' if diff.images != 1 else ''}: too few to estimate "
                     f"the test set's own variance (at least {intervals.MIN_IMAGES}); the verdict cannot decide")
    if not sup.get("tuned", True):
        flags.append("the supervised arm is the UNTUNED base config (control: base): the difference includes tuning")
    if best_by_val is not None and best_by_val.get("method") == "supervised":
        flags.append(f"the sweep's best trial by val is supervised ({best_by_val['trial_id']}, "
                     f"{best_by_val['metric']} {best_by_val['value']:.4f})")
    if absent:
        flags.append(f"no {split} pixels of class{'es' if len(absent) > 1 else ''} {', '.join(absent)}: "
                     f"{'they are' if len(absent) > 1 else 'it is'} not in the per-class list")
    record: dict[str, Any] = {
        "format": 2, "outcome": diff.outcome, "split": split, "statistic": stat_name, "metric": metric,
        "split_note": ("test: scored once, after every choice" if split == "test" else
                       "val: the split the trials were selected on (the dataset has no test split)"),
        "difference": diff.to_dict(), "seeds": seeds, "score": score, "score_note": SCORES[score],
        "arms": {"self_training": {**st, "mean": float(np.nanmean([stat(x.sum(0)) for x in a]))},
                 "supervised": {**sup, "mean": float(np.nanmean([stat(x.sum(0)) for x in b]))}},
        "iterations": st_cfg.max_iters, "start": "the shared stage" if stage_model and stage_model in (
            st_cfg.teacher_checkpoint, st_cfg.init_checkpoint) else (st_cfg.init_checkpoint or "scratch"),
        "runs": run_rows, "best_trial_by_val": best_by_val, "flags": flags, "compute": compute,
        "per_class": per_class, "absent_classes": absent,
        "sequential": {"planned": planned or [len(seeds)], "looks": looks or [], "stopped": stopped or "max seeds",
                       "alpha": alpha},
        "rules_out": rules_out(diff),
    }
    record["headline"] = headline(record)
    record["lines"] = summary_lines(record)  # what the console, the report and compare print, word for word
    return record


def rules_out(d: intervals.Difference) -> dict[str, Any]:
    """What an interval says beyond its word: the largest effect it leaves open either way, and the seeds per arm
    an effect of the observed size would need at the spread seen (None: the images' own width is larger)."""
    if d.seeds < 2 or not (math.isfinite(d.low) and math.isfinite(d.high)) or d.images < intervals.MIN_IMAGES:
        return {"within": None, "seeds_needed": None}
    needed = (sequential.seeds_needed(d.mean, d.spread, d.image_half_width_at(1 - sequential.ALPHA))
              if d.outcome == intervals.UNCLEAR else None)
    return {"within": max(abs(d.low), abs(d.high)), "seeds_needed": needed}


def _pts(x: float) -> str:
    return f"{x * 100:+.2f}"


def headline(v: dict[str, Any]) -> str:
    """The verdict's first line: the answer, the difference and its interval, what was compared, how long."""
    d, arms = v["difference"], v["arms"]
    st, sup = arms["self_training"], arms["supervised"]
    answer = {"helps": "self-training HELPS", "hurts": "self-training HURTS",
              "no clear difference": "NO CLEAR DIFFERENCE between self-training and supervised"}[d["outcome"]]
    sup_name = f"tuned supervised (trial {sup['trial_id']})" if sup.get("tuned") else "UNTUNED supervised (base config)"
    seq = v.get("sequential") or {}
    planned = seq.get("planned") or [len(v["seeds"])]
    looked = (f" (look {len(seq.get('looks') or [1])} of {len(planned)}: {seq.get('stopped')})"
              if len(planned) > 1 else "")
    return (f"VERDICT: {answer}: {st['method']} (trial {st['trial_id']}) vs {sup_name}, {v['split']} "
            f"{v['statistic']} {_pts(d['mean'])} points, 95% CI [{_pts(d['low'])}, {_pts(d['high'])}]; "
            f"{len(v['seeds'])} fresh seed{'s' if len(v['seeds']) != 1 else ''} per arm{looked}, {v['iterations']} "
            f"iterations each from {v['start']}")


def summary_lines(v: dict[str, Any], top: int = 3) -> list[str]:
    """The headline, what the interval rules out, each arm's mean, the classes helped and hurt (Holm), the
    looks, the compute, the flags."""
    if v.get("format") != 2 or v.get("outcome") is None:
        return [v.get("headline", "VERDICT: (no headline)")]
    lines = [v["headline"]]
    ro, d = v.get("rules_out") or {}, v["difference"]
    if v["outcome"] == "no clear difference" and ro.get("within") is not None:
        need = ro.get("seeds_needed")
        more = (f"; a difference of {_pts(d['mean'])} points would need about {need} seeds per arm at the seed spread "
                f"seen ({d.get('spread', 0) * 100:.1f} points)" if need else
                "; more seeds cannot separate a difference this small: the test images' own uncertainty is larger")
        lines.append(f"  rules out: self-training changes {v['split']} {v['statistic']} by less than "
                     f"{ro['within'] * 100:.1f} points either way{more}")
    for arm in ("self_training", "supervised"):
        a = v["arms"][arm]
        per_seed = ", ".join(f"{r[v['split']] * 100:.1f}" for r in v["runs"] if r["arm"] == arm)
        lines.append(f"  {arm.replace('_', '-')}: {v['split']} {v['statistic']} {a['mean'] * 100:.2f} (per seed "
                     f"{per_seed})")
    helped = [(n, c) for n, c in v["per_class"].items() if c.get("word") == "helped"]
    hurt = [(n, c) for n, c in v["per_class"].items() if c.get("word") == "hurt"]

    def fmt(items: list[tuple[str, dict[str, Any]]]) -> str:
        shown = sorted(items, key=lambda x: -abs(x[1]["mean"]))[:top]
        return ", ".join(f"{n} {_pts(c['mean'])} [{_pts(c.get('holm', c)['low'])}, {_pts(c.get('holm', c)['high'])}]"
                         for n, c in shown) or "none"
    lines.append(f"  per class ({v['split']} IoU points; called only under Holm's correction over "
                 f"{len(v['per_class'])} classes): helped {fmt(helped)}; hurt {fmt(hurt)}")
    seq = v.get("sequential") or {}
    if len(seq.get("planned") or []) > 1:
        looks = "; ".join(f"{lk['seeds']} seeds: {_pts(lk['mean'])} [{_pts(lk['low'])}, {_pts(lk['high'])}] at "
                          f"{lk['confidence'] * 100:.1f}%" for lk in seq.get("looks", []))
        lines.append(f"  sequential (looks at {', '.join(map(str, seq['planned']))} seeds, 5% error spent "
                     f"O'Brien-Fleming): {looks}; stopped: {seq.get('stopped')}")
    if v.get("score_note"):
        lines.append(f"  scored: {v['score_note']}, the same for both arms")
    c = v.get("compute") or {}
    if c:
        search = f", control search {c['control_search']}" if c.get("control_search") else ""
        lines.append(f"  compute (iterations): trials {c.get('trials', 0)}{search}, shared stage {c.get('stage', 0)}, "
                     f"confirmation {c.get('confirmation', 0)} ({c.get('confirmation_share', 0) * 100:.0f}% of the "
                     "sweep)")
        lines += budget_lines(c)
    lines += [f"  note: {f}" for f in v["flags"]]
    return lines


def budget_lines(c: dict[str, Any]) -> list[str]:
    """A budget the sweep did not hold, and by how much (the stage, the trials, a control search and the
    confirmation all count); nothing when it held."""
    out = []
    if c.get("budget_iters") and c.get("total", 0) > c["budget_iters"]:
        out.append(f"  over budget: {c['total']} iterations in all against budget_iters {c['budget_iters']} "
                   f"({c['total'] - c['budget_iters']} over: runs already started finish their iterations)")
    if c.get("time_budget_s") and c.get("seconds") and c["seconds"] > c["time_budget_s"]:
        out.append(f"  over budget: {c['seconds']:.0f} s against time_budget_s {c['time_budget_s']:.0f} "
                   f"({c['seconds'] - c['time_budget_s']:.0f} s over: the verdict's runs finish once started, and "
                   "the time kept free for them was measured on the best self-training method before the search "
                   "ended)")
    return out


def no_verdict(reason: str) -> dict[str, Any]:
    """verdict.json when there is nothing to compare (no self-training trial, no supervised arm)."""
    line = f"VERDICT: none: {reason}"
    return {"format": 2, "outcome": None, "headline": line, "lines": [line], "flags": [], "reason": reason}


__all__ = ["CONTROL_MODES", "SCORES", "ConfirmRun", "arm_summary", "average_models", "build_verdict", "confirm_runs", "fresh_seeds", "headline",
           "no_verdict", "score_images", "score_run", "self_training_methods", "self_training_starts", "summary_lines",
           "train_run"]
