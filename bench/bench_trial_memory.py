"""Memory of a reused trial process (issue 19): the trial actor's RSS at each trial's start and end.

    python bench/bench_trial_memory.py --quick     # 30 trials, a few minutes on 2 CPUs
    python bench/bench_trial_memory.py             # 60 trials

A real selftune sweep (Ray Tune, Optuna TPE, FIFO, the `thresholds` space, an smp Unet with the smallest
timm encoder on a small demo set, the demo's 7 classes), reuse_actors on (selftune's default) and one trial
at a time, so one actor process runs every trial. A Ray callback on the driver reads that process's
/proc/<pid>/status (the pid Ray puts in every result) when a trial starts (the actor as the last trial left
it; unknown for the first trial), at its first report (model, data and evaluation sets built) and when it
ends (train() has returned). VmHWM is the process's peak RSS so far.

Writes docs/bench_results/<name>.csv (one row per trial) and <name>.png (RSS against the trial index;
`--compare CSV` draws an earlier run beside it), and prints one summary line: first/last/max RSS at the
trials' ends and the least-squares slope in MB per trial over trials 5..N.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench_results"
SLOPE_FROM = 5  # trials before this index are the warm-up (imports, first allocations) and left out of the slope
FIELDS = ["trial", "trial_id", "pid", "rss_start_mb", "rss_first_report_mb", "rss_end_mb", "rss_anon_end_mb",
          "hwm_end_mb", "status"]

# A trial of a few seconds: the demo's model family at its smallest, 20 iterations, 2 evaluations.
BASE: dict[str, Any] = dict(
    arch="Unet", encoder="tu-mobilenetv3_small_050", crop_size=48, batch_size=4, unlabeled_batch_size=4,
    train_eval_size=8, max_iters=20, eval_every=10, warmup_iters=2, st_start_iter=10, st_rampup_iters=10,
    patience=0, ema_decay=0.9, num_threads=1,
)
DEMO = dict(size=64, n_train=12, n_val=8, n_test=0, n_unlabeled=48, seed=0)


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and VmHWM of `pid` in MB (NaN when the process is gone)."""
    out = {"VmRSS": math.nan, "RssAnon": math.nan, "VmHWM": math.nan}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in out:
                    out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def _trial_memory_callback() -> Any:
    from ray.tune import Callback

    class TrialMemory(Callback):
        """Per trial, in start order: the actor's RSS at the start, first report and end."""

        def __init__(self) -> None:
            self.rows: dict[str, dict[str, Any]] = {}
            self.last_pid: int | None = None

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            start = proc_status_mb(self.last_pid)["VmRSS"] if self.last_pid else math.nan
            self.rows[trial.trial_id] = {"trial": len(self.rows), "trial_id": trial.trial_id, "pid": None,
                                         "rss_start_mb": start, "rss_first_report_mb": math.nan}

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            row = self.rows.get(trial.trial_id)
            if row is not None and row["pid"] is None:
                row["pid"] = self.last_pid = int(result["pid"])
                row["rss_first_report_mb"] = proc_status_mb(row["pid"])["VmRSS"]

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._end(trial, "completed")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._end(trial, "error")

        def _end(self, trial: Any, status: str) -> None:
            row = self.rows.get(trial.trial_id)
            if row is None or row["pid"] is None:
                return
            s = proc_status_mb(row["pid"])
            row.update(rss_end_mb=s["VmRSS"], rss_anon_end_mb=s["RssAnon"], hwm_end_mb=s["VmHWM"], status=status)

    return TrialMemory()


