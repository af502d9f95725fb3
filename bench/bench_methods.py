"""Does searching methods pay? Four arms at equal compute on the demo data, 3 paired tuner seeds (issue 18).

    python bench/bench_methods.py --quick     # 2-CPU profile (about an hour)
    python bench/bench_methods.py             # full profile, for a GPU machine (demo-scale runs of 1,200 iterations)
    python bench/bench_methods.py --smoke     # seconds-scale check that the script works (tests run it)

Arms (same max_t, same compute budget = training iterations summed over trials, the shared stage counted once):
  a  the seeds' hand V3.1 config (`demo_config`), retrained with new seeds until the budget is spent
  b  a sweep of the `supervised` space: the tuned control
  c  the `thresholds` space (the mean teacher; the old default)
  d  the `methods` space with a shared first stage (rounds trials start from it)
All sweeps: TPE + ASHA (honest bookkeeping), `control: false` (the arms are the comparison). The tuner and
early stopping see only val mIoU; every evaluation also reports test mIoU (`report_test`), read here only,
for the incumbent (the trial state with the best val mIoU so far).

Writes docs/bench_results/methods_<profile>_events.csv, methods_<profile>_summary.csv and
methods_<profile>.png (best-so-far val and the incumbent's test mIoU against compute).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from bench.bench_search import events, plot, summary_rows  # noqa: E402

RESULTS = ROOT / "docs" / "bench_results"
ARMS = {
    "a": dict(space="bench.bench_search:repeat_seeds", searcher="random", scheduler="fifo"),
    "b": dict(space="supervised"),
    "c": dict(space="thresholds"),
    "d": dict(space="methods"),
}
LABELS = {"a": "a: hand V3.1, repeated seeds", "b": "b: supervised space (tuned control)",
          "c": "c: thresholds space (mean teacher)", "d": "d: methods space + shared stage"}


@dataclass(frozen=True)
class Profile:
    name: str
    max_t: int
    eval_every: int
    budget: int  # iterations in all, the shared stage included
    stage: int  # arm d's shared stage
    seeds: int
    concurrent: int
    base: dict
    demo: dict | None  # DemoSpec overrides for a dedicated dataset; None: the default demo data


PROFILES = {
    "smoke": Profile("smoke", max_t=20, eval_every=10, budget=60, stage=10, seeds=1, concurrent=1,
                     base=dict(encoder="tu-mobilenetv3_small_050", crop_size=32, batch_size=4, unlabeled_batch_size=4,
                               train_eval_size=4, log_images=False, ema_decay=0.9),
                     demo=dict(size=32, n_train=6, n_val=4, n_test=4, n_unlabeled=12)),
    # quick: 12 sweeps of about 4 minutes on 2 CPU cores: the demo sweep's small encoder, 150-iteration trials
    "quick": Profile("quick", max_t=150, eval_every=25, budget=900, stage=150, seeds=3, concurrent=2,
                     base=dict(log_images=False, encoder="tu-mobilenetv3_small_050", crop_size=48), demo=None),
    # full: the demo calibration's scale (Run 11: resnet18 Unet, 1,200 iterations a run)
    "full": Profile("full", max_t=1200, eval_every=50, budget=24000, stage=1200, seeds=3, concurrent=4,
                    base=dict(log_images=False), demo=None),
}


def run_arm(arm: str, seed: int, profile: Profile, data: Path, storage: Path, reuse: bool = False) -> Path:
    from selftune.search import SweepConfig, run_sweep
    from selftune.trainable.config import demo_config

    name = f"methods-{profile.name}-{arm}-s{seed}"
    done = storage / name
    if reuse and (done / "best_config.yaml").is_file():
        return done
    base = demo_config(max_iters=profile.max_t, eval_every=profile.eval_every, report_test=True, num_threads=1,
                       **profile.base).to_dict()
    e = profile.eval_every
    base.update(st_start_iter=e, st_rampup_iters=e, warmup_iters=e // 2, patience=max(2, profile.max_t // e // 3))
    extra = dict(shared_stage={"max_iters": profile.stage}) if arm == "d" else {}
    sweep = SweepConfig(
        name=name, data=str(data), base=base, seed=seed, num_samples=-1, budget_iters=profile.budget,
        max_concurrent=profile.concurrent, cpus_per_trial=1, storage=str(storage), reduction_factor=3, verbose=0,
        control=False, **{"searcher": "tpe", "scheduler": "asha", **ARMS[arm], **extra},
    )
    return Path(run_sweep(sweep).experiment_dir)


def arm_events(arm: str, seed: int, exp: Path, stage: int):
    """bench_search's events, with arm d's shared stage spent before its first trial."""
    df = events(arm, seed, exp)
    if arm == "d":
        df["compute"] += stage
    return df


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the 2-CPU profile")
    g.add_argument("--smoke", action="store_true", help="a seconds-scale run that only checks the script works")
    p.add_argument("--arms", default="abcd", help="which arms to run (default abcd)")
    p.add_argument("--seeds", type=int, help="tuner seeds per arm (default: the profile's)")
    p.add_argument("--out", type=Path, help="where to write results (default docs/bench_results; smoke: a temp dir)")
    p.add_argument("--storage", type=Path, help="where the sweeps go (default bench/out/methods_<profile>)")
    p.add_argument("--reuse", action="store_true", help="read arms whose sweep already finished instead of rerunning")
    args = p.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    seeds = args.seeds or profile.seeds
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or (out if args.smoke else ROOT / "bench" / "out") / f"methods_{profile.name}"

    import pandas as pd
    import ray

    from selftune.data.demo import DemoSpec, ensure_demo, generate_demo

    if profile.demo is not None:
        data = out / "smoke_data"
        if not data.exists():
            generate_demo(data, DemoSpec(**profile.demo))
    else:
        data = ensure_demo()
    frames, t0 = [], time.time()
    try:
        for seed in range(seeds):
            for arm in args.arms:
                ts = time.time()
                exp = run_arm(arm, seed, profile, data, storage, args.reuse)
                frames.append(arm_events(arm, seed, exp, profile.stage))
                print(f"[{time.time() - t0:7.0f}s] arm {arm} seed {seed}: {time.time() - ts:.0f}s, "
                      f"{frames[-1]['trial'].nunique()} trials, best val {frames[-1]['best_val'].iloc[-1]:.4f}",
                      flush=True)
    finally:
        ray.shutdown()
    df = pd.concat(frames, ignore_index=True)
    summary = summary_rows(df, profile.budget)
    df.to_csv(out / f"methods_{profile.name}_events.csv", index=False)
    summary.to_csv(out / f"methods_{profile.name}_summary.csv", index=False)
    plot(df, profile.budget, out / f"methods_{profile.name}.png",
         f"{profile.name} profile: {seeds} tuner seeds, budget {profile.budget} iterations, max_t {profile.max_t}",
         labels=LABELS, xlabel="compute: training iterations summed over trials (shared stage included)")
    cols = ["trials", "final_best_val", "test_at_25", "test_at_50", "test_at_100"]
    agg = summary.groupby("arm")[cols].agg(["mean", "std"])
    for c in cols[1:]:
        agg[c] = agg[c] * 100
    print(f"\n{profile.name} profile, {seeds} seeds, {time.time() - t0:.0f}s in all\n")
    print(agg.round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
