"""Is the verdict right? Its interval against a ground truth it never saw, and settings where the answer is known.

    python bench/bench_verdict.py sweeps                 # quick profile (~60 min on 2 CPUs): 3 demo sweeps
                                                         # (sweep seeds 0, 1, 2), each verdict's two configs
                                                         # retrained with 3 more seeds as the ground truth
    python bench/bench_verdict.py sweeps --full          # full profile (a GPU node): 5 sweeps, 5 truth seeds each
    python bench/bench_verdict.py known                  # the verdict on two settings whose answer is known
    python bench/bench_verdict.py scoring --seeds 6      # which weights of a run to score: the seed spread of each

sweeps: each sweep is `selftune sweep --demo --seed S` as a user runs it (the real CLI, timed). Its verdict
names two configs (the best self-training and the best supervised trial, retrained with fresh seeds 1000..);
here both are retrained again with seeds the sweep never used (2000..), from the same start for the same
iterations, and scored the same way: the mean difference over those seeds is the ground truth. The verdict's
95% interval should contain it. Writes docs/bench_results/verdict_sweeps.csv and verdict_sweeps.png.

known: the verdict's own functions (`search.verdict.confirm_runs`, `score_images`, `build_verdict`) on fixed
configs at the demo sweep's scale (its base config, 3 seeds, no tuning): "hurts?" is the mean teacher with the
demo base's own settings (V3.1's thresholds 0.45-0.60, ST weight 1.5), which accept ~98% of the demo's pixels and
collapse (bench/demo_fairness.py's notes), against supervised from scratch; "helps?" is self-training in rounds with a class-balanced acceptance floor
(`min_accept_ratio: 0.2`, demo_fairness's ST_SETTINGS) from a 150-iteration supervised stage, against
supervised training continued from that stage for the same iterations (+4.95 at the calibration's scale).
Writes docs/bench_results/verdict_known.csv. Whatever either says is written down; nothing is tuned here.
A run folder that holds a finished run is read, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_worker_niceness", "0")  # Ray starts task workers at nice 15: they starve beside any work
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench_results"
sys.path.insert(0, str(ROOT))

from bench import write_rows  # noqa: E402
from bench.demo_fairness import ST_SETTINGS  # noqa: E402


def _retrain(pairs: list[tuple[dict[str, Any], dict[str, Any]]], seeds: list[int], stage: str | None, folder: Path,
             data: str, score: str = "average", last: int = 4) -> list[dict[str, Any]]:
    """Each (self-training config, supervised config) pair retrained on `seeds` and scored on test, as the verdict
    does (`score`: the sweep's confirm_score); returns the verdict records (one per pair)."""
    from selftune.data import read_classes
    from selftune.search import adapter
    from selftune.search.verdict import arm_summary, build_verdict, confirm_runs, score_run, train_run
    from selftune.trainable.config import TrainConfig

    out = []
    for i, (st, sup) in enumerate(pairs):
        runs = confirm_runs(st, sup, seeds, stage, folder / f"pair{i}", threads=1,
                            keep_last=0 if score == "best" else last)
        results = adapter.run_tasks([(train_run, (r.config, data, r.out_dir)) for r in runs], cpus=1, gpus=0,
                                    desc=f"retrain pair {i}")
        base = TrainConfig.from_dict(sup)
        cms = adapter.run_tasks([(score_run, (r.out_dir, score, data, "test", base.point_radius,
                                              base.point_ring)) for r in runs], cpus=1, gpus=0)
        names = list(read_classes(Path(data)).names)
        st_entry = {"trial_id": "fixed", "config": st, "metric": "val_miou", "value": float("nan"), "iteration": 0}
        sup_entry = {"trial_id": "fixed", "config": sup, "metric": "val_miou", "value": float("nan"), "iteration": 0}
        out.append(build_verdict(
            st=arm_summary(st_entry, "self-training", True), sup=arm_summary(sup_entry, "supervised", True),
            runs=runs, results=results, cms=list(cms), split="test", class_names=list(names), metric="val_miou",
            best_by_val=None, compute={}, stage_model=stage, score=score))
    return out


def sweeps(args: argparse.Namespace) -> int:
    import ray

    work = Path(args.work)
    rows = []
    for s in [int(x) for x in args.sweep_seeds.split(",")]:
        name = f"demo_seed{s}"
        exp = work / name
        t0 = time.monotonic()
        if not (exp / "verdict.json").is_file():
            cmd = [sys.executable, "-m", "selftune", "sweep", "--demo", "--seed", str(s), "--name", name,
                   "--storage", str(work), *args.sweep_arg]
            if exp.exists():
                cmd = [sys.executable, "-m", "selftune", "sweep", "--resume", str(exp)]
            log = work / f"{name}.log"
            work.mkdir(parents=True, exist_ok=True)
            with log.open("w") as f:
                subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=work)
        wall = time.monotonic() - t0
        v = json.loads((exp / "verdict.json").read_text())
        meta_data = _data_root(exp)
        confirm = exp / "confirm"
        seed0 = v["seeds"][0]
        st = _config(confirm / f"self_training_seed{seed0}")
        sup = _config(confirm / f"supervised_seed{seed0}")
        stage = str(exp / "shared_stage" / "best_model_ema.pt") if (exp / "shared_stage").is_dir() else None
        truth_seeds = [2000 + i for i in range(args.truth_seeds)]
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            [truth] = _retrain([(st, sup)], truth_seeds, stage, work / f"truth_seed{s}", meta_data,
                               score=v.get("score", "best"))
        finally:
            ray.shutdown()
        d, t = v["difference"], truth["difference"]
        rows.append({
            "sweep_seed": s, "outcome": v["outcome"], "st_method": v["arms"]["self_training"]["method"],
            "st_trial": v["arms"]["self_training"]["trial_id"], "sup_trial": v["arms"]["supervised"]["trial_id"],
            "best_by_val": (v.get("best_trial_by_val") or {}).get("method"),
            "verdict_mean": round(d["mean"] * 100, 2), "verdict_low": round(d["low"] * 100, 2),
            "verdict_high": round(d["high"] * 100, 2), "width": round((d["high"] - d["low"]) * 100, 2),
            "seed_half_width": round(d["seed_half_width"] * 100, 2) if d["seed_half_width"] is not None else "",
            "seeds": len(v["seeds"]), "stopped": (v.get("sequential") or {}).get("stopped", ""),
            "score": v.get("score", "best"),
            "image_half_width": (round((d["image_interval"][1] - d["image_interval"][0]) * 50, 2)
                                 if None not in d["image_interval"] else ""),
            "truth_mean": round(t["mean"] * 100, 2), "truth_low": round(t["low"] * 100, 2),
            "truth_high": round(t["high"] * 100, 2), "truth_per_seed": " ".join(f"{x * 100:.1f}" for x in t["per_seed"]),
            "contains_truth": d["low"] <= t["mean"] <= d["high"],
            "confirmation_share": round(v["compute"]["confirmation_share"], 3),
            "sweep_wall_s": round(wall) if wall > 5 else "", "truth_seeds": len(truth_seeds),
            "trials_per_method": _per_method(exp),
        })
        print(json.dumps(rows[-1]), flush=True)
    write_rows(RESULTS / f"verdict_sweeps{args.suffix}.csv", rows)
    _plot(rows, RESULTS / f"verdict_sweeps{args.suffix}.png")
    return 0


