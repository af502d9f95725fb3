"""The sweep driver: check everything before any trial starts, start or attach Ray, run, export.

Python API::

    from selftune.search import SweepConfig, run_sweep
    summary = run_sweep(SweepConfig(data="/data/salak", space="thresholds", num_samples=64))
"""

from __future__ import annotations

import math
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selftune import __version__
from selftune.errors import SelftuneError
from selftune.fileio import write_atomic
from selftune.search.study import close_open_trials
from selftune.search.sweepfile import SweepConfig
from selftune.spaces import SpaceContext, check_space
from selftune.sweepfolder import (
    BEST_CONFIG_FILE,
    JOURNAL_FILE,
    METRIC,
    REMOTE_SCHEMES,
    SWEEP_FILE,
    experiment_path,
    read_sweep_meta,
    read_trials,
)


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: everything resolved, nothing started."""

    sweep: SweepConfig
    base: dict[str, Any]  # the resolved base TrainConfig, max_iters = max_t
    data_root: str
    num_classes: int
    class_names: list[str]
    fingerprint: str
    ctx: SpaceContext
    max_t: int
    grace_period: int
    storage: str  # absolute local path or URI
    experiment_dir: str
    optuna_storage: str

    def meta(self) -> dict[str, Any]:
        return {
            "selftune_version": __version__,
            "sweep": self.sweep.to_dict(),
            "base": self.base,
            "data_root": self.data_root,
            "data_fingerprint": self.fingerprint,
            "class_names": self.class_names,
            "max_t": self.max_t,
            "grace_period": self.grace_period,
            "optuna_storage": self.optuna_storage,
            "metric": METRIC,
            "mode": "max",
        }


def plan_sweep(sweep: SweepConfig, *, resume: bool = False) -> SweepPlan:
    """Check the sweep file, data, base config, space and storage. Raises SelftuneError naming the culprit."""
    from selftune.data import dataset_fingerprint, validate_dataset
    from selftune.data.demo import ensure_demo
    from selftune.trainable.config import CHECKPOINT_KEYS
    from selftune.trainable.model import weights_from

    base = sweep.base_train_config()
    max_t = sweep.max_t or base.max_iters
    base = base.replace(max_iters=max_t).with_absolute_paths()  # trials run in their own folders
    data_root = str(Path(sweep.data).expanduser().resolve()) if sweep.data else str(ensure_demo())
    if sweep.data and not Path(data_root).is_dir():
        raise SelftuneError(f"data folder not found: {sweep.data}")

    ctx0 = SpaceContext(num_classes=len(base.thresholds), max_iters=max_t, eval_every=base.eval_every)
    report0 = check_space(sweep.space, base, ctx0)  # name and ranges first: cheap and most likely wrong
    method = report0.constants.get("method", base.method)
    summary = validate_dataset(Path(data_root), need_unlabeled=method != "supervised")
    k = len(summary.class_names)
    base.check_num_classes(k)
    for key in CHECKPOINT_KEYS:  # the checks each trial's loop makes, once, before any trial starts
        weights_from(key, getattr(base, key), summary.class_names)
    ctx = SpaceContext(num_classes=k, max_iters=max_t, eval_every=base.eval_every)
    report = check_space(sweep.space, base, ctx) if k != ctx0.num_classes else report0

    if sweep.grace_period is not None:
        grace = sweep.grace_period
    else:  # ASHA must not cut a trial before its self-training has begun
        late = report.upper("warmup_iters", base)
        if method != "supervised":
            late = max(late, report.upper("st_start_iter", base) + report.upper("st_rampup_iters", base))
        grace = int(math.ceil(max(late, base.eval_every) / base.eval_every) * base.eval_every)
    grace = min(grace, max_t)

    storage = sweep.storage if sweep.storage.startswith(REMOTE_SCHEMES) else str(Path(sweep.storage).expanduser().resolve())
    if not storage.startswith(REMOTE_SCHEMES):
        _check_writable(Path(storage))
    experiment_dir = experiment_path(storage, sweep.name)
    if not resume and not storage.startswith(REMOTE_SCHEMES) and Path(experiment_dir).exists() and any(Path(experiment_dir).iterdir()):
        raise SelftuneError(
            f"a sweep named {sweep.name!r} already exists at {experiment_dir}; continue it with "
            f"`selftune sweep --resume {experiment_dir}` or choose another name"
        )
    if sweep.optuna_storage:
        optuna_storage = sweep.optuna_storage
    elif storage.startswith(REMOTE_SCHEMES):  # a journal file needs a local (or NFS) path
        optuna_storage = "journal:" + str(Path.cwd() / f"optuna_{sweep.name}.log")
    else:
        optuna_storage = "journal:" + str(Path(experiment_dir) / JOURNAL_FILE)
    return SweepPlan(
        sweep=sweep, base=base.to_dict(), data_root=data_root, num_classes=k, class_names=list(summary.class_names),
        fingerprint=dataset_fingerprint(Path(data_root)), ctx=ctx, max_t=max_t, grace_period=grace,
        storage=storage, experiment_dir=experiment_dir, optuna_storage=optuna_storage,
    )


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".selftune-write-check-"):
            pass
    except OSError as exc:
        raise SelftuneError(f"storage path {path} is not writable ({exc.strerror or exc})") from None


def _check_address(address: str) -> None:
    """Fail in seconds, not minutes, when a given Ray address cannot be reached."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise SelftuneError(f"cannot reach the Ray cluster at --address {address} ({exc})") from None


