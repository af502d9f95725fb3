"""The one module that imports `ray.tune`: the trial function, honest Optuna bookkeeping, the Tuner.

Everything else in selftune is plain Python, so Ray's API churn touches this file only.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from selftune.errors import Interrupted
from selftune.search.progress import ProgressLines, ray_verbosity
from selftune.search.sequential import wave_seconds
from selftune.search.study import open_optuna_storage
from selftune.spaces import SpaceContext, apply_params, call_space, get_space
from selftune.sweepfolder import (
    CONTROL_SEARCH_DIR,
    METRIC,
    OBJECTIVE,
    REMOTE_SCHEMES,
    TIME_ATTR,
    TRIAL_RUN_DIR,
    experiment_path,
    last_two,
    optuna_state,
    trial_dirname,
    trial_outcome,
)
from selftune.trainable.config import TrainConfig

if TYPE_CHECKING:
    from selftune.search.plan import SweepPlan
    from selftune.search.sweepfile import SweepConfig

# ---------------------------------------------------------------------- the trial


def selftune_trial(
    params: dict[str, Any], *, base: dict[str, Any], data_root: str, cpus: float, gpus: float,
    experiment_dir: str, stage_model: str | None = None,
) -> None:
    """One trial: apply the sampled params to the base config and run the plain loop.

    The run goes to `<trial folder>/train`. On local or shared storage it is written there
    directly; Ray's staging copy under /tmp/ray is never cleaned, so a copy there would leak a
    checkpoint per trial. Only remote (s3://, gs://) storage stages in the working directory and
    syncs from it.
    """
    import torch

    from selftune.trainable.loop import train
    from selftune.trainable.methods import get_method

    threads = max(1, int(cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the cluster launcher exports 1; trust our allocation
    torch.set_num_threads(threads)
    cfg = apply_params(TrainConfig.from_dict(base), params)
    if stage_model is not None and get_method(cfg.method).uses_shared_stage:  # its first stage is the shared one
        cfg = cfg.replace(teacher_checkpoint=stage_model)
    if cfg.num_threads == 0:
        cfg = cfg.replace(num_threads=threads)
    if 0 < gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpus)  # fractional GPUs share memory; cap ours

    out_dir = _trial_run_dir(experiment_dir)
    checkpoint = tune.get_checkpoint()
    node_id = ray.get_runtime_context().get_node_id()  # which node ran each report, for analysis

    def reporter(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ck = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report({**metrics, "node_id": node_id}, checkpoint=ck)

    try:
        if checkpoint is None:
            if out_dir.exists():  # a restarted trial: keep the failed attempt's files beside the new run
                shutil.move(str(out_dir), str(out_dir.with_name(f"train.attempt-{int(time.time())}")))
            train(cfg, Path(data_root), out_dir, reporter=reporter, progress=False)
            return
        with checkpoint.as_directory() as ck_dir:
            train(cfg, Path(data_root), out_dir, resume_from=Path(ck_dir), reporter=reporter, progress=False)
    finally:
        give_back_freed_memory()  # reuse_actors: the next trial runs in this process


def give_back_freed_memory() -> None:
    """Return the heap pages a finished trial freed to the OS.

    glibc's malloc keeps what a trial freed in its arenas, and a reused actor (Ray runs each trial in a new
    thread of it) did not reuse all of it: on bench/bench_trial_memory.py its RSS rose from 1013 to 1331 MB
    in 17 trials (issue 19, docs/benchmarks.md). malloc_trim(0) hands the free pages of every arena back.
    A no-op without glibc (macOS, musl).
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _trial_run_dir(experiment_dir: str) -> Path:
    """Where this trial's loop writes: in its storage folder when that is a local path."""
    if experiment_dir.startswith(REMOTE_SCHEMES):
        return Path.cwd() / TRIAL_RUN_DIR  # staged, then synced by Ray (sync_artifacts)
    trial_dir_name = Path(tune.get_context().get_trial_dir()).name
    return Path(experiment_dir) / trial_dir_name / TRIAL_RUN_DIR


