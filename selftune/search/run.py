"""The sweep driver: plan (every check, before anything starts), start or attach Ray, train the shared stage, run
the trials, then finish: export the best trial and end with the verdict. A driver that died is resumed from its
folder.

Read one module at a time, in the order a sweep runs:

- `plan`: the checks, resolved into one `SweepPlan` (the sweep file plus what planning found);
- `ray_setup`: Ray attached or started, a trial's resources checked against the cluster;
- `stage`: the shared first stage every rounds trial starts from;
- `adapter`: the trials as a Ray Tune experiment (`adapter.tuner_spec(plan)`), the only module importing ray.tune;
- `confirm`: the verdict's confirmation runs and the tuned control search;
- this module: run, resume, and the finish that ties them together.

Python API::

    from selftune.search import SweepConfig, run_sweep
    summary = run_sweep(SweepConfig(data="/data/salak", space="thresholds", num_samples=64))
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selftune.errors import SelftuneError
from selftune.fileio import LOCK_FILE, folder_lock, write_atomic
from selftune.search.confirm import outcomes_of, run_verdict
from selftune.search.plan import SweepPlan, check_same_data, plan_sweep, refuse_existing
from selftune.search.ray_setup import check_resources, start_ray
from selftune.search.stage import train_shared_stage
from selftune.search.study import close_open_trials
from selftune.search.sweepfile import SweepConfig
from selftune.sweepfolder import (
    BEST_CONFIG_FILE,
    REMOTE_SCHEMES,
    SWEEP_FILE,
    read_sweep_meta,
    read_trials,
)


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
        refuse_existing(plan.experiment_dir, sweep.name)  # again, holding the folder: another launch may have won
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
            spec = adapter.tuner_spec(plan, started)
            _out_of_space_is_a_message(plan, lambda: adapter.fit(adapter.build_tuner(spec), sweep.metric))
        close_open_trials(plan.optuna_storage, sweep.name, outcomes_of(plan.experiment_dir))
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
    check_same_data(plan, meta, path)
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
        spec = adapter.tuner_spec(plan, started)
        _out_of_space_is_a_message(
            plan, lambda: adapter.fit(
                adapter.restore_tuner(path, spec, restart_errored=restart_errored) if restore
                else adapter.build_tuner(spec), sweep.metric))
        close_open_trials(plan.optuna_storage, sweep.name, outcomes_of(plan.experiment_dir))
        return _finish(plan, started)


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


__all__ = ["SweepPlan", "SweepSummary", "plan_sweep", "resume_sweep", "run_sweep"]
