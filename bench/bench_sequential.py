"""Does the sequential verdict keep its promise? Made-up per-seed and per-image scores with a known difference.

    python bench/bench_sequential.py [--sims 2000] [--quick]

Each simulated confirmation scores two arms on `--images` test images with paired seeds. A run's score on an
image is  base + image effect + the run's seed effect + noise  (clipped to [0, 1]), the self-training arm's
shifted by the true difference. The spreads default to the demo's measured ones: paired per-seed differences
with a standard deviation of about 2.5 points (`bench_verdict` runs: 1-4), per-image noise giving an image
half-width of about 2 points. Each simulated score is a 2x2 "confusion matrix" per image (hits and misses of
1000 pixels) so the verdict's own code (`intervals.paired_difference`, `sequential.decide`) computes everything.

Designs compared on the same simulated runs:
- sequential 3 -> 5 seeds (the demo's): error spent O'Brien-Fleming, futility stop (what `selftune` does);
- fixed 3 and fixed 5 seeds at 95%;
- naive: 3 seeds, and if unclear 5, each look at 95% (what the sequential design must not be).
Reported per true difference (0 and +3 points by default): how often each says helps / hurts, and the mean
seeds per arm it used. At 0 the "helps" rate must stay <= 5% (2.5% is one side's share); at +3 the power.
Writes docs/bench_results/sequential_sim.csv.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from selftune.search import intervals, sequential

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench_results" / "sequential_sim.csv"
PIXELS = 1000


def hit_rate(cm: np.ndarray) -> np.ndarray:
    """The simulated statistic: hits / pixels of 2x2 'confusion matrices' [..., 2, 2] (row 0: hits, misses)."""
    return cm[..., 0, 0] / np.maximum(cm[..., 0, 0] + cm[..., 0, 1], 1)


def simulate(rng: np.random.Generator, delta: float, seeds: int, images: int, seed_sd: float, image_sd: float,
             noise_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image 'confusion matrices' [seeds, images, 2, 2] of the two arms (self-training, supervised)."""
    image = rng.normal(0.0, image_sd, size=images)
    def arm(shift: float) -> np.ndarray:
        score = 0.5 + shift + image[None, :] + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise_sd,
                                                                                               (seeds, images))
        hits = np.rint(np.clip(score, 0, 1) * PIXELS).astype(np.int64)
        cm = np.zeros((seeds, images, 2, 2), dtype=np.int64)
        cm[..., 0, 0], cm[..., 0, 1] = hits, PIXELS - hits
        return cm
    return arm(delta), arm(0.0)


def fixed(a: np.ndarray, b: np.ndarray, n: int, draws: int, seed: int) -> tuple[str, int]:
    d = intervals.paired_difference(a[:n], b[:n], hit_rate, draws=draws, seed=seed)
    return d.outcome, n


def sequential_verdict(a: np.ndarray, b: np.ndarray, planned: list[int], alphas: list[float], draws: int, seed: int,
                       futility: bool = True) -> tuple[str, int]:
    """What `selftune.search.confirm.run_verdict` decides, on simulated runs."""
    for k, n in enumerate(planned):
        d = intervals.paired_difference(a[:n], b[:n], hit_rate, draws=draws, seed=seed, confidence=1 - alphas[k])
        nxt = planned[k + 1] if k + 1 < len(planned) else None
        look = sequential.decide(d.low, d.high, d.mean, seeds=n, seeds_next=nxt, spread=d.spread,
                                 image_half_width=d.image_half_width_at(1 - alphas[-1]), last_alpha=alphas[-1])
        if look.stop and (futility or look.reason != "futile"):
            return d.outcome, n
    return d.outcome, planned[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", type=int, default=2000, help="simulated confirmations per true difference")
    p.add_argument("--quick", action="store_true", help="200 simulations, 500 bootstrap draws: a smoke run")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.0, 3.0], help="true differences, in points")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--seed-sd", type=float, default=1.8, help="points, per arm (paired difference: x 1.41)")
    p.add_argument("--image-sd", type=float, default=10.0, help="points: how much images differ from each other")
    p.add_argument("--noise-sd", type=float, default=4.5, help="points: per-image noise of a run")
    p.add_argument("--first", type=int, default=3)
    p.add_argument("--most", type=int, default=5)
    p.add_argument("--draws", type=int, default=intervals.BOOTSTRAP_DRAWS)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    sims, draws = (200, 500) if args.quick else (args.sims, args.draws)
    planned = sequential.looks(args.first, args.most)
    alphas = sequential.nominal_alphas(planned)
    naive = [0.05] * len(planned)
    designs = {
        f"sequential {'->'.join(map(str, planned))} (O'Brien-Fleming, futility)":
            lambda a, b, s: sequential_verdict(a, b, planned, alphas, draws, s),
        f"sequential {'->'.join(map(str, planned))} (O'Brien-Fleming, no futility)":
            lambda a, b, s: sequential_verdict(a, b, planned, alphas, draws, s, futility=False),
        f"fixed {args.first} seeds": lambda a, b, s: fixed(a, b, args.first, draws, s),
        f"fixed {args.most} seeds": lambda a, b, s: fixed(a, b, args.most, draws, s),
        f"naive {'->'.join(map(str, planned))} (95% at every look)":
            lambda a, b, s: sequential_verdict(a, b, planned, naive, draws, s, futility=False),
    }
    rows = []
    t0 = time.perf_counter()
    for delta in args.deltas:
        rng = np.random.default_rng(int(delta * 1000) + 7)
        counts = {name: {"helps": 0, "hurts": 0, "seeds": 0} for name in designs}
        for i in range(sims):
            a, b = simulate(rng, delta / 100, args.most, args.images, args.seed_sd / 100, args.image_sd / 100,
                            args.noise_sd / 100)
            for name, run in designs.items():
                outcome, used = run(a, b, i)
                counts[name]["helps"] += outcome == intervals.HELPS
                counts[name]["hurts"] += outcome == intervals.HURTS
                counts[name]["seeds"] += used
        for name, c in counts.items():
            rows.append({"true_difference_points": delta, "design": name, "sims": sims, "helps": c["helps"] / sims,
                         "hurts": c["hurts"] / sims, "mean_seeds_per_arm": c["seeds"] / sims})
    print(f"nominal levels per look {planned}: {', '.join(f'{1 - a:.4f}' for a in alphas)}; "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print("| true difference | design | says helps | says hurts | mean seeds per arm |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['true_difference_points']:+.1f} | {r['design']} | {r['helps'] * 100:.1f}% | "
              f"{r['hurts'] * 100:.1f}% | {r['mean_seeds_per_arm']:.2f} |")
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"CSV: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
