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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selftune import __version__
from selftune.errors import SelftuneError
from selftune.fileio import LOCK_FILE, folder_lock, write_atomic
from selftune.search.study import close_open_trials
from selftune.search.sweepfile import SweepConfig
from selftune.search.verdict import self_training_methods
from selftune.spaces import SpaceContext, check_space
from selftune.sweepfolder import (
    BEST_CONFIG_FILE,
    CONFIRM_DIR,
    CONTROL_SEARCH_DIR,
    JOURNAL_FILE,
    REMOTE_SCHEMES,
    STAGE_DIR,
    SWEEP_FILE,
    VERDICT_FILE,
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
    stage_model: str | None = None  # the shared stage's best model, which every rounds trial starts from
    stage_iters: int = 0  # its iterations (0 for a given checkpoint), counted once toward budget_iters
    methods: tuple[str, ...] = ()  # the methods the space's trials can run, in the space's order

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
            "metric": self.sweep.metric,  # what the sweep maximised (sweep key metric; val_miou by default)
            "mode": "max",
            "shared_stage_model": self.stage_model,
            "shared_stage_iters": self.stage_iters,
        }


def plan_sweep(sweep: SweepConfig, *, resume: bool = False, base_dict: dict[str, Any] | None = None) -> SweepPlan:
    """Check the sweep file, data, base config, space and storage. Raises SelftuneError naming the culprit.

    `base_dict`: the resolved base config a resumed sweep started with (its selftune_sweep.yaml), used as is
    instead of being rebuilt from the sweep file, so a resume runs exactly what the sweep ran.
    """
    from selftune.data import dataset_fingerprint, validate_dataset
    from selftune.data.demo import ensure_demo
    from selftune.trainable.config import CHECKPOINT_KEYS, TrainConfig
    from selftune.trainable.model import weights_from

    base = TrainConfig.from_dict(base_dict) if base_dict is not None else sweep.base_train_config()
    max_t = sweep.max_t or base.max_iters
    base = base.replace(max_iters=max_t).with_absolute_paths()  # trials run in their own folders
    data_root = str(Path(sweep.data).expanduser().resolve()) if sweep.data else str(ensure_demo())
    if sweep.data and not Path(data_root).is_dir():
        raise SelftuneError(f"data folder not found: {sweep.data}")

    ctx0 = SpaceContext(num_classes=len(base.thresholds), max_iters=max_t, eval_every=base.eval_every,
                        arch=base.arch)
    report0 = check_space(sweep.space, base, ctx0)  # name and ranges first: cheap and most likely wrong
    methods = _methods_of(report0, base)
    self_training = bool(set(methods) & set(self_training_methods()))
    summary = validate_dataset(Path(data_root), need_unlabeled=self_training)
    k = len(summary.class_names)
    base = base.for_classes(k)
    sweep.check_metric(summary.class_names, base.binary or report0.constants.get("binary") is True)
    base = base.replace(select_metric=sweep.metric)  # the trials keep the checkpoint the sweep ranks them by
    for key in CHECKPOINT_KEYS:  # the checks each trial's loop makes, once, before any trial starts
        weights_from(key, getattr(base, key), summary.class_names)
    from selftune.trainable.model import check_encoder_weights

    check_encoder_weights(base.encoder, base.encoder_weights)
    ctx = SpaceContext(num_classes=k, max_iters=max_t, eval_every=base.eval_every, arch=base.arch)
    report = check_space(sweep.space, base, ctx) if k != ctx0.num_classes else report0
    from selftune.data import check_crop  # each trial's loop checks the same, with its own values (issue 35)

    low = {n: getattr(report.params.get(n), "low", None) for n in ("scale_min", "scale_max")}
    check_crop(int(report.upper("crop_size", base)), float(low["scale_min"] or report.constants.get("scale_min",
               base.scale_min)), float(low["scale_max"] or report.constants.get("scale_max", base.scale_max)),
               summary.image_sizes)

    if sweep.grace_period is not None:
        grace = sweep.grace_period
    else:  # ASHA must not cut a trial before its self-training has begun
        late = report.upper("warmup_iters", base)
        if self_training:
            late = max(late, report.upper("st_start_iter", base) + report.upper("st_rampup_iters", base))
        grace = int(math.ceil(max(late, base.eval_every) / base.eval_every) * base.eval_every)
    grace = min(grace, max_t)

    storage = sweep.storage if sweep.storage.startswith(REMOTE_SCHEMES) else str(Path(sweep.storage).expanduser().resolve())
    if not storage.startswith(REMOTE_SCHEMES):
        _check_writable(Path(storage))
    experiment_dir = experiment_path(storage, sweep.name)
    if not resume:
        _refuse_existing(experiment_dir, sweep.name)
    if sweep.optuna_storage:
        optuna_storage = sweep.optuna_storage
    elif storage.startswith(REMOTE_SCHEMES):  # a journal file needs a local (or NFS) path
        optuna_storage = "journal:" + str(Path.cwd() / f"optuna_{sweep.name}.log")
    else:
        optuna_storage = "journal:" + str(Path(experiment_dir) / JOURNAL_FILE)
    _check_fair_share(sweep, methods)
    stage_model, stage_iters = _check_shared_stage(sweep, base, methods, summary.class_names, experiment_dir)
    _check_control(sweep, methods, experiment_dir, max_t, stage_iters)
    return SweepPlan(
        sweep=sweep, base=base.to_dict(), data_root=data_root, num_classes=k, class_names=list(summary.class_names),
        fingerprint=dataset_fingerprint(Path(data_root)), ctx=ctx, max_t=max_t, grace_period=grace,
        storage=storage, experiment_dir=experiment_dir, optuna_storage=optuna_storage, stage_model=stage_model,
        stage_iters=stage_iters, methods=tuple(methods),
    )