def run(trials: int, iters: int, work: Path) -> list[dict[str, Any]]:
    """The sweep, with the memory callback added to selftune's own callbacks; rows in trial order."""
    import ray

    from selftune.data.demo import DemoSpec, generate_demo
    from selftune.search import SweepConfig, adapter, run_sweep

    data = work / "data"
    if not data.exists():
        generate_demo(data, DemoSpec(**DEMO))
    callback = _trial_memory_callback()
    own = adapter._callbacks
    adapter._callbacks = lambda spec: [*own(spec), callback]  # the sweep as selftune runs it, plus one observer
    sweep = SweepConfig(
        name="trial_memory", data=str(data), base={**BASE, "max_iters": iters}, space="thresholds", searcher="tpe",
        scheduler="fifo", num_samples=trials, max_concurrent=1, cpus_per_trial=1, num_cpus=1,
        storage=str(work / "sweeps"), reuse_actors=True, control=False, verbose=0,
    )
    try:
        run_sweep(sweep)
    finally:
        adapter._callbacks = own
        ray.shutdown()
    return sorted(callback.rows.values(), key=lambda r: r["trial"])


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (NaN with fewer than 2 points)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y == y]
    if len(pts) < 2:
        return math.nan
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else math.nan


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    ends = [float(r.get("rss_end_mb", math.nan)) for r in rows]
    later = [(float(r["trial"]), e) for r, e in zip(rows, ends, strict=True) if int(r["trial"]) >= SLOPE_FROM]
    finite = [e for e in ends if e == e]
    return {"trials": len(rows), "pids": len({r["pid"] for r in rows if r["pid"] not in (None, "")}),
            "first_mb": ends[0] if ends else math.nan, "last_mb": ends[-1] if ends else math.nan,
            "max_mb": max(finite) if finite else math.nan,
            "slope_mb_per_trial": slope([x for x, _ in later], [y for _, y in later])}


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(rows: list[dict[str, Any]], out: Path, title: str, compare: tuple[str, list[dict[str, Any]]] | None,
         label: str = "this run") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    series = [(compare[0], compare[1], "tab:red")] if compare else []
    series.append((label, rows, "tab:blue"))
    for label, rs, color in series:
        x = [int(r["trial"]) for r in rs]
        ax.plot(x, [float(r["rss_end_mb"] or "nan") for r in rs], "-o", ms=3, color=color,
                label=f"{label}: trial end")
        ax.plot(x, [float(r["rss_start_mb"] or "nan") for r in rs], ":", color=color, alpha=0.6,
                label=f"{label}: trial start")
    ax.set_xlabel("trial index (one reused actor process)")
    ax.set_ylabel("trial process RSS (MB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="30 trials instead of 60")
    p.add_argument("--trials", type=int, help="number of trials (default 60, --quick 30)")
    p.add_argument("--iters", type=int, default=BASE["max_iters"], help="training iterations per trial")
    p.add_argument("--name", default="trial_memory", help="output file stem under --out (default trial_memory)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the CSV and PNG go (default docs/bench_results)")
    p.add_argument("--compare", type=Path, help="an earlier run's CSV to draw beside this one")
    p.add_argument("--compare-label", default="before", help="its label in the plot")
    p.add_argument("--label", default="this run", help="this run's label in the plot")
    p.add_argument("--work", type=Path, help="data and sweep folder (default: a temporary folder)")
    args = p.parse_args(argv)
    trials = args.trials or (30 if args.quick else 60)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        rows = run(trials, args.iters, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="trial_memory_") as tmp:
            rows = run(trials, args.iters, Path(tmp))
    wall = time.perf_counter() - t0
    with open(args.out / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    s = summary(rows)
    compare = (args.compare_label, read_csv(args.compare)) if args.compare else None
    plot(rows, args.out / f"{args.name}.png",
         f"{s['trials']} trials, reuse_actors, {s['pids']} process(es): end RSS {s['first_mb']:.0f} -> "
         f"{s['last_mb']:.0f} MB, slope {s['slope_mb_per_trial']:+.2f} MB/trial (trials {SLOPE_FROM}..)", compare,
         args.label)
    print(f"trial memory: {s['trials']} trials in {s['pids']} process(es), {wall:.0f}s: RSS at trial end first "
          f"{s['first_mb']:.0f} MB, last {s['last_mb']:.0f} MB, max {s['max_mb']:.0f} MB, slope "
          f"{s['slope_mb_per_trial']:+.2f} MB/trial over trials {SLOPE_FROM}..{s['trials'] - 1}; "
          f"{args.out / args.name}.csv")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
