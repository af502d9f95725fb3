"""The sweep file: one typed object for data, base config, space, searcher, scheduler, resources, storage.

Documented key by key in docs/sweep.md. Unknown keys fail by name, like `TrainConfig`; every value is converted
to its key's type or refused naming the key, the value and the fix (`selftune.coerce`, the train config's rule): integers, finite numbers,
durations for the `_s` keys ("10m", "1h30m"), strings, mappings.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from selftune.coerce import coerce
from selftune.errors import ConfigError
from selftune.trainable.config import TrainConfig, demo_config, read_yaml_mapping, reject_unknown

SEARCHERS = ("tpe", "tpe-stock", "random")
SCHEDULERS = ("asha", "fifo")
SHARED_STAGE_KEYS = ("max_iters", "checkpoint")
CONTROL_MODES = ("tuned", "base", "none")  # sweep key control
MAX_INT = 2**63 - 1  # what Ray, Optuna and numpy take as an integer
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}")  # a sweep name: its folder, Ray's experiment, Optuna's study


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs. Iteration counts are optimizer steps of the loop."""

    name: str = "selftune"  # experiment folder name under storage; fixed so the sweep can resume
    data: str | None = None  # dataset root; None uses the built-in demo data
    base: dict[str, Any] = field(default_factory=dict)  # TrainConfig keys every trial starts from
    base_config: str | None = None  # or a train config YAML to start from (base overrides it)
    space: str = "thresholds"  # a space name from selftune.spaces, or module:function
    metric: str = "val_miou"  # what the sweep maximises: ASHA's rungs, Optuna's objective (its best value in each
    # trial), checkpoint ranking, export and best_config.yaml; val_miou, val_miou_raw, val_iou/<class>, or on a
    # 2-class dataset val_f1, val_precision, val_recall, val_pos_iou, val_auc (`check_metric`); never a test_ one
    searcher: str = "tpe"  # tpe (honest bookkeeping) | tpe-stock (Ray's OptunaSearch as is) | random
    seed: int = 0  # seeds the sampler
    scheduler: str = "asha"  # asha | fifo
    max_t: int | None = None  # longest a trial may run, in iterations; None: base max_iters
    grace_period: int | None = None  # None: covers warmup + ST start + ST ramp over the whole space
    reduction_factor: float = 3.0  # ASHA keeps 1/reduction_factor of trials at each rung
    num_samples: int = 8  # number of trials (-1: until time_budget_s or budget_iters runs out)
    time_budget_s: float | None = None  # stop starting and running trials after this many seconds
    budget_iters: int | None = None  # compute budget: stop the sweep once trials ran this many iterations in all
    max_concurrent: int = 2  # trials running at once
    cpus_per_trial: float = 1.0  # each trial sets torch/OMP threads from this
    gpus_per_trial: float = 0.0  # fractional values share a GPU (memory is not isolated)
    gpu_wait_s: float = 0.0  # on an autoscaling cluster, wait this long for GPU nodes before failing
    storage: str = "selftune_results"  # local folder, NFS path, or s3:// / gs:// URI
    optuna_storage: str | None = None  # None: a JournalStorage file in the experiment folder; or an RDB URL
    keep_checkpoints: int = 1  # best checkpoints kept per trial (Ray always keeps the latest too)
    max_failures: int = 0  # retries of a trial that raised
    address: str | None = None  # Ray cluster address ("auto" to attach); None starts Ray in-process
    num_cpus: int | None = None  # CPUs of the in-process Ray (None: all); ignored with address
    reuse_actors: bool = True
    nice_trials: bool = False  # in-process Ray only: keep Ray's nice level (15) for trial workers; by default they
    # run at normal priority, so a sweep beside other work on a shared workstation is not starved
    wandb_project: str | None = None  # log trials to W&B through Ray's callback (needs wandb)
    mlflow_uri: str | None = None  # log trials to MLflow through Ray's callback: sqlite:///mlflow.db or http(s)://
    verbose: int = 1  # console: 0 silent, 1 selftune's progress lines, 2 Ray's trial tables, 3 more
    shared_stage: dict[str, Any] | None = None  # round 1 trained once for every `rounds` trial, before the trials:
    # {max_iters: N} trains it (supervised, the base config) into <sweep>/shared_stage; {checkpoint: PATH} takes an
    # earlier run's model instead. Its iterations count once toward budget_iters
    control: str = "tuned"  # the verdict's supervised arm: tuned (the best supervised trial; a space without
    # supervised trials gets a tuned supervised control search first) | base (the base config, untuned, labelled
    # so) | none (no verdict). true / false are read as tuned / none
    confirm_seeds: int = 3  # the verdict retrains both arms' best configs with this many fresh seeds each: its first look
    confirm_max_seeds: int | None = None  # the most seeds per arm: while the interval neither excludes 0 nor is futile,
    # waves of confirm_seeds more, the 5% error spent across the looks in advance (O'Brien-Fleming); None: 5, or
    # confirm_seeds when larger. The budget reserves the most
    trials_per_method: int = 1  # fair share: a space over several methods runs each this many times (in turn, only
    # the method fixed) before TPE chooses; more when TPE's random start-up needs more trials
    confirm_score: str = "average"  # which weights of a confirmation run are scored on test (`verdict.SCORES`): best
    # (its best val evaluation), last_mean (its last confirm_last evaluations' models), average (their weights):
    # the lowest seed spread of the three on the demo, and no pick on val (docs/benchmarks.md, "Scoring a run")
    confirm_last: int = 4  # the evaluations confirm_score last_mean and average take, from the end of each run
    control_trials: int | None = None  # trials of the tuned control search (a space without supervised trials);
    # None: as many as the best self-training method got

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SweepConfig:
        data = dict(data or {})
        reject_unknown(data, [f.name for f in fields(cls)], "sweep key")
        if "base" in data and not isinstance(data["base"], dict):
            raise ConfigError(f"sweep key 'base' must be a mapping of train config keys, got {data['base']!r}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        path = Path(path)
        data = read_yaml_mapping(path, "sweep file")
        if not data:  # an empty file would run a whole default sweep on the demo data
            raise ConfigError(f"sweep file {path} is empty; it needs at least `data:` (your dataset), usually "
                              "`space:` and `base:` too (docs/sweep.md); `selftune sweep --demo` runs the demo sweep")
        try:
            sweep = cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if sweep.base_config and not Path(sweep.base_config).is_absolute():
            sweep = dataclasses.replace(sweep, base_config=str(path.parent / sweep.base_config))
        return sweep

    def replace(self, **changes: Any) -> SweepConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        if isinstance(self.control, bool):  # control: true / false, as sweeps before the tuned control wrote it
            object.__setattr__(self, "control", "tuned" if self.control else "none")
        if self.control not in CONTROL_MODES:
            raise ConfigError(f"control must be one of {', '.join(CONTROL_MODES)} (or true / false), got "
                              f"{self.control!r}")
        hints = _hints()
        for f in fields(self):  # YAML gives '3' for num_samples, 10m for time_budget_s, 123 for name
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if not NAME.fullmatch(self.name):
            raise ConfigError(f"name {self.name!r} must be a folder name of at most 100 letters, digits and _ . + = -, "
                              "starting with a letter or digit (it names the sweep folder, Ray's experiment and the "
                              "Optuna study)")
        for key in ("space", "storage"):
            if not getattr(self, key).strip():
                raise ConfigError(f"{key} must not be empty")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1 (numpy seeds the sampler), got {self.seed}")
        if not 0 <= self.verbose <= 3:
            raise ConfigError(f"verbose must be 0, 1, 2 or 3, got {self.verbose}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1 (or null for all), got {self.num_cpus}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures must be >= 0 (or -1: retry forever), got {self.max_failures}")
        if self.gpu_wait_s < 0:
            raise ConfigError(f"gpu_wait_s must be >= 0, got {self.gpu_wait_s!r}")
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ConfigError(f"metric must be a metric name such as val_miou or val_f1, got {self.metric!r}")
        if self.metric.startswith("test_"):
            raise ConfigError(f"metric {self.metric!r} is scored on the test split, which the tuner must never see; "
                              "choose a val_ metric (val_miou, val_f1, ...)")
        if self.searcher not in SEARCHERS:
            raise ConfigError(f"searcher must be one of {', '.join(SEARCHERS)}; got {self.searcher!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {self.scheduler!r}")
        if self.num_samples == 0 or self.num_samples < -1:
            raise ConfigError(f"num_samples must be >= 1 (or -1 with time_budget_s), got {self.num_samples!r}")
        if self.num_samples == -1 and not (self.time_budget_s or self.budget_iters):
            raise ConfigError("num_samples -1 (unlimited) needs a time_budget_s or a budget_iters")
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be >= 1, got {self.max_concurrent!r}")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial!r}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial!r}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigError(f"gpus_per_trial above 1 must be whole, got {self.gpus_per_trial!r}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor must be > 1, got {self.reduction_factor!r}")
        for key in ("max_t", "grace_period"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ConfigError(f"{key} must be >= 1, got {v!r}")
        if self.budget_iters is not None and self.budget_iters < 1:
            raise ConfigError(f"budget_iters must be >= 1, got {self.budget_iters!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"time_budget_s must be > 0, got {self.time_budget_s!r}")
        if self.mlflow_uri and self.mlflow_uri.startswith(("file:", "/", ".")):
            raise ConfigError(
                f"mlflow_uri {self.mlflow_uri!r}: MLflow's file store cannot hold selftune's metric names "
                "(st_count and st_count/<class>); use sqlite:///path/mlflow.db or an http(s):// tracking server"
            )
        if self.shared_stage is not None:
            stage = self.shared_stage
            if not isinstance(stage, dict):
                raise ConfigError(f"shared_stage must be a mapping ({{max_iters: N}} or {{checkpoint: PATH}}), got {stage!r}")
            reject_unknown(stage, list(SHARED_STAGE_KEYS), "shared_stage key")
            if ("max_iters" in stage) == ("checkpoint" in stage):
                raise ConfigError(f"shared_stage needs exactly one of max_iters or checkpoint, got {stage!r}")
            n = stage.get("max_iters")
            if "max_iters" in stage and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ConfigError(f"shared_stage max_iters must be an integer >= 1, got {n!r}")
            if "checkpoint" in stage and not (isinstance(stage["checkpoint"], str) and stage["checkpoint"].strip()):
                raise ConfigError(f"shared_stage checkpoint must be a path, got {stage['checkpoint']!r}")
        for key in ("confirm_seeds", "confirm_max_seeds", "control_trials", "trials_per_method",
                    "confirm_last"):
            v = getattr(self, key)
            if (v is not None or key in ("confirm_seeds", "trials_per_method", "confirm_last")) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{key} must be an integer >= 1, got {v!r}")
        if self.confirm_max_seeds is not None and self.confirm_max_seeds < self.confirm_seeds:
            raise ConfigError(f"confirm_max_seeds {self.confirm_max_seeds} is below confirm_seeds {self.confirm_seeds} "
                              "(the first look's seeds); set confirm_max_seeds >= confirm_seeds")
        from selftune.search.verdict import SCORES

        if self.confirm_score not in SCORES:
            raise ConfigError(f"confirm_score must be one of {', '.join(SCORES)}; got {self.confirm_score!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}")

    @property
    def max_seeds(self) -> int:
        """The most seeds per arm the verdict may run (`confirm_max_seeds`, resolved)."""
        return self.confirm_max_seeds if self.confirm_max_seeds is not None else max(5, self.confirm_seeds)

    def check_metric(self, class_names: tuple[str, ...] | list[str], binary: bool) -> None:
        """`metric` must be one the trials report and a sweep can maximise on a dataset of classes `class_names`
        (`evaluation.selectable_metrics`); else one ConfigError naming it and listing those of the mode."""
        from selftune.trainable.evaluation import selectable_metrics
        from selftune.trainable.records import metric_names

        available = selectable_metrics(metric_names(class_names))
        if self.metric in available:
            return
        import difflib

        k = len(class_names)
        mode = "binary mode" if binary else f"a {k}-class dataset"
        hint = difflib.get_close_matches(self.metric, available, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        more = "" if k == 2 else "; val_f1, val_precision, val_recall, val_pos_iou and val_auc need 2 classes"
        raise ConfigError(f"sweep key metric {self.metric!r} is not a metric the trials report for {mode}{extra}; "
                          f"available: {', '.join(available)}{more}")

    def base_train_config(self) -> TrainConfig:
        """The config every trial starts from: the file (or the demo defaults), then `base`."""
        if self.base_config:
            start = TrainConfig.from_yaml(self.base_config).to_dict()
        elif self.data is None:
            start = demo_config().to_dict()
        else:
            start = {}
        try:
            return TrainConfig.from_dict({**start, **self.base})
        except ConfigError as exc:
            raise ConfigError(f"sweep 'base': {exc}") from None


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(SweepConfig)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` as sweep key `key`'s type (`selftune.coerce`, the train config's rule too), no larger than Ray,
    Optuna and numpy take (the seed's own, smaller range is checked with its name)."""
    value = coerce(key, value, hint)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT and key != "seed":
        raise ConfigError(f"{key} is too large: {value} (at most {MAX_INT})")
    return value


DEMO_ITERS = 300  # the demo sweep's trial length; the lengths below are its fractions of it
DEMO_LENGTHS = {"eval_every": 25, "warmup_iters": 10, "st_start_iter": 25, "st_rampup_iters": 50,
                "threshold_ramp_iters": 600}  # demo_config's 600 is kept as is at 300 iterations
DEMO_STAGE_ITERS = 150
DEMO_TIME_BUDGET_S = 570.0  # stage, trials and confirmation; Ray's start and the summary fit in 10 minutes
DEMO_DECODER = (64, 32, 16, 16, 16)  # 2.3x faster steps than smp's (256, 128, 64, 32, 16) at -0.3 supervised val mIoU
# points (3 seeds; bench/bench_decoder.py, docs/benchmarks.md); (32, 16, 16, 8, 8) was 3.4x but -2.2 points


def demo_sweep(base: dict[str, Any] | None = None, **overrides: Any) -> SweepConfig:
    """`selftune sweep --demo`: a complete small sweep on the demo data, sized for 2 CPU cores, 10 minutes:
    the `methods` space (each method twice in turn, then TPE), a shared supervised first stage, and the verdict
    (both arms' best configs retrained with 3 fresh seeds each, up to 5 while unclear). The time budget counts the
    stage, the trials and the confirmation, and is a safety net: the demo is sized to end before it.

    `base`: train config keys set over the demo's (`--set`). The lengths the demo derives from its run length
    (evaluation interval, warmup, self-training start and ramp, threshold ramp, the shared stage) follow a changed
    run length (`max_iters` in `base`, or the `max_t` override) unless they are set too."""
    sets = dict(base or {})
    length = overrides.get("max_t") or sets.get("max_iters") or DEMO_ITERS
    scale = length / DEMO_ITERS if isinstance(length, int) and not isinstance(length, bool) and length > 0 else 1.0

    def scaled(n: int) -> int:
        return n if scale == 1.0 else max(1, round(n * scale))

    # the demo base, resolved: the same with --data X and on resume, whatever the data (issue 19)
    demo_base = demo_config(encoder="tu-mobilenetv3_small_050", decoder_channels=list(DEMO_DECODER),
                            max_iters=DEMO_ITERS, patience=4,
                            **{k: scaled(v) for k, v in DEMO_LENGTHS.items()}).to_dict()
    from selftune.trainable.methods import method_names

    sweep = dict(
        name="demo", data=None, base={**demo_base, **sets}, space="methods", max_concurrent=2,
        num_samples=max(12, 2 * len(method_names()) + 2),  # every method twice in turn, then TPE chooses
        trials_per_method=2, cpus_per_trial=1.0, reduction_factor=3.0, time_budget_s=DEMO_TIME_BUDGET_S,
        shared_stage={"max_iters": scaled(DEMO_STAGE_ITERS)},
        confirm_seeds=3, confirm_max_seeds=5,  # the verdict: 3 fresh seeds per arm, 5 while the answer is unclear
    )
    sweep.update(overrides)
    return SweepConfig.from_dict(sweep)
