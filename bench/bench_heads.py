"""What several heads cost, and whether they help: DiverseHead (method diverse_head) and the mean teacher's `heads`.

    python bench/bench_heads.py cost [--quick] [--device cpu|cuda] [--steps 20] [--threads 1]
    python bench/bench_heads.py verdict SWEEP_FOLDER [--also DH_SWEEP] [--seeds 3]   # after `selftune sweep --demo`

cost: one training step (the loop's hooks in its order: `before_step`, the teacher's pseudo-labels, one student
forward of the labelled and unlabelled batch, the method's losses, backward, AdamW, the EMA update) and one eval
forward (inference: the heads' mean) per variant, on random batches of the demo's shape (8 + 8 images of 64 px),
the variants interleaved so a busy phase hits all of them; the median of `--steps` timed steps after 3 warm-up
steps. Memory: the bytes autograd saves for the backward pass in one step (every tensor a step keeps alive,
counted once per storage; device-agnostic), the parameters, and on CUDA the step's peak allocation above what was
allocated before it.
Variants: supervised and the mean teacher with smp's one head (the references), the mean teacher with 3 heads, and
diverse_head with 1, 2, 5 and 10 heads (DF: half frozen) and 10 heads with dropout 0.5 (DT). Models: the demo's
(Unet / tu-mobilenetv3_small_050, decoder 64-16: its heads read 16 channels) and, without --quick, DiverseNet's
shape (DeepLabV3+: heads on 256 channels at a quarter of the input; ResNet-18 at 64 px on CPU, ResNet-50 at 320 px
with bf16 autocast and channels_last on CUDA). Writes docs/bench_results/heads_cost_<device>.csv.

verdict: from a finished demo sweep that searched diverse_head (`selftune sweep --demo` searches every registered
method; `--also` adds the trials of another sweep, e.g. of the `diverse_head` space): its best diverse_head trial
against its best supervised trial (the tuned control), both retrained with
`--seeds` fresh seeds from the same start for the same iterations and scored on test the verdict's way
(`search.verdict`: confirm_runs, train_run, score_images, build_verdict); and its best mean-teacher trial with
`heads` 3 (or its own, if more) against the same config with one head, paired the same way
(`intervals.paired_difference`). Writes docs/bench_results/heads_verdict.csv. A run folder that holds a finished run
is read, not trained again.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/bench_heads.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import write_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench_results"
K = 7  # the demo's classes

VARIANTS: dict[str, dict[str, Any]] = {
    "supervised (smp head)": {"method": "supervised"},
    "mean teacher, heads 1 (smp head)": {"method": "ema_self_training"},
    "mean teacher, heads 3": {"method": "ema_self_training", "heads": 3},
    "diverse_head, 1 head": {"method": "diverse_head", "diverse_heads": 1, "freeze_fraction": 0.0},
    "diverse_head, 2 heads (DF)": {"method": "diverse_head", "diverse_heads": 2},
    "diverse_head, 5 heads (DF)": {"method": "diverse_head", "diverse_heads": 5},
    "diverse_head, 10 heads (DF)": {"method": "diverse_head", "diverse_heads": 10},
    "diverse_head, 10 heads (DT)": {"method": "diverse_head", "diverse_heads": 10, "head_dropout": 0.5,
                                    "freeze_fraction": 0.0},
}


def models(device: str, quick: bool) -> dict[str, dict[str, Any]]:
    """The model shapes timed: the demo's, and DiverseNet's (DeepLabV3+) unless quick."""
    from selftune.search.sweepfile import demo_sweep

    demo = {k: demo_sweep().base[k] for k in ("arch", "encoder", "decoder_channels")}
    out = {"demo Unet 64px": {**demo, "crop_size": 64}}
    if not quick:
        encoder, size = ("resnet50", 320) if device == "cuda" else ("resnet18", 64)
        out[f"DeepLabV3+ {encoder} {size}px"] = {"arch": "DeepLabV3Plus", "encoder": encoder, "decoder_channels": [],
                                                 "crop_size": size}
    return out


class Bench:
    """One variant's model, EMA teacher, method, optimizer and batches on the device, stepped like the loop does."""

    def __init__(self, cfg: Any, device: torch.device) -> None:
        from selftune.trainable.device import make_autocast, memory_format_for, resolve_amp
        from selftune.trainable.functional import loss_from_config
        from selftune.trainable.methods import create_method
        from selftune.trainable.model import build_model, build_optimizer

        self.cfg, self.device = cfg, device
        fmt = memory_format_for(cfg, device)
        amp = resolve_amp(cfg, device)
        torch.manual_seed(0)
        self.model = build_model(cfg, K).to(device, memory_format=fmt).train()
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.method = create_method(cfg, K)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        self.autocast = make_autocast(device, amp)
        self.loss_fn = loss_from_config(cfg, K, None).to(device)
        b, s = cfg.batch_size, cfg.crop_size
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(b, 3, s, s, generator=g).to(device, memory_format=fmt)
        self.masks = torch.randint(0, K, (b, s, s), generator=g).to(device)
        self.unlabeled = torch.randn(cfg.unlabeled_batch_size, 3, s, s, generator=g).to(device, memory_format=fmt)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.it = 0

    def loss(self) -> torch.Tensor:
        m, it = self.method, self.it
        m.before_step(self.model, it)
        with self.autocast():
            if m.uses_unlabeled(it):
                pseudo = m.pseudo_batch(self.teacher, self.unlabeled, it, torch.Generator().manual_seed(it))
                logits = self.model(torch.cat([self.images, pseudo.images]))
                n = len(self.images)
                loss = m.supervised_loss(logits[:n], self.masks, self.loss_fn)
                return loss + m.st_weight(it) * m.unlabeled_loss(logits[n:], pseudo, self.loss_fn)
            return m.supervised_loss(self.model(self.images), self.masks, self.loss_fn)

    def step(self) -> float:
        """One training step; its seconds (the device synchronised)."""
        self._sync()
        t0 = time.perf_counter()
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.update_teacher(self.teacher, self.model, self.it)
        self._sync()
        self.it += 1
        return time.perf_counter() - t0

    @torch.no_grad()
    def infer(self) -> float:
        """One eval forward of the labelled batch by the EMA model (the heads' mean); its seconds."""
        self._sync()
        t0 = time.perf_counter()
        with self.autocast():
            self.teacher(self.images)
        self._sync()
        return time.perf_counter() - t0

    def saved_bytes(self) -> int:
        """Bytes autograd keeps for one step's backward pass, each storage once."""
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(seen.values())

    def peak_bytes(self) -> int | None:
        """CUDA: what one step allocates at its peak above what was allocated before it (every variant's weights,
        EMA and optimizer state stay allocated meanwhile); None elsewhere."""
        if self.device.type != "cuda":
            return None
        self._sync()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step()
        return int(torch.cuda.max_memory_allocated(self.device) - before)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def cost(args: argparse.Namespace) -> int:
    from selftune.trainable.config import TrainConfig, demo_config

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    torch.set_num_threads(args.threads)
    steps = args.steps or (8 if args.quick else 20)
    rows = []
    for model_name, shape in models(device.type, args.quick).items():
        benches = {}
        for name, changes in VARIANTS.items():
            base = demo_config(**shape, warmup_iters=0, st_start_iter=0, st_rampup_iters=1, thresholds=[0.5],
                               device=device.type, patience=0, log_images=False)
            cfg = TrainConfig.from_dict({**base.to_dict(), **changes, "freeze_start": 0})
            benches[name] = Bench(cfg.for_classes(K), device)
        times: dict[str, list[float]] = {n: [] for n in benches}
        infer: dict[str, list[float]] = {n: [] for n in benches}
        for i in range(steps + 3):  # interleaved: a busy phase of the machine hits every variant
            for name, b in benches.items():
                t, e = b.step(), b.infer()
                if i >= 3:
                    times[name].append(t)
                    infer[name].append(e)
        ref = statistics.median(times["mean teacher, heads 1 (smp head)"])
        ref_infer = statistics.median(infer["mean teacher, heads 1 (smp head)"])
        for name, b in benches.items():
            step_s, infer_s = statistics.median(times[name]), statistics.median(infer[name])
            peak = b.peak_bytes()
            rows.append({
                "model": model_name, "variant": name, "device": args.device,
                "step_ms": round(step_s * 1e3, 2), "step_vs_one_head": round(step_s / ref, 3),
                "infer_ms": round(infer_s * 1e3, 2), "infer_vs_one_head": round(infer_s / ref_infer, 3),
                "saved_mb": round(b.saved_bytes() / 2**20, 1), "params_m": round(b.params / 1e6, 3),
                "peak_mb": round(peak / 2**20, 1) if peak is not None else "",
                "steps": steps, "threads": args.threads,
            })
            print(json.dumps(rows[-1]), flush=True)
        del benches
    _table(rows)
    write_rows(RESULTS / f"heads_cost_{device.type}{args.suffix}.csv", rows)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda"
                                                    else ""))
    return 0


