"""Does the search pay for itself? Six arms at equal compute on the demo data, paired tuner seeds.

    python bench/bench_search.py --quick            # 2-CPU profile (under an hour)
    python bench/bench_search.py                    # full profile, for a GPU machine
    python bench/bench_search.py --smoke            # seconds-scale check that the script works (tests run it)

Arms (same space `thresholds`, same max_t, same compute budget = the sum of training iterations):
  a  hand-tuned: the seeds' V3.1 configuration scaled to the demo data (`demo_config`), retrained
     with new seeds until the budget is spent (FIFO, no search)
  b  random search + FIFO          c  random search + ASHA
  d  TPE + FIFO                    e  TPE + ASHA, selftune's honest bookkeeping (ASHA-stopped = PRUNED)
  f  TPE + ASHA with Ray's stock OptunaSearch (ASHA-stopped = COMPLETE with its early metric)

Protocol (shared/notes/self-training.md): the tuner and early stopping see only val mIoU; each trial
also reports test mIoU (`report_test`) which is used only here, for the incumbent (the trial state with
the best val mIoU so far). Tuner seed s is the same seed for every arm.

Writes docs/bench_results/search_<profile>_events.csv (every evaluation of every trial, in order, with
cumulative compute), search_<profile>_summary.csv, and search_<profile>.png (best-so-far val mIoU vs compute).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench_results"

ARMS = {
    "a": dict(space="bench.bench_search:repeat_seeds", searcher="random", scheduler="fifo"),
    "b": dict(space="thresholds", searcher="random", scheduler="fifo"),
    "c": dict(space="thresholds", searcher="random", scheduler="asha"),
    "d": dict(space="thresholds", searcher="tpe", scheduler="fifo"),
    "e": dict(space="thresholds", searcher="tpe", scheduler="asha"),
    "f": dict(space="thresholds", searcher="tpe-stock", scheduler="asha"),
}
LABELS = {
    "a": "a: hand-tuned V3.1, repeated seeds", "b": "b: random + FIFO", "c": "c: random + ASHA",
    "d": "d: TPE + FIFO", "e": "e: TPE + ASHA (honest)", "f": "f: TPE + ASHA (Ray stock)",
}


def repeat_seeds(trial, ctx):
    """Arm a: the hand-tuned config as is; only the training seed changes between trials."""
    trial.suggest_int("seed", 0, 1_000_000)


@dataclass(frozen=True)
class Profile:
    name: str
    max_t: int
    eval_every: int
    budget: int
    seeds: int
    concurrent: int
    base: dict
    demo: dict | None  # DemoSpec overrides for a dedicated dataset; None uses the default demo data


PROFILES = {
    "smoke": Profile("smoke", max_t=20, eval_every=10, budget=40, seeds=1, concurrent=1,
                     base=dict(encoder="tu-mobilenetv3_small_050", crop_size=32, batch_size=4, unlabeled_batch_size=4,
                               train_eval_size=4, warmup_iters=2, st_start_iter=10, st_rampup_iters=10,
                               log_images=False, ema_decay=0.9),
                     demo=dict(size=32, n_train=6, n_val=4, n_test=4, n_unlabeled=12)),
    # quick: sized to finish within an hour on 2 CPU cores (18 sweeps of about 3 minutes): the demo sweep's
    # small encoder on 48 px crops of the 64 px demo tiles (evaluation still scores whole tiles)
    "quick": Profile("quick", max_t=150, eval_every=25, budget=900, seeds=3, concurrent=2,
                     base=dict(log_images=False, encoder="tu-mobilenetv3_small_050", crop_size=48), demo=None),
    "full": Profile("full", max_t=1200, eval_every=50, budget=24000, seeds=3, concurrent=4,
                    base=dict(log_images=False), demo=None),
}


def run_arm(arm: str, seed: int, profile: Profile, data: Path, storage: Path, reuse: bool = False) -> Path:
    from selftune.search import SweepConfig, run_sweep

    done = storage / f"{profile.name}-{arm}-s{seed}"
    if reuse and (done / "best_config.yaml").is_file():  # a finished sweep from an earlier invocation
        return done
    from selftune.trainable.config import demo_config

    base = demo_config(max_iters=profile.max_t, eval_every=profile.eval_every, report_test=True, num_threads=1,
                       **profile.base)
    base_dict = base.to_dict()
    if profile.name != "smoke":  # keep the demo's ramp inside the shorter run
        base_dict.update(st_start_iter=profile.eval_every, st_rampup_iters=profile.eval_every,
                         warmup_iters=profile.eval_every // 2, patience=max(2, profile.max_t // profile.eval_every // 3))
    sweep = SweepConfig(
        name=f"{profile.name}-{arm}-s{seed}", data=str(data), base=base_dict, seed=seed, num_samples=-1,
        budget_iters=profile.budget, max_concurrent=profile.concurrent, cpus_per_trial=1, storage=str(storage),
        reduction_factor=3, verbose=0, control="none", **ARMS[arm],  # the arms are the comparison: no verdict
    )
    return Path(run_sweep(sweep).experiment_dir)


def events(arm: str, seed: int, exp: Path):
    """Every evaluation of every trial in time order, with cumulative compute and the incumbent."""
    import pandas as pd

    from selftune.sweepfolder import read_trials

    rows = []
    for t in read_trials(str(exp)):
        prev = 0
        for r in t.results:
            it = int(r["iteration"])
            rows.append(dict(arm=arm, seed=seed, trial=t.trial_id, iteration=it, step=it - prev,
                             timestamp=r.get("timestamp", 0), time_total_s=r.get("time_total_s", 0.0),
                             val_miou=r["val_miou"], test_miou=r.get("test_miou", float("nan")),
                             status=r.get("status")))
            prev = it
    df = pd.DataFrame(rows).sort_values(["timestamp", "trial", "iteration"], kind="stable").reset_index(drop=True)
    df["compute"] = df["step"].cumsum()
    best_val, inc_test, bv, it_ = [], [], float("-inf"), float("nan")
    for v, te in zip(df["val_miou"], df["test_miou"], strict=True):
        if v == v and v > bv:
            bv, it_ = v, te
        best_val.append(bv)
        inc_test.append(it_)
    df["best_val"] = best_val
    df["incumbent_test"] = inc_test
    return df


def summary_rows(df, budget: int):
    """One row per (arm, seed): compute, trials, final best val, the incumbent's test at 25/50/100% of `budget`."""
    import pandas as pd

    rows = []
    for (arm, seed), g in df.groupby(["arm", "seed"]):
        row = dict(arm=arm, seed=seed, compute=int(g["compute"].max()), trials=g["trial"].nunique(),
                   final_best_val=g["best_val"].iloc[-1])
        for frac in (0.25, 0.5, 1.0):
            upto = g[g["compute"] <= frac * budget]
            row[f"test_at_{int(frac * 100)}"] = upto["incumbent_test"].iloc[-1] if len(upto) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(df, budget: int):
    import pandas as pd

    summary = summary_rows(df, budget)
    # e's compute to reach b's final best val, per paired seed
    reach = []
    for seed in summary["seed"].unique():
        b = summary[(summary.arm == "b") & (summary.seed == seed)]
        e = df[(df.arm == "e") & (df.seed == seed)]
        if len(b) and len(e):
            hit = e[e["best_val"] >= b["final_best_val"].iloc[0]]
            reach.append(dict(seed=seed, e_compute_to_reach_b_final=int(hit["compute"].iloc[0]) if len(hit) else None,
                              b_compute=int(b["compute"].iloc[0])))
    return summary, pd.DataFrame(reach)


