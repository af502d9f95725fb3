"""CPU throughput of `train()` against a bare PyTorch loop doing the same model work.

    python bench/bench_loop.py [--quick]      or      python -m bench.bench_loop [--quick]

Both sides run the demo sweep's model (smp Unet + tu-mobilenetv3_small_050 with its light decoder,
`decoder_channels` (64, 32, 16, 16, 16)), 64 px, 8 labelled + 8 unlabelled images
per step) with self-training from step 0, on the same batches:

- bare: the minimum a self-training step needs, written inline: teacher forward on the
  unlabelled batch, confidence masking, one student forward on labelled+unlabelled,
  CE + masked CE, backward, AdamW step. Batches are drawn before timing starts (no data cost).
- train(): the real loop, data loading included (drawn live, as in a real run), plus what it
  adds: EMA update, grad clipping, LR schedule, pseudo-label statistics, the per-step sync.

Steps are timed in windows of WINDOW steps: train() reports `step_seconds` (training steps only,
evaluation excluded) at each evaluation, the bare loop is timed the same way. The first window of
each run (one-off kernel set-up) is dropped; runs of the two sides alternate, so a busy phase of
the machine hits both. The median window is the headline, the fastest window the least disturbed.
Evaluation is timed apart, with the demo's full validation set. Prints a markdown table and writes
a CSV under bench/out/.

With `--device cuda` it profiles train() on the GPU instead, with the seeds' model by default
(DeepLabV3+ / ResNet-50, 320 px crops of a 320 px demo dataset generated under bench/out/):
AMP (bf16 where supported, else fp16) + channels_last against fp32 on the same batches, GPU
utilisation and memory sampled with nvidia-smi meanwhile, then the aggregate throughput of 1, 2 and 4
trials sharing the GPU through a real sweep (`gpus_per_trial` = 1/n; `--fractional`). Use
`--workers N` so that loading keeps up with the GPU.

    python bench/bench_loop.py --device cuda --workers 4 [--quick]
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/bench_loop.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from selftune.data import (
    LabeledDataset,
    UnlabeledDataset,
    make_batches,
    read_classes,
    unlabeled_index,
)
from selftune.data.demo import ensure_demo
from selftune.trainable.augment import crop_transform, normalize
from selftune.trainable.config import TrainConfig, demo_config
from selftune.trainable.device import DeviceBatch, available_cpus, make_autocast
from selftune.trainable.evaluation import evaluate, load_eval_batches
from selftune.trainable.functional import SegmentationLoss
from selftune.trainable.loop import train
from selftune.trainable.model import build_model
from selftune.trainable.records import metric_names

OUT = Path(__file__).resolve().parent / "out"
WINDOW = 5  # steps per timed window (train()'s eval_every)


def bench_config(threads: int) -> TrainConfig:
    """The demo config, self-training from the first step (the steady state), evaluations made cheap
    (they are excluded from the step times anyway)."""
    from selftune.search.sweepfile import demo_sweep

    model = {k: demo_sweep().base[k] for k in ("arch", "encoder", "decoder_channels")}
    return demo_config(**model, warmup_iters=0, st_start_iter=0, st_rampup_iters=1, device="cpu", num_threads=threads,
                       patience=0,
                       eval_every=WINDOW, val_max_images=4, train_eval_size=4, log_images=False)


def draw_batches(cfg: TrainConfig, data: Path, n: int) -> tuple[list, float]:
    """Batches 0..n-1 of the loop's labelled and unlabelled streams; seconds per (labelled, unlabelled) pair."""
    classes = read_classes(data)
    crop = crop_transform(crop=cfg.crop_size, scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                          hflip=cfg.hflip, vflip=cfg.vflip, ignore_index=cfg.ignore_index)
    labeled = make_batches(LabeledDataset(data, "train", classes), batch_size=cfg.batch_size, seed=cfg.seed,
                           stream=0, transform=crop)
    unlabeled = make_batches(UnlabeledDataset(data, unlabeled_index(data)), batch_size=cfg.unlabeled_batch_size,
                             seed=cfg.seed, stream=1, transform=crop)
    t0 = time.perf_counter()
    out = [(*next(labeled), next(unlabeled)) for _ in range(n)]
    return out, (time.perf_counter() - t0) / n