def _table(rows: list[dict[str, Any]]) -> None:
    print("\n| model | variant | step ms | x one head | infer ms | x one head | saved for backward MB | params M |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['step_ms']} | {r['step_vs_one_head']} | {r['infer_ms']} | "
              f"{r['infer_vs_one_head']} | {r['saved_mb']} | {r['params_m']} |")


# ---------------------------------------------------------------------------- verdict


def _best(folders: list[Path], method: str) -> dict[str, Any]:
    """The config of the best trial of `method` by val mIoU in the sweep `folders` (its trial folder's train
    config: what it ran, the space's constants included)."""
    from selftune.sweepfolder import read_trials
    from selftune.trainable.config import TrainConfig

    best, value = None, -1.0
    for t in (t for exp in folders for t in read_trials(str(exp))):
        ran = TrainConfig.from_yaml(Path(t.path) / "train" / "config.yaml").method if t.results else None
        if ran != method:
            continue
        v = max((r.get("val_miou", float("nan")) for r in t.results), default=float("nan"))
        if v == v and v > value:
            best, value = t, v
    if best is None:
        raise SystemExit(f"{', '.join(map(str, folders))}: no {method} trial with a report")
    print(f"best {method} trial: {best.trial_id} (val mIoU {value:.4f}) {best.params}", flush=True)
    return TrainConfig.from_yaml(Path(best.path) / "train" / "config.yaml").to_dict()