def start_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        _check_address(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise SelftuneError(f"cannot attach to the Ray cluster at --address {address}: {exc}") from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def check_resources(sweep: SweepConfig) -> None:
    """Fail fast when no node could ever run a trial, instead of leaving trials pending forever."""
    import ray

    deadline = time.monotonic() + sweep.gpu_wait_s
    requested = False
    while True:
        total = ray.cluster_resources()
        gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
        if sweep.gpus_per_trial <= gpus and sweep.cpus_per_trial <= cpus:
            return
        if time.monotonic() >= deadline:
            break
        if not requested:  # on an autoscaling cluster, ask for one trial's worth so GPU nodes start
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[{"CPU": sweep.cpus_per_trial, "GPU": sweep.gpus_per_trial}])
            requested = True
        time.sleep(5)
    if sweep.gpus_per_trial > gpus:
        raise SelftuneError(
            f"gpus_per_trial is {sweep.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs; "
            "set gpus_per_trial: 0 to run on CPU, or give gpu_wait_s on an autoscaling cluster"
        )
    raise SelftuneError(f"cpus_per_trial is {sweep.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")


def _tuner_spec(plan: SweepPlan) -> Any:
    from selftune.search.adapter import TunerSpec

    s = plan.sweep
    return TunerSpec(
        name=s.name, storage=plan.storage, base=plan.base, data_root=plan.data_root, space=s.space, ctx=plan.ctx,
        searcher=s.searcher, seed=s.seed, scheduler=s.scheduler, max_t=plan.max_t, grace_period=plan.grace_period,
        reduction_factor=s.reduction_factor, num_samples=s.num_samples, time_budget_s=s.time_budget_s,
        budget_iters=s.budget_iters,
        max_concurrent=s.max_concurrent, cpus_per_trial=s.cpus_per_trial, gpus_per_trial=s.gpus_per_trial,
        optuna_storage=plan.optuna_storage, keep_checkpoints=s.keep_checkpoints, max_failures=s.max_failures,
        reuse_actors=s.reuse_actors, wandb_project=s.wandb_project, mlflow_uri=s.mlflow_uri, verbose=s.verbose,
    )


@dataclass
class SweepSummary:
    experiment_dir: str
    trials: int
    best: dict[str, Any] | None  # the exported best entry (see selftune.search.export)
    best_config_path: str | None


def run_sweep(sweep: SweepConfig) -> SweepSummary:
    """Check, then run a new sweep to the end; writes best_config.yaml into the experiment folder."""
    plan = plan_sweep(sweep)
    start_ray(sweep.address, sweep.num_cpus)
    check_resources(sweep)
    from selftune.search import adapter

    if not plan.experiment_dir.startswith(REMOTE_SCHEMES):
        write_atomic(Path(plan.experiment_dir) / SWEEP_FILE, yaml.safe_dump(plan.meta(), sort_keys=False))
    else:
        _write_remote(plan.experiment_dir + "/" + SWEEP_FILE, yaml.safe_dump(plan.meta(), sort_keys=False))
    adapter.fit(adapter.build_tuner(_tuner_spec(plan)))
    close_open_trials(plan.optuna_storage, sweep.name)
    return _finish(plan.experiment_dir)


def resume_sweep(path: str, *, restart_errored: bool = False, address: str | None = None,
                 num_cpus: int | None = None) -> SweepSummary:
    """Continue a sweep whose driver died, from its folder."""
    path = path if path.startswith(REMOTE_SCHEMES) else str(Path(path).expanduser().resolve())
    meta = read_sweep_meta(path)
    sweep = SweepConfig.from_dict(meta["sweep"])
    if address is not None:
        sweep = sweep.replace(address=address)
    storage, _, name = path.rstrip("/").rpartition("/")
    sweep = sweep.replace(storage=storage, name=name, data=meta["data_root"])
    plan = plan_sweep(sweep, resume=True)
    start_ray(sweep.address, num_cpus if num_cpus is not None else sweep.num_cpus)
    check_resources(sweep)
    from selftune.search import adapter

    if not adapter.can_restore(path):
        raise SelftuneError(f"{path} has no Ray experiment state to resume from")
    adapter.fit(adapter.restore_tuner(path, _tuner_spec(plan), restart_errored=restart_errored))
    close_open_trials(plan.optuna_storage, sweep.name)
    return _finish(path)


def _write_remote(uri: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _finish(experiment_dir: str) -> SweepSummary:
    from selftune.search.export import export_best

    trials = read_trials(experiment_dir)
    try:
        entries, text = export_best(experiment_dir, top_k=1)
    except SelftuneError as exc:
        print(f"selftune: no best config: {exc}", file=sys.stderr)
        return SweepSummary(experiment_dir, len(trials), None, None)
    out = experiment_dir + "/" + BEST_CONFIG_FILE
    if experiment_dir.startswith(REMOTE_SCHEMES):
        _write_remote(out, text)
    else:
        write_atomic(Path(out), text)
    return SweepSummary(experiment_dir, len(trials), entries[0], out)