# ---------------------------------------------------------------------- the searcher


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how each trial ended.

    Ray's OptunaSearch tells a trial that ASHA stopped as COMPLETE with its early, low metric,
    which biases TPE. Here each evaluation is an intermediate value at the loop's iteration,
    a scheduler-stopped trial is PRUNED, a diverged or errored one is FAIL, and a finished one
    is COMPLETE with its best value of the sweep's metric (the loop's best_val_miou for val_miou, the best
    value reported for any other). Each Optuna trial carries the Ray trial id (`ray_trial_id`) and
    selftune's status (`selftune_status`: completed, stopped_by_asha, stopped_by_budget, ...) as user
    attributes, so optuna-dashboard tells an ASHA cut from a budget cut and names the trial's folder.
    """

    rungs: tuple[float, ...] = ()  # ASHA milestones (set by make_searcher); empty without ASHA

    def _attr(self, trial_id: str, key: str, value: Any) -> None:
        self._ot_trials[trial_id].set_user_attr(key, value)

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # the Ray trial's id on the Optuna trial, from its start
            self._attr(trial_id, "ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        kept = self.__dict__.setdefault("_last_two", {})  # what `trial_outcome` reads when the trial ends
        kept[trial_id] = last_two(kept.get(trial_id, []), result)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or self.metric not in result:
            return
        step = int(result.get(TIME_ATTR, result.get("training_iteration", 0)))
        value = float(result[self.metric])
        reported = self.__dict__.setdefault("_reported_steps", {}).setdefault(trial_id, set())
        if step not in reported and value == value:  # one value per step; NaN is never a value
            try:
                self._ot_trials[trial_id].report(value, step)
            except optuna.exceptions.UpdateFinishedTrialError:  # told before a crash (see on_trial_complete)
                self._completed_trials.add(trial_id)
                return
            reported.add(step)
            best = self.__dict__.setdefault("_best_values", {})  # the objective of a metric other than val_miou
            best[trial_id] = max(best.get(trial_id, value), value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:  # Ray passes the last report here, not to on_trial_result
            self.on_trial_result(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        # the one rule: as the summary and `selftune analyze` read it from the trial's result.json
        outcome = trial_outcome(self.__dict__.get("_last_two", {}).get(trial_id, []), errored=error, rungs=self.rungs)
        state = getattr(optuna.trial.TrialState, optuna_state(outcome))
        value = None
        if state == optuna.trial.TrialState.COMPLETE:
            if self.metric == METRIC:
                value = result.get(OBJECTIVE, result.get(self.metric)) if result else None
            else:
                value = self.__dict__.get("_best_values", {}).get(trial_id)
            if value is None or value != value:
                state, value = optuna.trial.TrialState.FAIL, None
        if ot_trial.number not in self._told_numbers():
            self._attr(trial_id, "ray_trial_id", trial_id)
            self._attr(trial_id, "selftune_status", outcome)
        # skip_if_finished: the study's storage is written at once, this searcher's state only at Ray's
        # experiment checkpoints, so after a driver crash a resumed trial may already be finished in the study.
        self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


    def _told_numbers(self) -> set[int]:
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return {t.number for t in self._ot_study.get_trials(deepcopy=False, states=finished)}


def _space_for_optuna(space: str, ctx: SpaceContext, trial: Any) -> dict[str, Any]:
    """Define-by-run wrapper; a module-level partial so the searcher state pickles."""
    return call_space(get_space(space), trial, ctx)


def startup_trials(num_samples: int, budget_iters: int | None = None, max_t: int | None = None) -> int:
    """TPE's random start-up trials: a third of the trials the sweep expects, between 3 and Optuna's 10.

    A sweep bounded by an iteration budget (num_samples -1) expects budget_iters / max_t full-length
    trials; with only a time budget the count is unknown and Optuna's default 10 is kept. Without
    this, a small budgeted sweep never leaves the random start-up and TPE is random search.
    """
    expected = num_samples if num_samples > 0 else (budget_iters // max_t if budget_iters and max_t else 0)
    return min(10, max(3, expected // 3)) if expected > 0 else 10


def make_searcher(
    kind: str, space: str, ctx: SpaceContext, *, seed: int, num_samples: int, max_concurrent: int,
    study_name: str, storage_url: str, budget_iters: int | None = None, max_t: int | None = None,
    rungs: list[float] | None = None, metric: str = METRIC,
) -> ClosingLimiter:
    """TPE (multivariate, constant liar, seeded) or random, over a persisted Optuna study."""
    if kind == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        startup = startup_trials(num_samples, budget_iters, max_t)
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup
        )
    cls = OptunaSearch if kind == "tpe-stock" else HonestOptunaSearch
    searcher = cls(
        space=functools.partial(_space_for_optuna, space, ctx), metric=metric, mode="max",
        sampler=sampler, study_name=study_name, storage=open_optuna_storage(storage_url),
    )
    if isinstance(searcher, HonestOptunaSearch):
        searcher.rungs = tuple(rungs or ())
    return ClosingLimiter(searcher, max_concurrent=max_concurrent)


# ---------------------------------------------------------------------- the compute budget


class TimeBudget(tune.Stopper):
    """The sweep's time_budget_s, with the verdict's confirmation time kept free. Two moments:

    - `closed()`: no new trial starts once the time left is the confirmation's reserve, every look of it (the
      most seeds); the running trials go on to max_t or their ASHA rung;
    - `stop_all()`: the running trials are cut once the time left is the first look's reserve (a verdict needs
      its first look; later looks run while the budget has room for them, and the verdict says when it had not).

    The reserve: the confirmation's looks (`looks`, the seeds per arm each adds) at the pace of the two arms it
    will train, the best self-training method so far by `metric` and supervised, each look as long as its runs
    on `concurrent` slots and at least one run. A method's pace (seconds per iteration: its steps and their
    share of evaluations) is the median of its trials' reports; an arm not measured yet takes the slowest
    method's. Before the first report nothing is reserved. It never stops before a trial of each of `methods`
    has reached `grace` iterations: on a busy machine a sweep overruns its budget rather than end with no trial
    of a method to compare."""

    def __init__(self, budget_s: float, started: float, looks: tuple[int, ...], concurrent: int, max_t: int,
                 eval_every: int, methods: tuple[str, ...] = (), grace: int = 0, metric: str = METRIC) -> None:
        self.deadline = started + budget_s
        self.eval_every = eval_every
        self.adds = tuple(b - a for a, b in zip((0, *looks), looks, strict=False))  # seeds each look adds
        self.concurrent = max(1, concurrent)
        self.max_t = max_t
        self.metric = metric
        self.per_iter: dict[str, list[float]] = {}
        self.best: dict[str, float] = {}  # method -> the best value of `metric` its trials reported
        self.waiting = {m: min(grace, max_t) for m in methods}  # method -> iterations one trial must reach first

    def __getstate__(self) -> dict:
        """Pickled (Ray keeps it in tuner.pkl, and restores it on `sweep --resume`) with the time it had left, not
        the deadline: a monotonic clock means nothing in another process."""
        state = dict(self.__dict__)
        state["left"] = state.pop("deadline") - time.monotonic()
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        self.__dict__.update(state, deadline=time.monotonic() + state.pop("left"))

    def __call__(self, trial_id: str, result: dict) -> bool:
        step, evals = result.get("step_seconds"), result.get("eval_seconds")
        method = str((result.get("config") or {}).get("method", ""))
        if isinstance(step, int | float) and math.isfinite(step):
            per_eval = evals / self.eval_every if isinstance(evals, int | float) and self.eval_every else 0.0
            self.per_iter.setdefault(method, []).append(float(step) + float(per_eval))
            if int(result.get(TIME_ATTR, 0)) >= self.waiting.get(method, math.inf) or result.get("done"):
                self.waiting.pop(method, None)
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            self.best[method] = max(self.best.get(method, value), float(value))
        return False

    def run_s(self, method: str | None) -> float:
        """Seconds one max_t run of `method` takes at its measured pace (the slowest method's if unmeasured)."""
        paces = {m: statistics.median(v) for m, v in self.per_iter.items() if v}
        if not paces:
            return 0.0
        return self.max_t * paces.get(method or "", max(paces.values()))

    def reserve_s(self, looks: int | None = None) -> float:
        """Seconds the confirmation's first `looks` looks (all by default) take at the arms' paces."""
        st = [m for m in self.best if m != "supervised"]
        st_s = self.run_s(max(st, key=self.best.__getitem__) if st else None)
        sup_s = self.run_s("supervised") if "supervised" in self.per_iter else st_s  # a control search: unmeasured
        return sum(wave_seconds(k, st_s, sup_s, self.concurrent) for k in self.adds[:looks])

    def closed(self) -> bool:
        return not self.waiting and time.monotonic() + self.reserve_s() >= self.deadline

    def stop_all(self) -> bool:
        return not self.waiting and time.monotonic() + self.reserve_s(looks=1) >= self.deadline


class ClosingLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter that starts no new trial once `closed()` says so (`TimeBudget.closed`): the
    search ends there and the running trials finish. `closed` is this run's, never saved with the searcher."""

    closed: Any = None

    started_trials: int = 0  # this search's suggestions (restored with its state)

    def suggest(self, trial_id: str) -> dict | None:
        if self.closed is not None and self.closed():
            print(f"selftune: time_budget_s: no new trials after {self.started_trials}; the running ones finish, "
                  "the time left is the verdict's confirmation's", file=sys.stderr)
            self.closed = None  # said once; the search has ended
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if config not in (None, Searcher.FINISHED):
            self.started_trials += 1
        return config

    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in ("searcher", "closed")})


