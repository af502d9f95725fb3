"""Memory layout on CPU: `train()` of the demo's model in NCHW against channels_last, interleaved.

    python bench/bench_layout.py [--iters 100] [--repeats 2] [--quick]

Each case is one `train()` of the demo sweep's base config for `--iters` iterations (evaluations every 25, as the
demo), 1 torch thread, in this process; the two layouts alternate over `--repeats` rounds and the median of each
is printed as a markdown table (and written to bench/out/bench_layout-<time>.csv). The cases: supervised (the
stage and the control) and rounds with 4 heads (the demo's slowest confirmed config so far). Best val mIoU is
printed too: the layouts differ only in rounding, so it moves by run-to-run noise, not by the layout.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CASES = {"supervised": {"method": "supervised"}, "rounds, 4 heads": {"method": "rounds", "heads": 4, "rounds": 2,
                                                                  "st_start_iter": 10, "st_rampup_iters": 20}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: 40 iterations, one round")
    args = p.parse_args(argv)
    if args.quick:  # rounds of 20 iterations: a shorter self-training ramp
        args.iters, args.repeats = 40, 1
        CASES["rounds, 4 heads"].update(st_start_iter=5, st_rampup_iters=10)

    import torch

    from selftune.data.demo import ensure_demo
    from selftune.search.sweepfile import demo_sweep
    from selftune.trainable.config import TrainConfig
    from selftune.trainable.loop import train

    torch.set_num_threads(1)
    data = ensure_demo()
    base = TrainConfig.from_dict(demo_sweep().base)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, sets in CASES.items():
                for layout in ("nchw", "channels_last"):
                    cfg = base.replace(**sets, max_iters=args.iters, num_threads=1, patience=0, log_images=False,
                                       channels_last=layout == "channels_last")
                    shutil.rmtree(Path(tmp) / "run", ignore_errors=True)
                    t0 = time.perf_counter()
                    result = train(cfg, data, Path(tmp) / "run", progress=False)
                    rows.append({"case": name, "layout": layout, "repeat": r, "seconds": time.perf_counter() - t0,
                                 "best_val_miou": result.best_val_miou})
                    print(f"{name:16s} {layout:14s} {rows[-1]['seconds']:6.1f} s", file=sys.stderr, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"bench_layout-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| case | NCHW s | channels_last s | speed-up | best val mIoU NCHW / channels_last |\n|---|---:|---:|---:|---|")
    for name in CASES:
        med = {lay: statistics.median(x["seconds"] for x in rows if x["case"] == name and x["layout"] == lay)
               for lay in ("nchw", "channels_last")}
        val = {lay: statistics.mean(x["best_val_miou"] for x in rows if x["case"] == name and x["layout"] == lay)
               for lay in ("nchw", "channels_last")}
        print(f"| {name} | {med['nchw']:.1f} | {med['channels_last']:.1f} | {med['nchw'] / med['channels_last']:.2f}x "
              f"| {val['nchw'] * 100:.2f} / {val['channels_last'] * 100:.2f} |")
    print(f"raw: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