def bare_loop(cfg: TrainConfig, num_classes: int, batches: list) -> list[float]:
    """Seconds per step of each window of the bare self-training loop."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    thr = torch.tensor(cfg.thresholds)
    b = cfg.batch_size
    windows, t0 = [], time.perf_counter()
    for i, (xl, yl, xu) in enumerate(batches, start=1):
        xl, xu = normalize(xl), normalize(xu)
        with torch.no_grad():
            conf, lab = teacher(xu).softmax(1).max(1)
            lab[conf < thr[lab]] = 255
        logits = model(torch.cat([xl, xu]))
        loss_u = F.cross_entropy(logits[b:], lab, ignore_index=255, reduction="sum") / (lab != 255).sum().clamp_min(1)
        loss = F.cross_entropy(logits[:b], yl, ignore_index=255) + cfg.st_weight * loss_u
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % WINDOW == 0:
            windows.append((time.perf_counter() - t0) / WINDOW)
            t0 = time.perf_counter()
    return windows


class GpuSampler:
    """Samples GPU utilisation (%) and memory (MiB) with nvidia-smi every `period` s in a thread."""

    def __init__(self, period: float = 0.5) -> None:
        import shutil
        import threading

        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if shutil.which("nvidia-smi") else None

    def _run(self) -> None:
        import subprocess

        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                  "--id=0"], capture_output=True, text=True).stdout.strip()
            if out:
                util, mem = (float(v) for v in out.split(",")[:2])
                self.samples.append((util, mem))
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def summary(self) -> tuple[float, float]:
        """(mean utilisation %, peak memory MiB); NaN without nvidia-smi."""
        if not self.samples:
            return float("nan"), float("nan")
        return statistics.mean(u for u, _ in self.samples), max(m for _, m in self.samples)


def fractional_trials(cfg: TrainConfig, data: Path, steps: int, counts: list[int]) -> list[dict[str, float]]:
    """Aggregate throughput of n trials sharing one device (`gpus_per_trial` = 1/n on CUDA), through a
    real sweep: each trial runs `cfg` for `steps` steps; its it/s is 1 / its median window."""
    rows = []
    for n in counts:
        with GpuSampler() as gpu:
            t0 = time.perf_counter()
            trials = sweep_windows(cfg, data, steps, n, name=f"fractional{n}")
            wall = time.perf_counter() - t0
        per_trial = [1 / statistics.median(windows[1:] or [float("inf")]) for windows in trials]
        util, mem = gpu.summary()
        rows.append(dict(trials=n, aggregate_its=sum(per_trial), per_trial_its=statistics.mean(per_trial),
                         wall_s=wall, gpu_util=util, gpu_mem_mib=mem))
    return rows


def cuda_profile(cfg: TrainConfig, data: Path, steps: int, repeats: int, counts: list[int]) -> int:
    """train() on the GPU: AMP + channels_last vs fp32 (s/step per window, first window dropped, GPU
    utilisation sampled meanwhile), then 1, 2, 4 ... fractional trials sharing the GPU."""
    variants = {"AMP (auto) + channels_last": dict(amp="auto", channels_last=True),
                "fp32, contiguous": dict(amp="off", channels_last=False)}
    timings: dict[str, list[float]] = {k: [] for k in variants}
    util: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, changes in variants.items():
            with GpuSampler() as gpu:
                timings[name] += train_run(cfg.replace(device="cuda", **changes), data, steps)[1:]
            util[name].append(gpu.summary())
    name = torch.cuda.get_device_name()
    print(f"\n{cfg.arch} + {cfg.encoder}, {cfg.crop_size} px, batch {cfg.batch_size} + {cfg.unlabeled_batch_size}, "
          f"{cfg.num_workers} loader workers, {name}, bf16 supported: {torch.cuda.is_bf16_supported()}\n")
    print("| train() on CUDA | s/step (median) | it/s (median) | GPU util % (mean) | GPU memory MiB (peak) |")
    print("|---|---:|---:|---:|---:|")
    for key, values in timings.items():
        m = statistics.median(values)
        u = statistics.mean(x for x, _ in util[key])
        mem = max(y for _, y in util[key])
        print(f"| {key} | {m:.4f} | {1 / m:.1f} | {u:.0f} | {mem:.0f} |")
    frac = fractional_trials(cfg.replace(device="cuda"), data, steps, counts) if counts else []
    if frac:
        print("\n| trials per GPU (gpus_per_trial) | aggregate it/s | it/s per trial | GPU util % (mean) | "
              "GPU memory MiB (peak) | sweep wall s |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in frac:
            print(f"| {r['trials']} ({1 / r['trials']:.2f}) | {r['aggregate_its']:.1f} | {r['per_trial_its']:.1f} | "
                  f"{r['gpu_util']:.0f} | {r['gpu_mem_mib']:.0f} | {r['wall_s']:.0f} |")
    scalars = {}
    for r in frac:
        scalars[f"fractional_{r['trials']}_aggregate_its"] = f"{r['aggregate_its']:.3f}"
        scalars[f"fractional_{r['trials']}_gpu_util"] = f"{r['gpu_util']:.1f}"
    path = write_csv("bench_loop-cuda", ["gpu", "arch", "encoder", "crop", "batch", "workers"],
                     [name, cfg.arch, cfg.encoder, cfg.crop_size, cfg.batch_size, cfg.num_workers], timings, scalars)
    print(f"CSV: {path}")
    return 0


def train_run(cfg: TrainConfig, data: Path, steps: int) -> list[float]:
    """train()'s `step_seconds` of each window of a run of `steps` steps."""
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg.replace(max_iters=steps), data, Path(tmp) / "run", progress=False,
                       reporter=lambda metrics, _: reports.append(metrics))
    assert result.status == "completed", result
    return [m["step_seconds"] for m in reports]


