"""The sweep file: one typed object for data, base config, space, searcher, scheduler, resources, storage.

Documented key by key in docs/sweep.md. Unknown keys fail by name, like `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from selftune.errors import ConfigError
from selftune.trainable.config import TrainConfig, demo_config, read_yaml_mapping, reject_unknown

SEARCHERS = ("tpe", "tpe-stock", "random")
SCHEDULERS = ("asha", "fifo")
SHARED_STAGE_KEYS = ("max_iters", "checkpoint")
CONTROL_MODES = ("tuned", "base", "none")  # sweep key control


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
    verbose: int = 1  # Ray's progress table: 0 silent, 1 table, 2 more
    shared_stage: dict[str, Any] | None = None  # round 1 trained once for every `rounds` trial, before the trials:
    # {max_iters: N} trains it (supervised, the base config) into <sweep>/shared_stage; {checkpoint: PATH} takes an
    # earlier run's model instead. Its iterations count once toward budget_iters
    control: str = "tuned"  # the verdict's supervised arm: tuned (the best supervised trial; a space without
    # supervised trials gets a tuned supervised control search first) | base (the base config, untuned, labelled
    # so) | none (no verdict). true / false are read as tuned / none
    confirm_seeds: int = 3  # the verdict retrains both arms' best configs with this many fresh seeds each
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
        for f in fields(self):  # YAML reads "maybe" or "yes please" as a string, which would count as true
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"{f.name} must be true or false, got {getattr(self, f.name)!r}")
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ConfigError(f"metric must be a metric name such as val_miou or val_f1, got {self.metric!r}")
        if self.metric.startswith("test_"):
            raise ConfigError(f"metric {self.metric!r} is scored on the test split, which the tuner must never see; "
                              "choose a val_ metric (val_miou, val_f1, ...)")
        if self.searcher not in SEARCHERS:
            raise ConfigError(f"searcher must be one of {', '.join(SEARCHERS)}; got {self.searcher!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {self.scheduler!r}")
        if not self.name or "/" in self.name:
            raise ConfigError(f"name must be a non-empty folder name, got {self.name!r}")
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
        if self.control not in CONTROL_MODES:
            raise ConfigError(f"control must be one of {', '.join(CONTROL_MODES)} (or true / false), got "
                              f"{self.control!r}")
        for key in ("confirm_seeds", "control_trials"):
            v = getattr(self, key)
            if (v is not None or key == "confirm_seeds") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{key} must be an integer >= 1, got {v!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}")

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


def demo_sweep(**overrides: Any) -> SweepConfig:
    """`selftune sweep --demo`: a complete small sweep on the demo data, sized for 2 CPU cores, 10 minutes:
    the `methods` space, a shared supervised first stage, and the verdict against a supervised control."""
    # the demo base, resolved: the same with --data X and on resume, whatever the data (issue 19)
    base = demo_config(encoder="tu-mobilenetv3_small_050", max_iters=300, eval_every=25, warmup_iters=10,
                       st_start_iter=25, st_rampup_iters=50, patience=4).to_dict()
    sweep = dict(
        name="demo", data=None, base=base, space="methods", num_samples=12, max_concurrent=2,
        cpus_per_trial=1.0, reduction_factor=3.0, time_budget_s=420.0, shared_stage={"max_iters": 150},
    )
    sweep.update(overrides)
    return SweepConfig.from_dict(sweep)