class IterationBudget(tune.Stopper):
    """Stops the whole sweep once the trials' iterations add up to `budget` (the sum over trials)."""

    def __init__(self, budget: int, spent: int = 0) -> None:
        self.budget = budget
        self.spent = spent  # before any trial: the shared stage, counted once
        self.seen: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.seen[trial_id] = max(self.seen.get(trial_id, 0), int(result.get(TIME_ATTR, 0)))
        return False

    def stop_all(self) -> bool:
        return self.spent + sum(self.seen.values()) >= self.budget


# ---------------------------------------------------------------------- the tuner


@dataclass(frozen=True)
class TunerSpec:
    """One Ray experiment of a sweep: its plan (`plan.sweep`, the sweep file's settings; the rest, what planning
    resolved) and what this experiment runs differently from the plan. Plain values; nothing Ray-specific leaks
    out of this module."""

    plan: SweepPlan
    budget_iters: int | None = None  # the trials' share of the sweep's budget_iters (`SweepPlan.trial_budget_iters`)
    enqueue: tuple[dict[str, Any], ...] = ()  # partial params of the first trials of a new sweep (fair share)
    confirm_runs: int = 0  # the verdict's confirmation runs, each max_t long: their compute is kept out of the budgets
    confirm_looks: tuple[int, ...] = ()  # the seeds per arm at each of the verdict's looks: their time is kept free
    started: float | None = None  # time.monotonic() when the sweep started: time_budget_s counts from there

    @property
    def sweep(self) -> SweepConfig:
        return self.plan.sweep