def write_csv(prefix: str, columns: list[str], common: list[Any], timings: dict[str, list[float]],
              scalars: dict[str, str]) -> Path:
    """bench/out/<prefix>-<time>.csv: one row per timed window (variant, window, seconds_per_step), then
    one per scalar (name, "", value), each followed by the `common` columns."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "window", "seconds_per_step", *columns])
        for key, values in timings.items():
            for i, v in enumerate(values):
                w.writerow([key, i, f"{v:.5f}", *common])
        for key, value in scalars.items():
            w.writerow([key, "", value, *common])
    return path


def same_config(trial, ctx):
    """A search space with nothing to search: the Tune trial runs the base config as is."""


def sweep_windows(cfg: TrainConfig, data: Path, steps: int, n: int, *, name: str,
                  num_cpus: int | None = None) -> list[list[float]]:
    """Run `cfg` for `steps` steps as n concurrent Ray Tune trials through `selftune.search` (the real
    trainable, adapter and reporter; FIFO; `gpus_per_trial` 1/n on CUDA): each trial's `step_seconds`
    per window."""
    from selftune.search import SweepConfig, run_sweep
    from selftune.sweepfolder import read_trials

    with tempfile.TemporaryDirectory() as tmp:
        sweep = SweepConfig(name=name, data=str(data), base=cfg.replace(max_iters=steps).to_dict(),
                            space="bench.bench_loop:same_config", searcher="random", scheduler="fifo",
                            num_samples=n, max_concurrent=n, cpus_per_trial=max(cfg.num_threads, 1),
                            gpus_per_trial=1.0 / n if cfg.device == "cuda" else 0.0, num_cpus=num_cpus,
                            storage=tmp, verbose=0, control="none")  # steps only: no verdict after it
        trials = read_trials(str(run_sweep(sweep).experiment_dir))
    return [[r["step_seconds"] for r in t.results] for t in trials]


def tune_run(cfg: TrainConfig, data: Path, steps: int) -> list[float]:
    """`step_seconds` of each window of the same run inside one Ray Tune trial (`cpus_per_trial` = the
    thread count, Ray limited to that many CPUs)."""
    (windows,) = sweep_windows(cfg, data, steps, 1, name="bench_loop", num_cpus=max(cfg.num_threads, 1))
    assert windows, "the Tune trial reported nothing"
    return windows


def eval_seconds(data: Path, threads: int) -> float:
    """Seconds of one evaluation with the demo config (EMA + raw model on all val images, EMA on the
    train subset)."""
    cfg = bench_config(threads).replace(eval_every=demo_config().eval_every, val_max_images=0, train_eval_size=16)
    classes = read_classes(data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, classes.num_classes)
    teacher = copy.deepcopy(model).eval()
    val = load_eval_batches(LabeledDataset(data, "val", classes), cfg.val_max_images, cfg.batch_size)
    sub = load_eval_batches(LabeledDataset(data, "train", classes), cfg.train_eval_size, cfg.batch_size,
                            center_crop=cfg.crop_size)
    to_device = DeviceBatch(torch.device("cpu"), torch.contiguous_format, cfg.ignore_index)
    loss_fn = SegmentationLoss.from_config(cfg, classes.num_classes, None)
    args = (teacher, model, val, sub, loss_fn, to_device, make_autocast(torch.device("cpu"), None),
            metric_names(classes.names))
    evaluate(*args)
    t0 = time.perf_counter()
    evaluate(*args)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test of the benchmark)")
    parser.add_argument("--data", type=Path, help="dataset root (default: the 64 px demo dataset)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs available)")
    parser.add_argument("--repeats", type=int, default=0, help="alternating runs per side (default 3; 1 with --quick)")
    parser.add_argument("--windows", type=int, default=0, help=f"windows of {WINDOW} steps per run (default 7)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: profile train() AMP vs fp32 on the GPU instead")
    parser.add_argument("--crop", type=int, default=0,
                        help="crop size in pixels (default: 64, the demo's; 320 with --device cuda, the seeds')")
    parser.add_argument("--arch", help="smp architecture (default: Unet; DeepLabV3Plus with --device cuda)")
    parser.add_argument("--encoder", help="encoder (default: the demo's; resnet50 with --device cuda)")
    parser.add_argument("--fractional", default="1,2,4",
                        help="CUDA: trial counts sharing the GPU (gpus_per_trial = 1/n); empty to skip")
    parser.add_argument("--workers", type=int, default=0, help="data loader workers (default 0, the demo's)")
    parser.add_argument("--tune", action="store_true",
                        help="also time the same run inside a Ray Tune trial (the sweep's trainable)")
    args = parser.parse_args(argv)

    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    if args.data:
        data = args.data
    elif args.device == "cuda":  # tiles as large as the seeds' crops
        from selftune.data.demo import DemoSpec, generate_demo

        data = OUT / "demo320"
        if not data.exists():
            generate_demo(data, DemoSpec(size=320, n_train=24, n_val=8, n_test=8, n_unlabeled=400), workers=None)
    else:
        data = ensure_demo()
    cuda = args.device == "cuda"
    cfg = bench_config(threads)
    model = {"arch": args.arch or ("DeepLabV3Plus" if cuda else cfg.arch),
             "encoder": args.encoder or ("resnet50" if cuda else cfg.encoder)}
    if (model["arch"], model["encoder"]) != (cfg.arch, cfg.encoder):
        model["decoder_channels"] = []  # another model: smp's own decoder
    cfg = cfg.replace(crop_size=args.crop or (320 if cuda else 64), num_workers=args.workers, **model)
    num_classes = read_classes(data).num_classes
    repeats = args.repeats or (1 if args.quick else 3)
    windows = args.windows or (3 if args.quick else 7)
    steps = windows * WINDOW
    if args.device == "cuda":
        counts = [int(n) for n in args.fractional.split(",") if n.strip()]
        return cuda_profile(cfg, data, steps, repeats, counts)

    batches, data_s = draw_batches(cfg, data, steps)
    timings: dict[str, list[float]] = {"bare": [], "train": []}
    if args.tune:
        timings["tune"] = []
    for r in range(repeats):
        bare = bare_loop(cfg, num_classes, batches)[1:]  # the first window sets kernels up
        loop = train_run(cfg, data, steps)[1:]
        timings["bare"] += bare
        timings["train"] += loop
        line = f"run {r + 1}/{repeats}: s/step median bare {statistics.median(bare):.3f}, train() " \
               f"{statistics.median(loop):.3f}"
        if args.tune:
            tuned = tune_run(cfg, data, steps)[1:]
            timings["tune"] += tuned
            line += f", Tune trial {statistics.median(tuned):.3f}"
        print(line, file=sys.stderr)
    ev = eval_seconds(data, threads)

    med = {k: statistics.median(v) for k, v in timings.items()}
    best = {k: min(v) for k, v in timings.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{cfg.arch} + {cfg.encoder}, {cfg.crop_size} px, batch {cfg.batch_size} labelled + "
          f"{cfg.unlabeled_batch_size} unlabelled, {threads} thread(s), CPU; {len(timings['bare'])} windows of "
          f"{WINDOW} steps per side; load average at the end {load:.2f}\n")
    print("| loop | s/step (median) | it/s (median) | s/step (fastest window) |")
    print("|---|---:|---:|---:|")
    names = {"bare": "bare PyTorch loop (batches pre-drawn)", "train": "train() (data drawn live)",
             "tune": "train() inside a Ray Tune trial (`selftune.search`)"}
    for key in timings:
        print(f"| {names[key]} | {med[key]:.3f} | {1 / med[key]:.2f} | {best[key]:.3f} |")
    ratio_med, ratio_best = med["bare"] / med["train"], best["bare"] / best["train"]
    print(f"| **ratio train()/bare, it/s** | **{ratio_med:.3f}** | | **{ratio_best:.3f}** |")
    ratios = {"ratio_median": ratio_med, "ratio_fastest": ratio_best}
    if args.tune:
        ratios.update(tune_ratio_median=med["bare"] / med["tune"], tune_ratio_fastest=best["bare"] / best["tune"])
        print(f"| **ratio Tune trial/bare, it/s** | **{ratios['tune_ratio_median']:.3f}** | | "
              f"**{ratios['tune_ratio_fastest']:.3f}** |")
    print("\ngoal: ratio >= 0.95")
    print(f"outside the step times: one evaluation with the demo config (48 val + 16 train images) {ev:.2f} s; "
          f"drawing one labelled + unlabelled batch pair {data_s * 1000:.1f} ms (inside train()'s steps)")

    scalars = {key: f"{value:.4f}" for key, value in ratios.items()}
    scalars.update(evaluation_seconds=f"{ev:.4f}", data_pair_seconds=f"{data_s:.5f}")
    path = write_csv("bench_loop", ["threads", "crop", "batch", "unlabeled_batch", "load_average"],
                     [threads, cfg.crop_size, cfg.batch_size, cfg.unlabeled_batch_size, f"{load:.2f}"], timings,
                     scalars)
    print(f"CSV: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