def _refuse_existing(experiment_dir: str, name: str) -> None:
    """A new sweep needs an unused sweep folder (its lock file alone, left by a launch that failed, is unused)."""
    if experiment_dir.startswith(REMOTE_SCHEMES) or not Path(experiment_dir).is_dir():
        return
    if any(p.name != LOCK_FILE for p in Path(experiment_dir).iterdir()):
        raise SelftuneError(
            f"a sweep named {name!r} already exists at {experiment_dir}; continue it with "
            f"`selftune sweep --resume {experiment_dir}` or choose another name"
        )


def _sweep_lock(plan: SweepPlan) -> Any:
    """The sweep folder held against a second driver for this one's life (`fileio.folder_lock`; none on s3:// or
    gs://, which cannot be locked)."""
    import contextlib

    if plan.experiment_dir.startswith(REMOTE_SCHEMES):
        return contextlib.nullcontext()
    return folder_lock(plan.experiment_dir, "sweep folder",
                       f"choose another --name (`selftune analyze {plan.experiment_dir}` reads it while it runs)")


@contextmanager
def _launch(plan: SweepPlan) -> Iterator[None]:
    """A new sweep's start: what fails before any work is done (no stage, no trial folder yet: a Ray error, a
    bad value found late, Ctrl-C) removes the files this launch wrote, so the same command can run again."""
    try:
        yield
    except BaseException:
        folder = Path(plan.experiment_dir)
        if not plan.experiment_dir.startswith(REMOTE_SCHEMES) and folder.is_dir() and \
                not any(p.is_dir() for p in folder.iterdir()):
            for p in folder.iterdir():  # the folder was unused when the launch began: all of this is its own
                if p.name != LOCK_FILE:
                    p.unlink(missing_ok=True)
        raise


def _check_same_data(plan: SweepPlan, meta: dict[str, Any], path: str) -> None:
    """A resumed sweep runs on the data it started on: the fingerprint its record holds, compared by name."""
    from selftune.data import fingerprint_matches

    recorded = meta.get("data_fingerprint")
    if recorded and not fingerprint_matches(Path(plan.data_root), str(recorded)):
        raise SelftuneError(
            f"the dataset at {plan.data_root} changed since sweep {plan.sweep.name!r} started: fingerprint "
            f"{plan.fingerprint} now, {recorded} in {path}/{SWEEP_FILE} (classes.csv, the labelled files, their masks "
            "or points, or the unlabelled pool differ). Its trials would be compared with trials that saw the old "
            "data: put that data back to resume it, or start a new sweep (another --name) on the new data")


def _methods_of(report: Any, base: Any) -> list[str]:
    """The methods a space's trials can run: the choices of its `method` parameter, its constant, or the base's."""
    info = report.params.get("method")
    if info is not None and info.choices:
        return [str(c) for c in info.choices]
    return [str(report.constants.get("method", base.method))]