def tuner_spec(plan: SweepPlan, started: float | None = None) -> TunerSpec:
    """The sweep's own Ray experiment: the plan, the trials' share of budget_iters, every method tried before TPE
    chooses (`plan.fair_share`), and the confirmation's reserve."""
    from selftune.search.plan import fair_share

    s = plan.sweep
    return TunerSpec(plan, budget_iters=plan.trial_budget_iters, confirm_runs=plan.confirm_runs,
                     confirm_looks=plan.confirm_looks, started=started,
                     enqueue=fair_share(plan.methods, startup_trials(s.num_samples, s.budget_iters, plan.max_t),
                                        s.trials_per_method))


def _trainable(spec: TunerSpec) -> Any:
    fn = tune.with_parameters(
        selftune_trial, base=spec.plan.base, data_root=spec.plan.data_root, cpus=spec.sweep.cpus_per_trial, gpus=spec.sweep.gpus_per_trial,
        experiment_dir=experiment_path(spec.plan.storage, spec.sweep.name), stage_model=spec.plan.stage_model,
    )
    return tune.with_resources(fn, {"cpu": spec.sweep.cpus_per_trial, "gpu": spec.sweep.gpus_per_trial})


def _callbacks(spec: TunerSpec) -> list[Any]:
    """Ray's JSON and CSV loggers (result.json is what analysis reads); not its TensorBoard logger, which wrote
    every metric again under ray/tune/ on a second step axis (the loop's own events are the record). At the
    default verbose 1, selftune's one-line progress (`progress`) instead of Ray's boxed tables."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    callbacks: list[Any] = [JsonLoggerCallback(), CSVLoggerCallback()]
    if spec.sweep.verbose == 1:
        class Progress(ProgressLines, tune.Callback):  # the plain progress lines, as a Ray callback
            def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
                if not _sigint_caught():  # after Ctrl-C, fit's message says where the sweep stopped instead
                    super().on_experiment_end(trials, **info)

        callbacks.append(Progress(spec.sweep.metric, rungs=spec.plan.rungs))
    if spec.sweep.wandb_project:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(WandbLoggerCallback(project=spec.sweep.wandb_project, group=spec.sweep.name))
    if spec.sweep.mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=spec.sweep.mlflow_uri, experiment_name=spec.sweep.name))
    return callbacks


def _quiet_console() -> None:
    """Only Ray's table and selftune's lines: no default TensorBoard logger (and its hint pointing into
    /tmp/ray), no "snapshotting has been triggered multiple times" warning every few seconds (selftune keeps
    one best checkpoint per trial, which makes Ray snapshot often; that is expected, not a bottleneck here)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _trial_dirname(trial: Any) -> str:
    """Ray's Trial -> selftune's short folder name (its experiment tag starts with the trial's number)."""
    head = str(trial.experiment_tag).split("_", 1)[0]
    return trial_dirname(int(head) if head.isdigit() else None, trial.trial_id, dict(trial.evaluated_params or {}))