def known(args: argparse.Namespace) -> int:
    import ray

    from selftune.data.demo import ensure_demo
    from selftune.search.sweepfile import demo_sweep
    from selftune.search.verdict import train_run
    from selftune.trainable.config import TrainConfig, parse_sets

    work = Path(args.work) / "known"
    data = str(ensure_demo())
    base = TrainConfig.from_dict(demo_sweep().base)
    seeds = [1000 + i for i in range(args.seeds)]
    stage_dir = work / "stage"
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        stage_cfg = base.as_supervised(max_iters=150, log_images=False, num_threads=args.num_cpus)
        train_run(stage_cfg.to_dict(), data, str(stage_dir))
        stage = str(stage_dir / "best_model_ema.pt")
        sup = base.as_supervised().to_dict()
        st_sets = TrainConfig.from_dict({**base.to_dict(), **parse_sets([f"{k}={v}" for k, v in ST_SETTINGS.items()])})
        settings = {
            "hurts? the mean teacher with V3.1's thresholds vs supervised, from scratch": (
                base.replace(method="ema_self_training").to_dict(), sup, None),
            "helps? rounds + acceptance floor vs supervised continued, from the stage": (
                st_sets.replace(method="rounds", rounds=2, teacher_checkpoint=stage, min_accept_ratio=0.2).to_dict(),
                sup, stage),
        }
        for i, (name, (st, su, start)) in enumerate(settings.items()):
            [v] = _retrain([(st, su)], seeds, start, work / f"setting{i}", data, score=args.score)
            d = v["difference"]
            rows.append({"setting": name, "outcome": v["outcome"], "mean": round(d["mean"] * 100, 2),
                         "low": round(d["low"] * 100, 2), "high": round(d["high"] * 100, 2),
                         "per_seed": " ".join(f"{x * 100:+.1f}" for x in d["per_seed"]),
                         "st_mean": round(v["arms"]["self_training"]["mean"] * 100, 2),
                         "sup_mean": round(v["arms"]["supervised"]["mean"] * 100, 2), "seeds": len(seeds),
                         "iterations": v["iterations"], "headline": v["headline"]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    write_rows(RESULTS / f"verdict_known{args.suffix}.csv", rows)
    return 0


def scoring(args: argparse.Namespace) -> int:
    """Which weights of a confirmation run should the verdict score? Both known settings retrained with
    `--seeds` paired seeds (each run keeping its last 4 evaluations' EMA models), every run scored three ways on
    test: its best val evaluation, the mean of its last 4 evaluations, their averaged weights. Per scoring: the
    mean paired difference and the seed spread (sd) of the paired differences; the lowest spread that does not move
    the mean is the choice, fixed for both arms."""
    import statistics

    import numpy as np
    import ray

    from selftune.data.demo import ensure_demo
    from selftune.search import adapter, intervals
    from selftune.search.sweepfile import demo_sweep
    from selftune.search.verdict import SCORES, confirm_runs, score_run, train_run
    from selftune.trainable.config import TrainConfig, parse_sets

    work = Path(args.work) / "scoring"
    data = str(ensure_demo())
    base = TrainConfig.from_dict(demo_sweep().base)
    seeds = [1000 + i for i in range(args.seeds)]
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        stage_dir = work / "stage"
        train_run(base.as_supervised(max_iters=150, log_images=False, num_threads=args.num_cpus).to_dict(), data,
                  str(stage_dir))
        stage = str(stage_dir / "best_model_ema.pt")
        sup = base.as_supervised().to_dict()
        st_sets = TrainConfig.from_dict({**base.to_dict(), **parse_sets([f"{k}={v}" for k, v in ST_SETTINGS.items()])})
        settings = {
            "mean teacher (V3.1 thresholds) vs supervised, from scratch": (
                base.replace(method="ema_self_training").to_dict(), sup, None),
            "rounds + floor vs supervised continued, from the stage": (
                st_sets.replace(method="rounds", rounds=2, teacher_checkpoint=stage, min_accept_ratio=0.2).to_dict(),
                sup, stage),
        }
        for i, (name, (st, su, start)) in enumerate(settings.items()):
            runs = confirm_runs(st, su, seeds, start, work / f"setting{i}", threads=1, keep_last=4)
            adapter.run_tasks([(train_run, (r.config, data, r.out_dir)) for r in runs], cpus=1, gpus=0,
                              desc=f"setting {i}: {len(runs)} runs")
            for score in SCORES:
                cms = adapter.run_tasks([(score_run, (r.out_dir, score, data, "test", base.point_radius,
                                                      base.point_ring)) for r in runs], cpus=1, gpus=0)
                a = np.stack([cm for r, cm in zip(runs, cms, strict=True) if r.arm == "self_training"])
                b = np.stack([cm for r, cm in zip(runs, cms, strict=True) if r.arm == "supervised"])
                d = intervals.paired_difference(a, b)
                per_arm = {arm: [float(intervals.miou(x.sum(0))) for x in arr] for arm, arr in
                           (("self_training", a), ("supervised", b))}
                rows.append({"setting": name, "score": score, "seeds": len(seeds), "mean": round(d.mean * 100, 2),
                             "sd_paired": round(d.spread * 100, 2), "low": round(d.low * 100, 2),
                             "high": round(d.high * 100, 2), "seed_half_width": round(d.seed_half_width * 100, 2),
                             "sd_st": round(statistics.stdev(per_arm["self_training"]) * 100, 2),
                             "sd_sup": round(statistics.stdev(per_arm["supervised"]) * 100, 2),
                             "per_seed": " ".join(f"{x * 100:+.1f}" for x in d.per_seed)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    write_rows(RESULTS / f"verdict_scoring{args.suffix}.csv", rows)
    return 0


def _per_method(exp: Path) -> str:
    """Trials per method and how many of each ASHA or the budget cut, e.g. 'supervised 3 (1 cut)'."""
    from collections import Counter

    from selftune.sweepfolder import read_trials

    trials = read_trials(str(exp))
    n = Counter(str(t.params.get("method", "?")) for t in trials)
    cut = Counter(str(t.params.get("method", "?")) for t in trials if t.outcome.startswith("stopped"))
    return "; ".join(f"{m} {k} ({cut[m]} cut)" for m, k in n.items())


def _config(run: Path) -> dict[str, Any]:
    from selftune.trainable.config import TrainConfig

    return TrainConfig.from_yaml(run / "config.yaml").to_dict()


def _data_root(exp: Path) -> str:
    import yaml

    return str(yaml.safe_load((exp / "selftune_sweep.yaml").read_text())["data_root"])


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 0.9 * len(rows) + 2.2))
    for y, r in enumerate(rows):
        color = {"helps": "#2f855a", "hurts": "#c53030"}.get(r["outcome"], "0.45")
        ax.plot([r["verdict_low"], r["verdict_high"]], [y, y], color=color, lw=6, alpha=0.55, solid_capstyle="butt",
                label="verdict's 95% interval" if y == 0 else None)
        ax.plot(r["verdict_mean"], y, "o", color=color, ms=7, label="verdict's mean" if y == 0 else None)
        ax.plot(r["truth_mean"], y, "D", color="black", ms=7,
                label=f"ground truth ({r['truth_seeds']} other seeds)" if y == 0 else None)
        ax.text(max(r["verdict_high"], r["truth_mean"]) + 0.5, y, r["outcome"], va="center", fontsize=9)
    ax.axvline(0, color="0.2", lw=0.9)
    ax.set_yticks(range(len(rows)), [f"sweep seed {r['sweep_seed']}\n{r['st_method']}, {r['seeds']} seeds" for r in rows])
    ax.set_xlabel("test mIoU points: self-training minus supervised")
    ax.set_title("The demo sweep's verdict against a ground truth it never saw")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["sweeps", "known", "scoring"])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the 2-CPU profile (the default): sweep seeds 0,1,2 and 3 "
                   "ground-truth seeds each")
    g.add_argument("--full", action="store_true", help="the GPU profile: sweep seeds 0-4 and 5 ground-truth seeds each")
    p.add_argument("--sweep-seeds", help="comma-separated sweep seeds (default: the profile's)")
    p.add_argument("--truth-seeds", type=int, help="ground-truth seeds per sweep (default: the profile's)")
    p.add_argument("--seeds", type=int, default=3, help="known: seeds per arm")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "verdict"))
    p.add_argument("--suffix", default="", help="appended to the result files' names")
    p.add_argument("--sweep-arg", action="append", default=[],
                   help="sweeps: an argument added to each `selftune sweep --demo` (repeat it), e.g. "
                        "--sweep-arg=--time-budget-s=1200 on a shared machine")
    p.add_argument("--score", default="average", help="known: how each run is scored (confirm_score)")
    args = p.parse_args(argv)
    args.sweep_seeds = args.sweep_seeds or ("0,1,2,3,4" if args.full else "0,1,2")
    args.truth_seeds = args.truth_seeds or (5 if args.full else 3)
    return {"sweeps": sweeps, "known": known, "scoring": scoring}[args.what](args)


if __name__ == "__main__":
    raise SystemExit(main())