def _check_control(sweep: SweepConfig, methods: list[str], experiment_dir: str, max_t: int, stage_iters: int
                   ) -> None:
    """The verdict's keys against what the space can serve; fails naming the key and value."""
    if sweep.control == "none":
        return
    if not set(methods) & set(self_training_methods()):
        raise SelftuneError(f"control {sweep.control!r}: space {sweep.space!r} has no self-training method (its "
                            f"methods: {', '.join(methods)}), so there is nothing to compare with a control; set "
                            "control: none (--control none)")
    if experiment_dir.startswith(REMOTE_SCHEMES):
        raise SelftuneError(f"control {sweep.control!r}: the verdict's confirmation runs train into the sweep folder, "
                            f"which must be a local or shared (NFS) path, not {experiment_dir}; or set control: none")
    if sweep.budget_iters is not None:
        reserve = 2 * sweep.max_seeds * max_t + stage_iters
        if sweep.budget_iters <= reserve:
            raise SelftuneError(
                f"budget_iters {sweep.budget_iters} leaves nothing for the trials: the shared stage ({stage_iters}) and "
                f"the verdict's confirmation runs (2 arms x confirm_max_seeds {sweep.max_seeds} x max_t {max_t}) "
                f"take {reserve}; raise budget_iters, lower confirm_max_seeds, or set control: none")
    if sweep.control_trials is not None and (sweep.control != "tuned" or "supervised" in methods):
        why = (f"control is {sweep.control!r}" if sweep.control != "tuned" else
               f"space {sweep.space!r} has supervised trials, and the best of them is the control")
        raise SelftuneError(f"control_trials {sweep.control_trials}: only a tuned control search uses it, and {why}; "
                            "drop control_trials")


def _check_shared_stage(sweep: SweepConfig, base: Any, methods: list[str], class_names: Any, experiment_dir: str
                        ) -> tuple[str | None, int]:
    """(the shared stage's model file, its iterations) or (None, 0); fails naming the key and value."""
    from selftune.trainable.model import weights_from

    stage = sweep.shared_stage
    if stage is None:
        return None, 0
    from selftune.trainable.methods import get_method

    if not any(get_method(m).uses_shared_stage for m in methods):
        raise SelftuneError(
            f"shared_stage {stage!r}: no trial of space {sweep.space!r} can start from it (its methods: "
            f"{', '.join(sorted(methods))}); only method rounds does: use space 'methods', or drop shared_stage")
    if "checkpoint" in stage:
        path = str(Path(stage["checkpoint"]).expanduser().resolve())
        loaded = weights_from("shared_stage checkpoint", path, tuple(class_names))
        assert loaded is not None
        if (loaded.config.arch, loaded.config.encoder) != (base.arch, base.encoder):
            raise SelftuneError(
                f"shared_stage checkpoint {stage['checkpoint']}: it holds a {loaded.config.arch}/{loaded.config.encoder} "
                f"model, the sweep's base config trains {base.arch}/{base.encoder}; rounds trials start from it")
        return loaded.info["file"], 0
    if experiment_dir.startswith(REMOTE_SCHEMES):
        raise SelftuneError("shared_stage max_iters trains the stage into the sweep folder, which must be a local or "
                            "shared (NFS) path; train it once with `selftune train` and give shared_stage checkpoint")
    stage_config(base, int(stage["max_iters"]))  # valid for this base
    return str(Path(experiment_dir) / STAGE_DIR / "best_model_ema.pt"), int(stage["max_iters"])


def stage_config(base: Any, iterations: int) -> Any:
    """The shared first stage: the base config's model, supervised, for `iterations` steps."""
    return base.as_supervised(max_iters=iterations, log_images=False)


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


