"""Do runs keep their pace beside other work? Threads and OpenMP's wait policy, alone and beside a busy process.

    python bench/bench_threads.py [--iters 60] [--repeats 3] [--quick]

Each case is `selftune train` of the demo sweep's base config, supervised, `--iters` iterations (no images, one
evaluation at the end), as a fresh process, timed as a whole; "beside" runs one busy pure-Python loop (a
process that never sleeps: another user's job) for the whole case. The cases: torch threads 1 and 2, and 2 with
OMP_WAIT_POLICY=PASSIVE (OpenMP's threads sleep at a barrier instead of spinning: spinning threads fight the
busy process for the cores and each step waits for the slowest). Cases interleave over `--repeats` rounds; the
median of each is printed as a markdown table and written to bench/out/bench_threads-<time>.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BUSY = "while True: pass"
CASES = {  # name: (threads, extra environment); an empty OMP_WAIT_POLICY is libgomp's own default, and it keeps
    # `import selftune` from setting PASSIVE (it sets the policy only where the user did not)
    "1 thread, OpenMP's default policy": (1, {"OMP_WAIT_POLICY": ""}),
    "2 threads, OpenMP's default policy": (2, {"OMP_WAIT_POLICY": ""}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE (selftune's default)": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "1 thread, OMP_WAIT_POLICY=PASSIVE (selftune's default)": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def run_case(threads: int, env_extra: dict[str, str], iters: int, beside: bool) -> float:
    """Seconds of one `selftune train` process."""
    from selftune.search.sweepfile import demo_sweep

    base = demo_sweep().base
    sets = [f"max_iters={iters}", f"eval_every={iters}", "method=supervised", "log_images=false",
            f"num_threads={threads}", "patience=0", "warmup_iters=5",
            f"decoder_channels={list(base['decoder_channels'])}", "encoder=tu-mobilenetv3_small_050"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if beside else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [str(Path(sys.executable).parent / "selftune"), "train", "--out", f"{tmp}/run",
                   *[a for s in sets for a in ("--set", s)]]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - t0
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a smoke run: 10 iterations, one round")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.repeats = 10, 1
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for beside in (False, True):
            for name, (threads, extra) in CASES.items():
                t = run_case(threads, extra, args.iters, beside)
                times.setdefault((name, beside), []).append(t)
                print(f"{name}, {'beside a busy process' if beside else 'alone'}: {t:.1f} s", file=sys.stderr,
                      flush=True)
    print(f"| case ({args.iters} supervised demo iterations, whole process) | alone s | beside one busy process s |")
    print("|---|---:|---:|")
    for name in CASES:
        print(f"| {name} | {statistics.median(times[(name, False)]):.1f} | "
              f"{statistics.median(times[(name, True)]):.1f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench_threads-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "beside_busy", "seconds"])
        for (name, beside), ts in times.items():
            for t in ts:
                w.writerow([name, beside, f"{t:.2f}"])
    print(f"CSV: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