def plot(df, budget: int, out: Path, title: str, labels: dict[str, str] | None = None,
         xlabel: str = "compute: training iterations summed over trials") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.linspace(0, budget, 200)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for arm in sorted(df["arm"].unique()):
        curves_v, curves_t = [], []
        for _, g in df[df.arm == arm].groupby("seed"):
            idx = np.searchsorted(g["compute"].to_numpy(), grid, side="right") - 1
            v = np.where(idx >= 0, g["best_val"].to_numpy()[np.clip(idx, 0, None)], np.nan)
            t = np.where(idx >= 0, g["incumbent_test"].to_numpy()[np.clip(idx, 0, None)], np.nan)
            curves_v.append(v)
            curves_t.append(t)
        for ax, curves in ((axes[0], curves_v), (axes[1], curves_t)):
            m, s = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            ax.plot(grid, m * 100, label=(labels or LABELS)[arm])
            ax.fill_between(grid, (m - s) * 100, (m + s) * 100, alpha=0.15)
    axes[0].set_title("best val mIoU so far")
    axes[1].set_title("test mIoU of the incumbent (best val so far)")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the 2-CPU profile")
    g.add_argument("--smoke", action="store_true", help="a seconds-scale run that only checks the script works")
    p.add_argument("--arms", default="abcdef", help="which arms to run (default abcdef)")
    p.add_argument("--seeds", type=int, help="tuner seeds per arm (default: the profile's)")
    p.add_argument("--out", type=Path, help="where to write results (default docs/bench_results; smoke: a temp dir)")
    p.add_argument("--storage", type=Path,
                   help="where the sweeps go (default: bench/out/sweeps_<profile>; they hold GBs of checkpoints)")
    p.add_argument("--reuse", action="store_true",
                   help="read arms whose sweep already finished in the storage folder instead of rerunning them")
    args = p.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    seeds = args.seeds or profile.seeds
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or (out if args.smoke else ROOT / "bench" / "out") / f"sweeps_{profile.name}"

    import pandas as pd
    import ray

    from selftune.data.demo import DemoSpec, ensure_demo, generate_demo

    if profile.demo is not None:
        data = out / "smoke_data"
        if not data.exists():
            generate_demo(data, DemoSpec(**profile.demo))
    else:
        data = ensure_demo()
    frames = []
    t0 = time.time()
    try:
        for seed in range(seeds):
            for arm in args.arms:
                ts = time.time()
                exp = run_arm(arm, seed, profile, data, storage, args.reuse)
                frames.append(events(arm, seed, exp))
                print(f"[{time.time() - t0:7.0f}s] arm {arm} seed {seed}: {time.time() - ts:.0f}s, best val "
                      f"{frames[-1]['best_val'].iloc[-1]:.4f}", flush=True)
    finally:
        ray.shutdown()
    df = pd.concat(frames, ignore_index=True)
    summary, reach = summarize(df, profile.budget)
    df.to_csv(out / f"search_{profile.name}_events.csv", index=False)
    summary.to_csv(out / f"search_{profile.name}_summary.csv", index=False)
    reach.to_csv(out / f"search_{profile.name}_reach.csv", index=False)
    plot(df, profile.budget, out / f"search_{profile.name}.png",
         f"{profile.name} profile: {seeds} tuner seeds, budget {profile.budget} iterations, max_t {profile.max_t}")
    agg = summary.groupby("arm").agg(["mean", "std"])[["final_best_val", "test_at_25", "test_at_50", "test_at_100"]]
    print(f"\n{profile.name} profile, {seeds} seeds, {time.time() - t0:.0f}s in all\n")
    print((agg * 100).round(2).to_string())
    print(reach.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