def _time_budget(spec: TunerSpec) -> TimeBudget | None:
    """The sweep's time_budget_s counted from `spec.started` (the stage, the trials, the confirmation's reserve)."""
    if not (spec.sweep.time_budget_s and spec.started is not None):
        return None
    methods = tuple(str(e["method"]) for e in spec.enqueue) if spec.confirm_runs else ()
    return TimeBudget(spec.sweep.time_budget_s, spec.started, spec.confirm_looks,
                      spec.sweep.max_concurrent, spec.plan.max_t, int(spec.plan.base.get("eval_every", 0)),
                      methods=tuple(dict.fromkeys(methods)), grace=spec.plan.grace_period, metric=spec.sweep.metric)


def _stoppers(spec: TunerSpec, clock: TimeBudget | None) -> Any:
    """The sweep's budgets: iterations (the stage and the confirmation runs counted in) and time (`clock`); None
    without either."""
    from ray.tune.stopper import CombinedStopper

    stoppers: list[Any] = []
    if spec.budget_iters:
        stoppers.append(IterationBudget(spec.budget_iters, spec.plan.stage_iters + spec.confirm_runs * spec.plan.max_t))
    if clock is not None:
        stoppers.append(clock)
    return None if not stoppers else stoppers[0] if len(stoppers) == 1 else CombinedStopper(*stoppers)


def _enqueue(searcher: Any, trials: tuple[dict[str, Any], ...]) -> None:
    """Fix the method of a new study's first trials (`TunerSpec.enqueue`); a study with trials is left alone."""
    study = getattr(searcher.searcher, "_ot_study", None)
    if study is None or not trials or study.get_trials(deepcopy=False):
        return
    for params in trials:
        study.enqueue_trial(params)


