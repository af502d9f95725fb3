"""Which decoder should the demo model carry? Step time and the supervised model's own val mIoU, per decoder.

    python bench/bench_decoder.py [--quick] [--seeds 2] [--decoders default 64,32,16,16,16 32,16,16,8,8]

The demo model is `Unet(tu-mobilenetv3_small_050)` at 64 px; smp's default decoder (256, 128, 64, 32, 16)
holds almost all of its FLOPs. For each candidate `decoder_channels`:

- step time: one supervised training step of 16 images (forward, backward, AdamW), 1 torch thread, the median
  of `--steps` timed steps after 3 warm-up steps, the candidates interleaved so a busy phase hits all of them;
- quality: the demo's supervised config trained for the demo's run length (300 iterations, evaluated every 25,
  patience off), `--seeds` seeds, each run's best val mIoU and the mean of its last 4 evaluations.

The decoder is chosen by these two figures only (never by a verdict): the fastest whose supervised val mIoU is
within 1 point of the default's. Prints a markdown table and writes bench/out/bench_decoder-<time>.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/bench_decoder.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from selftune.data.demo import ensure_demo
from selftune.search.sweepfile import demo_sweep
from selftune.trainable.config import TrainConfig
from selftune.trainable.loop import train
from selftune.trainable.model import build_model

OUT = Path(__file__).resolve().parent / "out"


def demo_supervised(decoder: tuple[int, ...], seed: int) -> TrainConfig:
    """The demo sweep's base config, supervised, patience off, with `decoder` (empty: smp's default)."""
    base = TrainConfig.from_dict(demo_sweep().base)
    return base.as_supervised(decoder_channels=list(decoder), seed=seed, patience=0, log_images=False,
                              num_threads=1, device="cpu")


def step_seconds(decoders: list[tuple[int, ...]], steps: int, num_classes: int) -> dict[tuple[int, ...], float]:
    """Median seconds of one supervised step of 16 images per decoder, interleaved."""
    torch.set_num_threads(1)
    models = {}
    for d in decoders:
        torch.manual_seed(0)
        m = build_model(demo_supervised(d, 0), num_classes).train()
        models[d] = (m, torch.optim.AdamW(m.parameters(), lr=1e-3))
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, num_classes, (16, 64, 64))
    times: dict[tuple[int, ...], list[float]] = {d: [] for d in decoders}
    for i in range(steps + 3):
        for d, (m, opt) in models.items():
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:
                times[d].append(time.perf_counter() - t0)
    return {d: statistics.median(t) for d, t in times.items()}


def quality(decoder: tuple[int, ...], seed: int, data: Path, iters: int | None) -> dict[str, float]:
    """Best val mIoU and the mean of the last 4 evaluations of one supervised demo run."""
    cfg = demo_supervised(decoder, seed)
    if iters:
        cfg = cfg.replace(max_iters=iters, eval_every=max(1, iters // 4), warmup_iters=min(cfg.warmup_iters, iters))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, data, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_miou"] for r in rows if "val_miou" in r]
    return {"best": result.best_val_miou, "last4": statistics.mean(vals[-4:]), "wall": wall}


def parse_decoder(text: str) -> tuple[int, ...]:
    return () if text == "default" else tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 iterations, 1 seed, 3 timed steps")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--decoders", nargs="+", default=["default", "128,64,32,16,16", "64,32,16,16,16", "32,16,16,8,8"])
    args = p.parse_args(argv)
    decoders = [parse_decoder(d) for d in args.decoders]
    data = ensure_demo()
    from selftune.data import read_classes

    k = read_classes(data).num_classes
    seeds, iters, steps = (1, 20, 3) if args.quick else (args.seeds, None, args.steps)
    step = step_seconds(decoders, steps, k)
    rows = []
    for d in decoders:
        runs = [quality(d, s, data, iters) for s in range(seeds)]
        rows.append({"decoder": ",".join(map(str, d)) or "default (256,128,64,32,16)", "step_s": step[d],
                     "best_val_miou": statistics.mean(r["best"] for r in runs),
                     "last4_val_miou": statistics.mean(r["last4"] for r in runs),
                     "per_seed_best": " ".join(f"{r['best']:.4f}" for r in runs),
                     "train_wall_s": statistics.mean(r["wall"] for r in runs)})
        print(rows[-1], file=sys.stderr, flush=True)
    ref = rows[0]
    print("| decoder_channels | step s (16 img, 1 thread) | speed-up | val mIoU best | last 4 mean | per seed best | "
          "run wall s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['decoder']} | {r['step_s']:.3f} | {ref['step_s'] / r['step_s']:.2f}x | "
              f"{r['best_val_miou'] * 100:.2f} | {r['last4_val_miou'] * 100:.2f} | {r['per_seed_best']} | "
              f"{r['train_wall_s']:.0f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bench_decoder-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"CSV: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