def verdict(args: argparse.Namespace) -> int:
    import numpy as np
    import ray

    from selftune.data import read_classes
    from selftune.search import adapter, intervals
    from selftune.search.verdict import arm_summary, build_verdict, confirm_runs, score_images, train_run
    from selftune.trainable.config import TrainConfig

    exp = Path(args.sweep).resolve()
    import yaml

    data = str(yaml.safe_load((exp / "selftune_sweep.yaml").read_text())["data_root"])
    work = Path(args.work) / exp.name
    seeds = [2000 + i for i in range(args.seeds)]  # seeds no trial and no confirmation run of the sweep used
    names = list(read_classes(Path(data)).names)
    more = [Path(f).resolve() for f in args.also]  # e.g. a sweep of the diverse_head space
    dh, sup, mt = _best([exp, *more], "diverse_head"), _best([exp], "supervised"), _best([exp], "ema_self_training")
    base = TrainConfig.from_dict(sup)
    rows = []
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        # 1. diverse_head's best against the tuned supervised config, the verdict's way
        runs = confirm_runs(dh, sup, seeds, None, work / "diverse_head_vs_supervised", threads=1)
        results = adapter.run_tasks([(train_run, (r.config, data, r.out_dir)) for r in runs], cpus=1, gpus=0,
                                    desc="diverse_head vs supervised")
        cms = adapter.run_tasks([(score_images, (res["best_model"], data, "test", base.point_radius,
                                                 base.point_ring)) for res in results], cpus=1, gpus=0)
        v = build_verdict(
            st=arm_summary({"trial_id": "best", "config": dh, "metric": "val_miou", "value": float("nan"),
                            "iteration": 0}, "self-training", True),
            sup=arm_summary({"trial_id": "best", "config": sup, "metric": "val_miou", "value": float("nan"),
                             "iteration": 0}, "supervised", True),
            runs=runs, results=results, cms=list(cms), split="test", class_names=names, metric="val_miou",
            best_by_val=None, compute={}, stage_model=None)
        d = v["difference"]
        rows.append({"comparison": "diverse_head (best) - supervised (best)", "outcome": v["outcome"],
                     "mean": round(d["mean"] * 100, 2), "low": round(d["low"] * 100, 2),
                     "high": round(d["high"] * 100, 2), "per_seed": " ".join(f"{x * 100:+.2f}" for x in d["per_seed"]),
                     "a_mean": round(v["arms"]["self_training"]["mean"] * 100, 2),
                     "b_mean": round(v["arms"]["supervised"]["mean"] * 100, 2), "seeds": len(seeds),
                     "iterations": v["iterations"], "a_config": _knobs(dh), "b_config": _knobs(sup)})
        print(json.dumps(rows[-1]), flush=True)

        # 2. the mean teacher's best with several heads against the same config with one
        heads = int(mt.get("heads", 1)) if int(mt.get("heads", 1)) > 1 else 3  # its own, or 3
        arms = {"heads": {**mt, "heads": heads}, "one": {**mt, "heads": 1, "head_agreement": 0.0}}
        pairs = []
        for arm, cfg in arms.items():
            for s in seeds:
                c = TrainConfig.from_dict({**cfg, "seed": s, "patience": 0, "log_images": False, "report_test": False,
                                           "num_threads": 1}).to_dict()
                pairs.append((arm, s, c, str(work / "mean_teacher_heads" / f"{arm}_seed{s}")))
        results = adapter.run_tasks([(train_run, (c, data, out)) for _, _, c, out in pairs], cpus=1, gpus=0,
                                    desc="mean teacher: heads vs one")
        cms = adapter.run_tasks([(score_images, (res["best_model"], data, "test", base.point_radius,
                                                 base.point_ring)) for res in results], cpus=1, gpus=0)
        a = np.stack([cm for (arm, *_), cm in zip(pairs, cms, strict=True) if arm == "heads"])
        b = np.stack([cm for (arm, *_), cm in zip(pairs, cms, strict=True) if arm == "one"])
        diff = intervals.paired_difference(a, b)
        outcome = intervals.HELPS if diff.low > 0 else intervals.HURTS if diff.high < 0 else intervals.UNCLEAR
        rows.append({"comparison": f"mean teacher (best), heads {heads} - heads 1", "outcome": outcome,
                     "mean": round(diff.mean * 100, 2), "low": round(diff.low * 100, 2),
                     "high": round(diff.high * 100, 2), "per_seed": " ".join(f"{x * 100:+.2f}" for x in diff.per_seed),
                     "a_mean": round(float(np.mean([intervals.miou(x.sum(0)) for x in a])) * 100, 2),
                     "b_mean": round(float(np.mean([intervals.miou(x.sum(0)) for x in b])) * 100, 2),
                     "seeds": len(seeds), "iterations": mt["max_iters"], "a_config": _knobs(arms["heads"]),
                     "b_config": _knobs(arms["one"])})
        print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    write_rows(RESULTS / f"heads_verdict{args.suffix}.csv", rows)
    return 0