def largest_node_cpus(want: float) -> float:
    """`want` CPUs, or the most one alive node of the Ray cluster has, whichever is fewer (at least 1)."""
    most = max((n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=want)
    return max(1.0, min(want, most))


def build_tuner(spec: TunerSpec) -> tune.Tuner:
    searcher = make_searcher(
        spec.sweep.searcher, spec.sweep.space, spec.plan.ctx, seed=spec.sweep.seed, num_samples=spec.sweep.num_samples,
        max_concurrent=spec.sweep.max_concurrent, study_name=spec.sweep.name, storage_url=spec.plan.optuna_storage,
        budget_iters=spec.budget_iters, max_t=spec.plan.max_t,
        rungs=spec.plan.rungs,
        metric=spec.sweep.metric,
    )
    _enqueue(searcher, spec.enqueue)
    clock = _time_budget(spec)
    searcher.closed = clock.closed if clock is not None else None
    if spec.sweep.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr=TIME_ATTR, max_t=spec.plan.max_t, grace_period=spec.plan.grace_period,
            reduction_factor=spec.sweep.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    _quiet_console()
    tuner = tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(
            metric=spec.sweep.metric, mode="max", search_alg=searcher, scheduler=scheduler,
            # unlimited: Ray prints sys.maxsize as a number ("Number of trials 9223372036854775807"), one more as
            # "infinite"
            num_samples=spec.sweep.num_samples if spec.sweep.num_samples > 0 else sys.maxsize + 1,
            time_budget_s=None if spec.started is not None else spec.sweep.time_budget_s, reuse_actors=spec.sweep.reuse_actors, trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.sweep.name, storage_path=spec.plan.storage, verbose=ray_verbosity(spec.sweep.verbose), callbacks=_callbacks(spec),
            stop=_stoppers(spec, clock),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.sweep.keep_checkpoints, checkpoint_score_attribute=spec.sweep.metric, checkpoint_score_order="max"
            ),
            failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
            sync_config=tune.SyncConfig(sync_artifacts=spec.plan.storage.startswith(REMOTE_SCHEMES)),
        ),
    )
    tuner._selftune_folder = experiment_path(spec.plan.storage, spec.sweep.name)  # for fit's Ctrl-C message
    return tuner


def _remote(fn: Any, cpus: float, gpus: float) -> Any:
    """`fn` as a Ray task that holds a trial's resources and runs torch on exactly that many threads."""
    threads = max(1, int(cpus))

    def task(*a: Any) -> Any:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        return fn(*a)

    return ray.remote(num_cpus=cpus, num_gpus=gpus)(task)


def run_task(fn: Any, *args: Any, cpus: float, gpus: float) -> Any:
    """Run `fn(*args)` as one Ray task with a trial's resources."""
    return ray.get(_remote(fn, cpus, gpus).remote(*args))


def run_tasks(calls: list[tuple[Any, tuple[Any, ...]]], *, cpus: float, gpus: float, desc: str = "",
              progress: Any = None) -> list[Any]:
    """Run every `fn(*args)` of `calls` as Ray tasks with a trial's resources each, as many at once as the cluster
    holds (the stage, the confirmation runs, their scoring); results in the order of `calls`. `progress()`, when
    given, returns (done, total) units of work for a progress bar shown while they run."""
    from tqdm import tqdm

    refs = [_remote(fn, cpus, gpus).remote(*args) for fn, args in calls]
    pending = list(refs)
    bar = tqdm(total=progress()[1] if progress else len(refs), desc=desc, unit="it" if progress else "run",
               file=sys.stderr, disable=not desc, dynamic_ncols=True)
    with bar:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=2.0)
            bar.n = progress()[0] if progress else len(refs) - len(pending)
            bar.refresh()
    return ray.get(refs)


