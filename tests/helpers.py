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

# A 32 px Unet with the smallest timm encoder and the demo's light decoder (docs/benchmarks.md, "The demo's
# decoder"): seconds per run on one CPU thread.
TINY_DECODER = [64, 32, 16, 16, 16]
TINY_CONFIG: dict[str, Any] = dict(
    arch="Unet", encoder="tu-mobilenetv3_small_050", decoder_channels=TINY_DECODER, crop_size=32, batch_size=4, unlabeled_batch_size=4,
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
    "encoder=tu-mobilenetv3_small_050", "arch=Unet", "decoder_channels=[64, 32, 16, 16, 16]", "crop_size=32", "batch_size=4", "unlabeled_batch_size=4",
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


# ---------------------------------------------------------------------- an Optuna-backed sweep folder (importance tests)

METHOD_BASE = {"supervised": 0.30, "ema_self_training": 0.40, "rounds": 0.35}
SHARED = {"method", "lr", "warmup_iters"}


def methods_space(trial: Any) -> None:
    """Like the `methods` space: the method, the knobs every method has, then each method's own."""
    method = trial.suggest_categorical("method", list(METHOD_BASE))
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("warmup_iters", 0, 10)
    if method == "supervised":
        trial.suggest_float("dice_weight", 0.0, 1.0)
        return
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)
    if trial.suggest_categorical("strong_aug", [False, True]):
        trial.suggest_float("cutmix_prob", 0.0, 1.0)
    if method == "rounds":
        trial.suggest_int("rounds", 2, 3)
    else:
        trial.suggest_float("ema_decay", 0.99, 0.9995)


def flat_space(trial: Any) -> None:
    """Like the `thresholds` space: no method, every knob in every trial."""
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_float("threshold_base", 0.3, 0.95)
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)


def objective(params: dict[str, Any]) -> float:
    """Only lr (best at 1e-3, on a log scale) and the method matter."""
    base = METHOD_BASE.get(params.get("method", "ema_self_training"), 0.4)
    return base - 0.12 * (math.log10(params["lr"]) + 3.0) ** 2


def write_sweep(root: Path, name: str, space: Any, n: int = 72, seed: int = 0, cut_every: int = 4) -> Path:
    """A finished sweep folder of `n` random trials of `space`; every `cut_every`-th one stopped by ASHA at its
    rung (iteration 20, told to Optuna as PRUNED), the others completed at iteration 40."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = root / name
    path.mkdir(parents=True)
    meta = {"sweep": {"name": name, "space": space.__name__, "scheduler": "asha", "reduction_factor": 2.0,
                      "cpus_per_trial": 1.0},
            "base": {"method": "ema_self_training", "st_start_iter": 10}, "class_names": ["background", "road"],
            "max_t": 40, "grace_period": 10, "data_root": "/d", "metric": "val_miou"}
    (path / "selftune_sweep.yaml").write_text(yaml.safe_dump(meta))
    storage = JournalStorage(JournalFileBackend(str(path / "optuna_journal.log")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    state = []
    for i in range(n):
        trial = study.ask()
        space(trial)
        params = dict(trial.params)
        top = objective(params)
        cut = i % cut_every == cut_every - 1
        curve = [(10, top * 0.6), (20, top * 0.9)] + ([] if cut else [(30, top * 0.97), (40, top)])
        supervised = params.get("method") == "supervised"
        tid = f"{i:05d}abc"
        folder = f"trial_{i + 1:03d}_{tid}"
        (path / folder).mkdir()
        (path / folder / "params.json").write_text(json.dumps(params))
        lines = []
        for k, (it, v) in enumerate(curve):
            lines.append(json.dumps({
                "trial_id": tid, "iteration": it, "training_iteration": k + 1, "val_miou": v, "val_loss": 1 - v,
                "val_iou/background": v + 0.1, "val_iou/road": v - 0.1, "timestamp": 1_700_000_000 + 60 * i + k,
                "time_total_s": 10.0 * (k + 1), "time_this_iter_s": 10.0,
                "st_ratio": 0.0 if supervised else min(1.0, 0.1 * (k + 1)),
                "st_ratio/background": 0.0 if supervised else 0.12 * (k + 1),
                "st_ratio/road": 0.0 if supervised else 0.05 * (k + 1),
                "status": ("running" if cut else "completed") if k == len(curve) - 1 else "running"}))
        (path / folder / "result.json").write_text("\n".join(lines) + "\n")
        state.append([json.dumps({"trial_id": tid, "status": "TERMINATED", "relative_logdir": folder,
                                  "experiment_tag": f"{i + 1}_x", "evaluated_params": params}), {}])
        if cut:
            trial.report(curve[-1][1], curve[-1][0])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, top)
    (path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    return path


def kill_sweep_when(script: str, ready: Any, *, cwd: Path, what: str, env: dict[str, str] | None = None,
                    timeout_s: float = 240, poll_s: float = 0.1) -> None:
    """Run `script` (a sweep) in its own session with `python -c`, and SIGKILL it and Ray's processes the moment
    `ready()` is true; fails naming `what` when the sweep ends first or never gets there within `timeout_s`."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    driver = subprocess.Popen([sys.executable, "-c", script], cwd=cwd, start_new_session=True, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if ready():
                break
            assert driver.poll() is None, f"the sweep ended before it could be killed: {driver.stderr.read()[-2000:]}"
            time.sleep(poll_s)
        else:
            raise AssertionError(f"the sweep never reached {what}")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # Ray's own processes from that session
        if driver.stderr is not None:
            driver.stderr.close()