def _knobs(cfg: dict[str, Any]) -> str:
    """The searched knobs of a config, for the CSV."""
    keys = ("method", "lr", "warmup_iters", "dice_weight", "class_weighting", "scale_min", "scale_max", "st_weight",
            "heads", "head_agreement", "diverse_heads", "head_dropout", "freeze_fraction", "freeze_start",
            "vote_weight", "unlabeled_heads", "max_iters")
    return " ".join(f"{k}={cfg[k]:.4g}" if isinstance(cfg.get(k), float) else f"{k}={cfg.get(k)}" for k in keys
                    if k in cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["cost", "verdict"])
    p.add_argument("sweep", nargs="?", help="verdict: a finished sweep folder that searched diverse_head")
    p.add_argument("--quick", action="store_true", help="cost: the demo model only, 8 timed steps (2-CPU machine)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cost: where to time (default cpu)")
    p.add_argument("--steps", type=int, default=0, help="cost: timed steps per variant (default 8 quick, 20 full)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--also", action="append", default=[], help="verdict: another sweep folder whose diverse_head "
                   "trials compete for its best config (e.g. one of the diverse_head space)")
    p.add_argument("--seeds", type=int, default=3, help="verdict: paired seeds per comparison (default 3)")
    p.add_argument("--num-cpus", type=int, default=2, help="verdict: runs at a time (default 2)")
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "heads"), help="verdict: where the runs go")
    p.add_argument("--suffix", default="", help="appended to the CSV's name")
    args = p.parse_args(argv)
    if args.what == "verdict" and not args.sweep:
        p.error("verdict needs the sweep folder")
    return cost(args) if args.what == "cost" else verdict(args)


if __name__ == "__main__":
    raise SystemExit(main())