def can_restore(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def restore_tuner(path: str, spec: TunerSpec, *, restart_errored: bool) -> tune.Tuner:
    """Continue a sweep whose driver died: unfinished trials resume from their checkpoints."""
    _quiet_console()
    tuner = tune.Tuner.restore(
        path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=not restart_errored,
        restart_errored=restart_errored,
    )
    tuner._selftune_folder = path  # for fit's Ctrl-C message
    return tuner


def fit(tuner: tune.Tuner, metric: str = METRIC) -> list[dict[str, Any]]:
    """Run the sweep; return one plain dict per trial (id, path, config, last result, error, best checkpoint by
    `metric`, the sweep's). Raises `Interrupted`, naming the `selftune sweep --resume` command, when Ctrl-C (or
    SIGUSR1) stopped it: Ray Tune catches the signal, saves its state and returns as if the sweep had ended."""
    folder = getattr(tuner, "_selftune_folder", None)
    with _SigintWatch() as watch:
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C while Ray saved its state, or Ray's handler turned off
            raise Interrupted(_interrupted_message(folder, None)) from None
    if watch.interrupted:
        raise Interrupted(_interrupted_message(folder or grid.experiment_path, grid))
    out = []
    for result in grid:
        best_ck = None
        if result.best_checkpoints:
            best_ck = max(result.best_checkpoints, key=lambda pair: pair[1].get(metric, float("-inf")))[0].path
        out.append(
            {
                "trial_id": (result.metrics or {}).get("trial_id"),
                "path": result.path,
                "config": result.config,
                "last_result": result.metrics,
                "error": result.error is not None,
                "best_checkpoint": best_ck,
            }
        )
    return out


# ---------------------------------------------------------------------- Ctrl-C


class _SigintWatch:
    """Whether Ctrl-C stopped `Tuner.fit`. Ray Tune installs its own SIGINT handler for the run, which stops the
    sweep, saves its state and puts back the handler that was there before; fit then returns normally. This puts a
    handler of its own in place first: found in place again after fit (while Ray's handling is on), Ray put it back,
    so Ray got the signal. Called itself (Ray's handler already put back: a second Ctrl-C, or
    TUNE_DISABLE_SIGINT_HANDLER set), it raises KeyboardInterrupt as Python's default handler does."""

    def __init__(self) -> None:
        self.installed = False
        self.called = False
        self.interrupted = False
        self.previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.called = True
        raise KeyboardInterrupt

    def __enter__(self) -> _SigintWatch:
        try:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self.installed = True
        except ValueError:  # not the main thread: Ray installs no handler either, and Ctrl-C reaches no thread here
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.installed:
            return
        self.interrupted = self.called or (_ray_catches_sigint() and signal.getsignal(signal.SIGINT) == self._handler)
        signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)


def _sigint_caught() -> bool:
    """Inside `fit`: whether Ray Tune has caught a Ctrl-C (it put back the handler `_SigintWatch` installed)."""
    handler = signal.getsignal(signal.SIGINT)
    return _ray_catches_sigint() and isinstance(getattr(handler, "__self__", None), _SigintWatch)


def _ray_catches_sigint() -> bool:
    """Ray Tune's own SIGINT handling is on (its TUNE_DISABLE_SIGINT_HANDLER unset)."""
    return os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0").strip() in ("", "0")


def sweep_folder_of(experiment_dir: str) -> str:
    """The sweep folder `selftune sweep --resume` takes for a Ray experiment of it: the experiment's own folder, or,
    for the tuned control search (<sweep>/control_search, an experiment inside the sweep), the sweep's."""
    head, _, name = experiment_dir.rstrip("/").rpartition("/")
    if name == CONTROL_SEARCH_DIR and head:
        return head
    return experiment_dir.rstrip("/")


def _interrupted_message(experiment_dir: str | None, grid: Any) -> str:
    """What the user reads after Ctrl-C: where the sweep stopped, that nothing is presented as final, how to go on."""
    counts = ""
    if grid is not None:
        ended = sum(1 for r in grid if r.error is not None or (r.metrics or {}).get("done"))
        counts = f" ({len(grid)} started, {ended} ended)"
    during = "its tuned control search" if experiment_dir and sweep_folder_of(experiment_dir) != \
        experiment_dir.rstrip("/") else "its trials"
    hint = (f". Continue it with `selftune sweep --resume {sweep_folder_of(experiment_dir)}`: unfinished trials go on "
            "from their checkpoints") if experiment_dir else ""
    return (f"Ctrl-C stopped the sweep during {during}{counts}; it is not finished, so no best config or verdict was "
            f"written{hint}")


class _NoRestoreHint(logging.Filter):
    """Drops Ray's "Resume experiment with: Tuner.restore(...)" after Ctrl-C: selftune's message says
    `selftune sweep --resume`, which also resumes the Optuna study, the stage and the verdict."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoRestoreHint())
