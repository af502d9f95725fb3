"""What several test modules share, so that no test module imports another: the tiny data and configs, a reporter
that keeps what it is given, metrics compared bit for bit, the crash-and-resume harness and train-once runs for
module fixtures. `conftest.py` builds its fixtures from these."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from selftune.data.demo import DemoSpec
from selftune.data.particles import ParticleSpec

TINY_SPEC = DemoSpec(size=32, n_train=6, n_val=4, n_test=4, n_unlabeled=12, seed=0)
TINY_PARTICLES = ParticleSpec(size=32, n_train=3, n_val=2, n_test=2, n_unlabeled=8)

# A 32 px Unet with the smallest timm encoder: seconds per run on one CPU thread.
TINY_CONFIG: dict[str, Any] = dict(
    arch="Unet", encoder="tu-mobilenetv3_small_050", crop_size=32, batch_size=4, unlabeled_batch_size=4,
    train_eval_size=4, max_iters=40, eval_every=10, warmup_iters=2, st_start_iter=10, st_rampup_iters=10,
    patience=0, ema_decay=0.9, num_threads=1,
)

# Twelve steps of mean-teacher self-training from step 2 with every random stream in use: the loop's tests.
TINY_RUN: dict[str, Any] = {
    **TINY_CONFIG, "max_iters": 12, "eval_every": 4, "st_start_iter": 2, "st_rampup_iters": 2,
    "thresholds": [0.0] * 7, "strong_aug": True, "lr": 1e-3,
    "distribution_alignment": True,  # its running mean is method state: the exact-resume test covers it
    "fp_weight": 1.0, "hue_jitter": 0.1, "grayscale_prob": 0.5, "blur_prob": 0.5,  # they draw from the step generator
}

# The tiny config as `selftune train --set` items.
TINY_SETS = [
    "encoder=tu-mobilenetv3_small_050", "arch=Unet", "crop_size=32", "batch_size=4", "unlabeled_batch_size=4",
    "train_eval_size=4", "warmup_iters=2", "st_start_iter=2", "st_rampup_iters=2", "eval_every=3",
    "thresholds=[0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]", "log_images=false", "num_threads=1",
]


def tiny_config(**changes: Any) -> dict[str, Any]:
    """The tiny train config as plain data (a sweep's `base`, or `TrainConfig.from_dict`), with `changes`."""
    return {**TINY_CONFIG, **changes}


def tiny(**changes: Any) -> Any:
    """`TINY_RUN` with `changes`, as a TrainConfig."""
    from selftune.trainable.config import TrainConfig

    return TrainConfig.from_dict({**TINY_RUN, **changes})


def sets(*extra: str) -> list[str]:
    """`TINY_SETS` and `extra` as `--set` arguments."""
    out: list[str] = []
    for item in (*TINY_SETS, *extra):
        out += ["--set", item]
    return out


class Reports(list):
    """A reporter that keeps what it is given: (metrics, checkpoint folder) per report."""

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.append((dict(metrics), checkpoint_dir))


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl, one dict per line."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (IoU of a class absent from truth and prediction), ignoring the
    wall-clock timings (step_seconds, eval_seconds)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a if not k.endswith("_seconds"))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def same_weights(run_a: Path, run_b: Path, parts: tuple[str, ...] = ("ema", "model")) -> bool:
    """Do the two runs' last checkpoints hold the same tensors in `parts` (of state.pt), bit for bit?"""
    a = torch.load(run_a / "checkpoint" / "state.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint" / "state.pt", weights_only=True)
    return all(a[p].keys() == b[p].keys() and all(torch.equal(a[p][k], b[p][k]) for k in a[p]) for p in parts)


def train_once(cfg: Any, data_root: Path, run: Path) -> tuple[Path, Reports]:
    """One uninterrupted run of `cfg` into `run` (a module fixture's), with its reports; it must complete."""
    from selftune.trainable.loop import train

    reports = Reports()
    result = train(cfg, data_root, run, reporter=reports, progress=False)
    assert result.status == "completed" and result.iterations == cfg.max_iters, result.message
    return run, reports