def start_ray(address: str | None, num_cpus: int | None, *, nice_trials: bool = False) -> None:
    """Attach to `address`, or start Ray in this process; its trial workers run at normal priority unless
    `nice_trials` (Ray starts workers at nice 15, and beside any other process on the machine they starve)."""
    import os

    import ray

    if ray.is_initialized():
        return
    if not address and not nice_trials:
        os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112  (Ray's own name, read by the raylet it starts)
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


def _tuner_spec(plan: SweepPlan, started: float | None = None) -> Any:
    from selftune.search.adapter import TunerSpec, startup_trials

    s = plan.sweep
    verdict = s.control != "none" and bool(set(plan.methods) & set(self_training_methods()))
    confirm_runs = 2 * s.max_seeds if verdict else 0
    budget_iters = s.budget_iters
    if budget_iters is not None and verdict and s.control == "tuned" and "supervised" not in plan.methods:
        # a tuned control search follows, with as many iterations as the best self-training method's trials ran:
        # the trials get half of what the stage and the confirmation leave, so both fit in budget_iters
        budget_iters -= (budget_iters - plan.stage_iters - confirm_runs * plan.max_t) // 2
    return TunerSpec(
        name=s.name, storage=plan.storage, base=plan.base, data_root=plan.data_root, space=s.space, ctx=plan.ctx,
        searcher=s.searcher, seed=s.seed, scheduler=s.scheduler, max_t=plan.max_t, grace_period=plan.grace_period,
        reduction_factor=s.reduction_factor, num_samples=s.num_samples, time_budget_s=s.time_budget_s,
        budget_iters=budget_iters,
        max_concurrent=s.max_concurrent, cpus_per_trial=s.cpus_per_trial, gpus_per_trial=s.gpus_per_trial,
        optuna_storage=plan.optuna_storage, keep_checkpoints=s.keep_checkpoints, max_failures=s.max_failures,
        reuse_actors=s.reuse_actors, wandb_project=s.wandb_project, mlflow_uri=s.mlflow_uri, verbose=s.verbose,
        stage_model=plan.stage_model, stage_iters=plan.stage_iters, metric=s.metric,
        enqueue=fair_share(plan.methods, startup_trials(s.num_samples, s.budget_iters, plan.max_t),
                           s.trials_per_method),
        confirm_runs=confirm_runs, started=started,
    )


def fair_share(methods: tuple[str, ...] | list[str], startup: int, per_method: int = 1) -> tuple[dict[str, Any], ...]:
    """The first trials of a space over several methods: the methods in turn, `per_method` whole cycles (more when
    TPE's random start-up needs them), so every method is tried before TPE chooses (a categorical choice alone gave
    the demo's 12 trials no rounds trial at all). Only the method is fixed; the other knobs are sampled as usual."""
    if len(methods) < 2:
        return ()
    cycles = max(per_method, math.ceil(startup / len(methods)))
    return tuple({"method": m} for _ in range(cycles) for m in methods)


def _check_fair_share(sweep: SweepConfig, methods: list[str]) -> None:
    """A space over several methods needs a trial of each at least: fewer is refused (the shared stage trained for
    nobody, methods never tried, a verdict without one of its arms); fewer than the fair share is a warning."""
    n = sweep.num_samples
    if len(methods) < 2 or n == -1:
        return
    if n < len(methods):
        raise SelftuneError(f"num_samples {n} is fewer than the {len(methods)} methods of space {sweep.space!r} "
                            f"({', '.join(methods)}): {', '.join(methods[n:])} would never run; set num_samples >= "
                            f"{len(methods)} ({len(methods) * sweep.trials_per_method} for trials_per_method "
                            f"{sweep.trials_per_method})")
    if n < len(methods) * sweep.trials_per_method:
        import warnings

        warnings.warn(f"num_samples {n} is fewer than the fair share ({len(methods)} methods x trials_per_method "
                      f"{sweep.trials_per_method}): some methods get fewer trials than others and TPE never chooses",
                      UserWarning, stacklevel=2)


@dataclass
class SweepSummary:
    experiment_dir: str
    trials: int
    best: dict[str, Any] | None  # the exported best entry (see selftune.search.export)
    best_config_path: str | None
    verdict: dict[str, Any] | None = None  # the best self-training trial against the control (verdict.json)


def run_sweep(sweep: SweepConfig) -> SweepSummary:
    """Check, then run a new sweep to the end; writes best_config.yaml into the experiment folder."""
    plan = plan_sweep(sweep)
    with _sweep_lock(plan):
        _refuse_existing(plan.experiment_dir, sweep.name)  # again, holding the folder: another launch may have won
        start_ray(sweep.address, sweep.num_cpus, nice_trials=sweep.nice_trials)
        check_resources(sweep)
        from selftune.search import adapter

        with _launch(plan):
            if not plan.experiment_dir.startswith(REMOTE_SCHEMES):
                write_atomic(Path(plan.experiment_dir) / SWEEP_FILE, yaml.safe_dump(plan.meta(), sort_keys=False))
            else:
                _write_remote(plan.experiment_dir + "/" + SWEEP_FILE, yaml.safe_dump(plan.meta(), sort_keys=False))
            started = time.monotonic()  # time_budget_s counts the stage, the trials and the confirmation
            train_shared_stage(plan)
            _out_of_space_is_a_message(plan, lambda: adapter.fit(adapter.build_tuner(_tuner_spec(plan, started)),
                                                                 sweep.metric))
        close_open_trials(plan.optuna_storage, sweep.name)
        return _finish(plan, started)


def resume_sweep(path: str, *, restart_errored: bool = False, address: str | None = None,
                 num_cpus: int | None = None) -> SweepSummary:
    """Continue a sweep whose driver died, from its folder."""
    path = path if path.startswith(REMOTE_SCHEMES) else str(Path(path).expanduser().resolve())
    meta = read_sweep_meta(path)
    missing = [k for k in ("sweep", "base", "data_root") if k not in meta]
    if missing:
        raise SelftuneError(f"{path}/{SWEEP_FILE} has no {', '.join(missing)}: it is not a record a sweep can be "
                            "resumed from (cut short, or written by hand)")
    try:
        sweep = SweepConfig.from_dict(meta["sweep"])
    except SelftuneError as exc:
        raise SelftuneError(f"{path}/{SWEEP_FILE}: {exc}") from None
    if address is not None:
        sweep = sweep.replace(address=address)
    storage, _, name = path.rstrip("/").rpartition("/")
    sweep = sweep.replace(storage=storage, name=name, data=meta["data_root"])
    plan = plan_sweep(sweep, resume=True, base_dict=meta["base"])
    _check_same_data(plan, meta, path)
    with _sweep_lock(plan):
        start_ray(sweep.address, num_cpus if num_cpus is not None else sweep.num_cpus, nice_trials=sweep.nice_trials)
        check_resources(sweep)
        from selftune.search import adapter

        # before Ray's state exists (killed before its trials began, e.g. in the shared stage) the trials start now
        restore = adapter.can_restore(path)
        if not restore:
            print(f"selftune: {path} stopped before its trials began (no Ray state yet): "
                  f"{'its shared stage goes on, then ' if plan.stage_iters else ''}its trials start now", file=sys.stderr)
        started = time.monotonic()  # a resumed sweep's time budget counts from the resume
        train_shared_stage(plan)  # nothing to do when it finished before the crash
        _out_of_space_is_a_message(
            plan, lambda: adapter.fit(
                adapter.restore_tuner(path, _tuner_spec(plan, started), restart_errored=restart_errored) if restore
                else adapter.build_tuner(_tuner_spec(plan, started)), sweep.metric))
        close_open_trials(plan.optuna_storage, sweep.name)
        return _finish(plan, started)


def _out_of_space_is_a_message(plan: SweepPlan, fit: Any) -> None:
    """Run the trials; a full disk anywhere under them (Ray's state, the journal, a checkpoint) is one message."""
    import errno

    from selftune.errors import StorageError

    try:
        fit()
    except Exception as exc:
        seen, cur = set(), exc
        while cur is not None and id(cur) not in seen:
            seen.add(id(cur))
            if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
                raise StorageError(errno.ENOSPC, (
                    f"no space left on the device while the sweep ran ({plan.experiment_dir}); free some space, then "
                    f"`selftune sweep --resume {plan.experiment_dir}` continues it (a torn journal line is repaired)"
                )) from None
            cur = cur.__cause__ or cur.__context__
        raise


def _write_remote(uri: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def train_shared_stage(plan: SweepPlan) -> None:
    """Train the shared first stage into <sweep>/shared_stage before any trial (resumed if it was cut short), as a
    Ray task holding the CPUs (and GPUs) of the trials that will run at once, its torch threads set to match."""
    s = plan.sweep.shared_stage
    if not s or "max_iters" not in s:
        return
    from selftune.search import adapter
    from selftune.search.verdict import train_run
    from selftune.trainable.config import TrainConfig

    sw = plan.sweep
    cpus = adapter.largest_node_cpus(sw.cpus_per_trial * sw.max_concurrent)
    cfg = stage_config(TrainConfig.from_dict(plan.base), int(s["max_iters"])).replace(num_threads=max(1, int(cpus)))
    out = Path(plan.experiment_dir) / STAGE_DIR
    print(f"selftune: shared first stage: {cfg.arch}/{cfg.encoder}, supervised, {cfg.max_iters} iterations, "
          f"{cpus:g} CPUs -> {out}", file=sys.stderr)
    [done] = adapter.run_tasks([(train_run, (cfg.to_dict(), plan.data_root, str(out)))], cpus=cpus,
                               gpus=sw.gpus_per_trial, desc="shared stage",
                               progress=lambda: (_iterations_done(out), cfg.max_iters))
    print(f"selftune: shared first stage {done['status']}: best val mIoU {done['best_val_miou']:.4f} at iteration "
          f"{done['best_iteration']}", file=sys.stderr)


def _iterations_done(run_dir: Path) -> int:
    """The last evaluated iteration in a run folder's metrics.jsonl (0 before its first evaluation)."""
    import json

    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("iteration", 0))
        except (ValueError, AttributeError):
            continue
    return 0


def _finish(plan: SweepPlan, started: float | None = None) -> SweepSummary:
    """Export the best trial; then the verdict (unless `control: none`)."""
    from selftune.search.export import export_best, rank_trials, render

    experiment_dir = plan.experiment_dir
    trials = read_trials(experiment_dir)
    try:
        entries, text = export_best(experiment_dir, top_k=1, metric=plan.sweep.metric, mode="max")
    except SelftuneError as exc:
        print(f"selftune: no best config: {exc}", file=sys.stderr)
        return SweepSummary(experiment_dir, len(trials), None, None)
    _hparams(plan, trials)
    verdict = None
    if plan.sweep.control != "none":
        verdict = run_verdict(plan, rank_trials(experiment_dir, plan.sweep.metric, "max"), trials, started)
    if verdict is not None:
        entries[0]["verdict"] = {k: verdict.get(k) for k in ("headline", "outcome", "difference", "arms", "flags")}
        text = render(entries[0])
    out = experiment_dir + "/" + BEST_CONFIG_FILE
    if experiment_dir.startswith(REMOTE_SCHEMES):
        _write_remote(out, text)
    else:
        write_atomic(Path(out), text)
    return SweepSummary(experiment_dir, len(trials), entries[0], out, verdict)


def _hparams(plan: SweepPlan, trials: list[Any]) -> None:
    from selftune.search.tensorboard import write_hparams

    write_hparams(trials)


def run_verdict(plan: SweepPlan, ranked: list[dict[str, Any]], trials: list[Any], started_at: float | None = None
                ) -> dict[str, Any] | None:
    """The verdict (`selftune.search.verdict`): pick both arms' best configs by val, retrain them with fresh seeds
    as Ray tasks (resumed run by run after a crash), score every run image by image, write verdict.json."""
    import json

    from selftune.search import sequential
    from selftune.search.verdict import (
        arm_summary,
        build_verdict,
        confirm_runs,
        fresh_seeds,
        no_verdict,
        self_training_methods,
    )
    from selftune.trainable.config import TrainConfig

    s, exp = plan.sweep, plan.experiment_dir
    if exp.startswith(REMOTE_SCHEMES):
        print("selftune: no verdict: its confirmation runs need a local or shared (NFS) sweep folder", file=sys.stderr)
        return None
    st_methods = set(self_training_methods())
    st_entries = [e for e in ranked if e["config"]["method"] in st_methods]
    record: dict[str, Any] | None = None
    if not st_entries:
        record = no_verdict(f"no self-training trial finished an evaluation ({len(ranked)} trials)")
    best_st = st_entries[0] if st_entries else None
    sup_entry, tuned = None, s.control == "tuned"
    if best_st is not None and tuned:
        sup_entries = [e for e in ranked if e["config"]["method"] == "supervised"]
        if not sup_entries:
            method = best_st["config"]["method"]
            n = s.control_trials or sum(1 for e in st_entries if e["config"]["method"] == method)
            iters = None if s.control_trials else _iterations([t for t in trials if _method_of(t) == method])
            sup_entries = run_control_search(plan, n, best_st["config"], iters, started_at)
        sup_entry = sup_entries[0] if sup_entries else None
        if sup_entry is None:
            record = no_verdict("the tuned control search finished no evaluation")
    if record is not None or best_st is None:
        record = record or no_verdict("nothing to compare")
        write_atomic(Path(exp) / VERDICT_FILE, json.dumps(record, indent=1))
        return record

    base = TrainConfig.from_dict(plan.base)
    sup_config = sup_entry["config"] if sup_entry is not None else base.as_supervised().to_dict()
    planned = sequential.looks(min(s.confirm_seeds, s.max_seeds), s.max_seeds)
    alphas = sequential.nominal_alphas(planned)
    threads = max(1, int(s.cpus_per_trial))
    from selftune.data import split_exists

    split = "test" if split_exists(Path(plan.data_root), "test") else "val"
    print(f"selftune: confirming: {best_st['config']['method']} (trial {best_st['trial_id']}) and "
          f"{'tuned supervised (trial ' + sup_entry['trial_id'] + ')' if sup_entry else 'the untuned base config'}"
          f", fresh seeds per arm: {planned[0]}" + (f", up to {planned[-1]} while unclear" if len(planned) > 1 else ""),
          file=sys.stderr)
    runs: list[Any] = []
    results: list[dict[str, Any]] = []
    cms: list[Any] = []
    looks: list[dict[str, Any]] = []
    stopped = ""
    for k, n in enumerate(planned):
        wave = confirm_runs(best_st["config"], sup_config, fresh_seeds(base.seed, n)[len(runs) // 2:],
                            plan.stage_model, Path(exp) / CONFIRM_DIR, threads,
                            keep_last=0 if s.confirm_score == "best" else s.confirm_last)
        done = _confirm_wave(plan, wave, split, base)
        if done is None:
            record = no_verdict(f"confirmation run(s) without a best model (diverged before any evaluation?) among "
                                f"{', '.join(r.out_dir for r in wave)}")
            write_atomic(Path(exp) / VERDICT_FILE, json.dumps(record, indent=1))
            return record
        runs, results, cms = runs + wave, results + done[0], cms + done[1]
        look = look_at(runs, cms, split, plan, alphas[k])
        looks.append(look["summary"])
        nxt = planned[k + 1] if k + 1 < len(planned) else None
        decision = sequential.decide(look["low"], look["high"], look["mean"], seeds=n, seeds_next=nxt,
                                     spread=look["spread"], image_half_width=look["image_half_width"],
                                     last_alpha=alphas[-1])
        if decision.stop:
            stopped = decision.reason
            break
        if not _time_for_wave(plan, started_at, results, 2 * (nxt - n)):
            stopped = "budget (time_budget_s has no room for the next wave)"
            break
    search_dir = Path(exp) / CONTROL_SEARCH_DIR
    control_trials = read_trials(str(search_dir)) if (search_dir / SWEEP_FILE).is_file() else []
    trial_iters, search_iters = _iterations(trials), _iterations(control_trials)
    confirm_iters = sum(int(res["iterations"]) for res in results)
    total = trial_iters + search_iters + plan.stage_iters + confirm_iters
    compute = {"trials": trial_iters, "control_search": search_iters, "stage": plan.stage_iters,
               "confirmation": confirm_iters, "confirmation_share": confirm_iters / max(1, total),
               "total": total, "budget_iters": s.budget_iters, "time_budget_s": s.time_budget_s,
               "seconds": None if started_at is None else round(time.monotonic() - started_at, 1)}
    best = ranked[0]
    record = build_verdict(
        st=arm_summary(best_st, "self-training", True),
        sup=arm_summary(sup_entry, "supervised" if tuned else "supervised (untuned base config)", tuned),
        runs=runs, results=results, cms=cms, split=split, class_names=plan.class_names, metric=s.metric,
        best_by_val={"trial_id": best["trial_id"], "method": best["config"]["method"], "metric": best["metric"],
                     "value": best["value"]},
        compute=compute, stage_model=plan.stage_model, seed=s.seed, alpha=alphas[len(looks) - 1], looks=looks,
        planned=planned, stopped=stopped, score=s.confirm_score)
    write_atomic(Path(exp) / VERDICT_FILE, json.dumps(record, indent=1))
    return record


def _confirm_wave(plan: SweepPlan, wave: list[Any], split: str, base: Any) -> tuple[list[Any], list[Any]] | None:
    """Train one wave of confirmation runs as Ray tasks (each resumed from its checkpoint after a crash), then score
    each image by image; None when a run left no model to score."""
    from selftune.search import adapter
    from selftune.search.verdict import score_run, train_run
    from selftune.trainable.config import TrainConfig

    s = plan.sweep
    iters = TrainConfig.from_dict(wave[0].config).max_iters
    results = adapter.run_tasks(
        [(train_run, (r.config, plan.data_root, r.out_dir)) for r in wave], cpus=s.cpus_per_trial,
        gpus=s.gpus_per_trial, desc=f"confirmation, {len(wave) // 2} seed{'s' if len(wave) > 2 else ''}",
        progress=lambda: (sum(_iterations_done(Path(r.out_dir)) for r in wave), iters * len(wave)))
    if any(not Path(res["best_model"]).is_file() for res in results):
        return None
    cms = adapter.run_tasks(
        [(score_run, (r.out_dir, s.confirm_score, plan.data_root, split, base.point_radius, base.point_ring))
         for r in wave], cpus=s.cpus_per_trial, gpus=s.gpus_per_trial)
    return list(results), list(cms)


def look_at(runs: list[Any], cms: list[Any], split: str, plan: SweepPlan, alpha: float) -> dict[str, Any]:
    """The paired difference of the runs so far at a look's level `1 - alpha`."""
    import numpy as np

    from selftune.search import intervals

    seeds = sorted({r.seed for r in runs})
    by = {(r.arm, r.seed): cm for r, cm in zip(runs, cms, strict=True)}
    a = np.stack([by[("self_training", x)] for x in seeds])
    b = np.stack([by[("supervised", x)] for x in seeds])
    _, stat = intervals.statistic_for(plan.sweep.metric, plan.class_names)
    d = intervals.paired_difference(a, b, stat, seed=plan.sweep.seed, confidence=1 - alpha)
    summary = {"seeds": len(seeds), "mean": d.mean, "low": d.low, "high": d.high, "confidence": 1 - alpha,
               "outcome": d.outcome}
    print(f"selftune: verdict look at {len(seeds)} seeds: {d.mean * 100:+.2f} points, "
          f"{(1 - alpha) * 100:.1f}% interval [{d.low * 100:+.2f}, {d.high * 100:+.2f}]", file=sys.stderr)
    return {"summary": summary, "mean": d.mean, "low": d.low, "high": d.high, "spread": d.spread,
            "image_half_width": d.image_half_width}


def _time_for_wave(plan: SweepPlan, started_at: float | None, results: list[dict[str, Any]], runs: int) -> bool:
    """With time_budget_s: is there time for `runs` more confirmation runs, at the pace of the slowest so far?"""
    budget = plan.sweep.time_budget_s
    if budget is None or started_at is None or not results:
        return True
    slowest = max(float(r.get("seconds") or 0.0) for r in results)
    waves = math.ceil(runs / max(1, plan.sweep.max_concurrent))
    return time.monotonic() - started_at + waves * slowest <= budget


def _method_of(trial: Any) -> str:
    """The method a trial ran (its config's)."""
    return str((getattr(trial, "config", None) or {}).get("method", ""))


def _iterations(trials: list[Any]) -> int:
    """Optimizer iterations the trials ran, in all (each trial's last evaluated iteration)."""
    return sum(max((int(r.get("iteration", 0)) for r in t.results), default=0) for t in trials)


def run_control_search(plan: SweepPlan, trials: int, st_config: dict[str, Any], iterations: int | None = None,
                       started: float | None = None) -> list[dict[str, Any]]:
    """The tuned control of a space without supervised trials: `trials` trials of the `supervised` space (the shared
    knobs) in <sweep>/control_search, its own Ray experiment and Optuna study, resumed after a crash; ranked. Its
    base is the best self-training trial's config made supervised, so what the space fixed for the self-training
    trials (binary mode, its loss) holds for the control too. Equal tuning in iterations: it stops once its trials
    ran `iterations` (what the best self-training method's trials ran) in all; and it keeps inside the sweep's
    time_budget_s with the confirmation's time kept free, like the trials."""
    import dataclasses

    from selftune.search import adapter
    from selftune.search.export import rank_trials
    from selftune.trainable.config import TrainConfig

    path = Path(plan.experiment_dir) / CONTROL_SEARCH_DIR
    print(f"selftune: tuned supervised control: {trials} trials of space 'supervised' -> {path}", file=sys.stderr)
    base = TrainConfig.from_dict(st_config).as_supervised(max_iters=plan.max_t).to_dict()
    meta = {**plan.meta(), "base": base, "sweep": {**plan.sweep.to_dict(), "space": "supervised",
                                                   "name": CONTROL_SEARCH_DIR, "num_samples": trials},
            "shared_stage_model": None, "shared_stage_iters": 0}
    path.mkdir(parents=True, exist_ok=True)
    if not (path / SWEEP_FILE).is_file():
        write_atomic(path / SWEEP_FILE, yaml.safe_dump(meta, sort_keys=False))
    main = _tuner_spec(plan, started)
    reserve = main.confirm_runs * main.max_t  # IterationBudget starts with the confirmation's reserve spent
    spec = dataclasses.replace(main, name=CONTROL_SEARCH_DIR, storage=plan.experiment_dir, base=base,
                               space="supervised", num_samples=trials, stage_model=None, stage_iters=0, enqueue=(),
                               budget_iters=None if iterations is None else iterations + reserve)
    tuner = (adapter.restore_tuner(str(path), spec, restart_errored=False) if adapter.can_restore(str(path))
             else adapter.build_tuner(spec))
    adapter.fit(tuner, plan.sweep.metric)
    close_open_trials(plan.optuna_storage, CONTROL_SEARCH_DIR)
    return rank_trials(str(path), plan.sweep.metric, "max")
