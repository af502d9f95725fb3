"""Sweep machinery costs: per-trial overhead, time to first trial, trials/minute, driver memory.

    python bench/bench_sweep.py --quick        # 2-CPU laptop/CI-sized
    python bench/bench_sweep.py                # the full counts (1,000 trials)
    python -m bench.bench_sweep --only scale   # one part

Parts (each prints a markdown table and writes bench/out/sweep_<part>.csv):
- overhead: wall time per trial for trials that import torch + smp and report 3 times, with
  reuse_actors on and off (a fresh actor pays the imports every trial).
- first_trial: seconds from `selftune sweep --demo` starting to its first trial running (the first
  trial folder appearing), and to its first reported evaluation.
- scale: N near-no-op trials (one report each) through selftune's own searcher (HonestOptunaSearch,
  random or TPE sampler) + ASHA on a simulated multi-node cluster (ray.cluster_utils.Cluster,
  2 worker nodes): scheduler overhead per trial-slot (wall x slots / trials), trials per minute,
  results per second, and the driver's RSS as trials accumulate.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def _table(rows: list[dict], title: str) -> None:
    print(f"\n### {title}\n")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def _csv(rows: list[dict], name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"sweep_{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------- trainables


def torch_trial(config: dict) -> None:
    """Imports what a real trial imports (torch, smp), then reports three times."""
    import segmentation_models_pytorch  # noqa: F401
    import torch  # noqa: F401
    from ray import tune

    for i in range(3):
        tune.report({"val_miou": config["x"] * (i + 1) / 3, "iteration": (i + 1) * 10, "status": "running"})


def noop_trial(config: dict) -> None:
    from ray import tune

    tune.report({"val_miou": config["x"], "iteration": 1, "status": "completed", "best_val_miou": config["x"]})


def x_space(trial, ctx=None):
    trial.suggest_float("x", 0.0, 1.0)


# ---------------------------------------------------------------------- parts


def bench_overhead(n_trials: int) -> list[dict]:
    import ray
    from ray import tune

    rows = []
    for reuse in (True, False):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            tune.Tuner(
                tune.with_resources(torch_trial, {"cpu": 1}),
                param_space={"x": tune.uniform(0, 1)},
                tune_config=tune.TuneConfig(num_samples=n_trials, reuse_actors=reuse, max_concurrent_trials=2),
                run_config=tune.RunConfig(name="overhead", storage_path=tmp, verbose=0),
            ).fit()
            wall = time.perf_counter() - t0
        ray.shutdown()
        rows.append({"reuse_actors": reuse, "trials": n_trials, "concurrent": 2, "wall_s": wall,
                     "s_per_trial_slot": wall * 2 / n_trials})
    return rows


def bench_first_trial(timeout: float = 300) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(sys.executable).with_name("selftune")
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(exe), "sweep", "--demo", "--storage", tmp, "--num-samples", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        exp = Path(tmp) / "demo"
        first_dir = first_report = None
        try:
            while time.perf_counter() - t0 < timeout and first_report is None:
                dirs = [d for d in exp.glob("trial_*")] if exp.is_dir() else []
                if dirs and first_dir is None:
                    first_dir = time.perf_counter() - t0
                if any((d / "result.json").is_file() and (d / "result.json").stat().st_size for d in dirs):
                    first_report = time.perf_counter() - t0
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
            subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)
    return [{"command": "selftune sweep --demo", "to_first_trial_folder_s": first_dir or float("nan"),
             "to_first_report_s": first_report or float("nan")}]


def bench_scale(n_trials: int, sampler: str) -> list[dict]:
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from ray.tune.schedulers import ASHAScheduler

    from selftune.search.adapter import make_searcher
    from selftune.spaces import SpaceContext

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    samples: list[tuple[float, int, float]] = []
    done = threading.Event()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "scale"

        def watch() -> None:
            t0 = time.perf_counter()
            while not done.wait(2.0):
                n = len(list(exp.glob("noop_trial_*"))) if exp.is_dir() else 0
                samples.append((time.perf_counter() - t0, n, _rss_mb()))

        threading.Thread(target=watch, daemon=True).start()
        rss0 = _rss_mb()
        searcher = make_searcher(
            sampler, "bench.bench_sweep:x_space", SpaceContext(), seed=0, num_samples=n_trials, max_concurrent=4,
            study_name="scale", storage_url="journal:" + str(Path(tmp) / "optuna_journal.log"),
        )
        t0 = time.perf_counter()
        tune.Tuner(
            tune.with_resources(noop_trial, {"cpu": 1}),
            tune_config=tune.TuneConfig(metric="val_miou", mode="max", search_alg=searcher, num_samples=n_trials,
                                        scheduler=ASHAScheduler(time_attr="iteration", max_t=1), reuse_actors=True),
            run_config=tune.RunConfig(name="scale", storage_path=tmp, verbose=0),
        ).fit()
        wall = time.perf_counter() - t0
        done.set()
        rss1 = _rss_mb()
    ray.shutdown()
    cluster.shutdown()
    slots = 4
    rows.append({
        "sampler": sampler, "trials": n_trials, "nodes": "head + 2 x 2 CPU", "slots": slots, "wall_s": wall,
        "s_per_trial_slot": wall * slots / n_trials, "trials_per_min": n_trials / wall * 60,
        "results_per_s": n_trials / wall, "driver_rss_start_mb": rss0, "driver_rss_end_mb": rss1,
        "driver_mb_per_1000_trials": (rss1 - rss0) / n_trials * 1000,
    })
    _csv([{"t_s": t, "trials_started": n, "driver_rss_mb": m} for t, n, m in samples], f"scale_memory_{sampler}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts (minutes on 2 CPUs)")
    p.add_argument("--only", choices=["overhead", "first_trial", "scale"])
    p.add_argument("--trials", type=int, help="trials for the scale part (default 1000, --quick 200)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    parts = [args.only] if args.only else ["overhead", "first_trial", "scale"]
    if "overhead" in parts:
        rows = bench_overhead(8 if args.quick else 20)
        _table(rows, "Per-trial overhead (torch + smp imports, 3 reports per trial)")
        _csv(rows, "overhead")
    if "first_trial" in parts:
        rows = bench_first_trial()
        _table(rows, "Time from the command to the first trial")
        _csv(rows, "first_trial")
    if "scale" in parts:
        n = args.trials or (200 if args.quick else 1000)
        rows = bench_scale(n, "random") + ([] if args.quick else bench_scale(n, "tpe"))
        _table(rows, f"{n} near-no-op trials on a simulated multi-node cluster")
        _csv(rows, "scale")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