class Crash(Exception):
    """Raised by `crash_at`'s reporter: the process dies right after an evaluation's checkpoint."""


def crash_at(iteration: int) -> Any:
    """A reporter that raises Crash at the report of `iteration` (its checkpoint is written, nothing after it)."""

    def reporter(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if metrics["iteration"] == iteration:
            raise Crash

    return reporter


def crash_and_resume(cfg: Any, data_root: Path, run: Path, *, at: int, reporter: Any = None,
                     between: Any = None) -> Any:
    """Train `cfg` into `run` and crash right after the evaluation at iteration `at`; call `between(run)` if given
    (e.g. to add what a crashed attempt leaves behind); then resume from the run's checkpoint to the end, reporting
    to `reporter`. Returns the resumed attempt's TrainResult."""
    from selftune.trainable.loop import train

    with pytest.raises(Crash):
        train(cfg, data_root, run, reporter=crash_at(at), progress=False)
    if between is not None:
        between(run)
    return train(cfg, data_root, run, resume_from=run / "checkpoint", reporter=reporter, progress=False)


# ---------------------------------------------------------------------- a sweep folder written by hand (analysis tests)

SWEEP_CLASSES = ["background", "road"]


def make_sweep(root: Path, name: str, trials: list[dict[str, Any]], *, method: str = "ema_self_training",
               verdict: dict[str, Any] | None = None, metric: str | None = None) -> Path:
    """A sweep folder: each trial is {id, params, curve: [(iteration, val_miou)], status (the last report's),
    ray: Ray's status}."""
    path = root / name
    path.mkdir(parents=True)
    meta = {"sweep": {"name": name, "space": "hand", "scheduler": "asha", "cpus_per_trial": 1.0},
            "base": {"method": method}, "class_names": SWEEP_CLASSES, "max_t": 40, "grace_period": 10, "data_root": "/d"}
    if metric is not None:
        meta["metric"] = metric  # the sweep's own metric, as selftune_sweep.yaml records it
    (path / "selftune_sweep.yaml").write_text(yaml.safe_dump(meta))
    state = []
    for n, t in enumerate(trials, 1):
        folder = f"selftune_trial_{t['id']}_{n}_x"
        (path / folder).mkdir()
        (path / folder / "params.json").write_text(json.dumps(t["params"]))
        lines = []
        for k, (it, v) in enumerate(t["curve"]):
            last = k == len(t["curve"]) - 1
            lines.append(json.dumps({"trial_id": t["id"], "iteration": it, "training_iteration": k + 1,
                                     "val_miou": v, "val_loss": 1 - v, "val_iou/background": v + 0.1,
                                     "val_iou/road": v - 0.1, "timestamp": 1_700_000_000 + 60 * n + k,
                                     "time_total_s": 10.0 * (k + 1), "time_this_iter_s": 10.0,
                                     "status": t["status"] if last else "running"}))
        (path / folder / "result.json").write_text("\n".join(lines) + "\n")
        state.append([json.dumps({"trial_id": t["id"], "status": t.get("ray", "TERMINATED"),
                                  "relative_logdir": folder, "experiment_tag": f"{n}_x"}), {}])
    (path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    if verdict is not None:
        (path / "verdict.json").write_text(json.dumps(verdict))
    return path


def sweep_trials(n: int, lift: float = 0.0) -> list[dict[str, Any]]:
    """n trials, every third cut by ASHA at its rung at iteration 30; values rise with the trial's lr."""
    out = []
    for i in range(n):
        lr = 0.001 * (i + 1)
        top = 0.2 + 0.05 * i + lift
        cut = i % 3 == 2
        curve = [(10, top / 2), (20, top * 0.8)] + ([(30, top * 0.85)] if cut else [(30, top * 0.9), (40, top)])
        out.append({"id": f"t{i}", "params": {"lr": lr, "st_weight": 0.5 + i / 10, "method": "rounds" if i % 2
                                              else "ema_self_training"},
                    "curve": curve, "status": "running" if cut else "completed"})
    return out
