"""Planning a sweep: every check before anything starts (the sweep file, the data, the base config, the space, the
storage, the shared stage, the verdict's keys), resolved into one `SweepPlan` that the rest of the driver reads.

The plan holds the sweep file (`plan.sweep`) and what planning resolved (the base config, the data, max_t, the
grace period, the folders); the Ray experiment (`adapter.tuner_spec`) takes the plan, not copies of its fields.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selftune import __version__
from selftune.errors import SelftuneError
from selftune.fileio import LOCK_FILE
from selftune.search.sweepfile import SweepConfig
from selftune.search.verdict import self_training_methods
from selftune.spaces import SpaceContext, check_space
from selftune.sweepfolder import (
    JOURNAL_FILE,
    REMOTE_SCHEMES,
    STAGE_DIR,
    SWEEP_FILE,
    experiment_path,
    sweep_rungs,
)

ARMS = ("self_training", "supervised")  # the verdict's two arms, each retrained with the same fresh seeds


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

    @property
    def verdict(self) -> bool:
        """Whether the sweep ends with a verdict: a control, and self-training methods to compare with it."""
        return self.sweep.control != "none" and bool(set(self.methods) & set(self_training_methods()))

    @property
    def confirm_runs(self) -> int:
        """The most confirmation runs the verdict may train, each max_t long: both arms x confirm_max_seeds. Their
        compute is reserved from the sweep's budgets before any trial starts."""
        return len(ARMS) * self.sweep.max_seeds if self.verdict else 0

    @property
    def confirm_looks(self) -> tuple[int, ...]:
        """The seeds per arm at each of the verdict's looks (3, 5 -> (3, 5)); none without a verdict."""
        from selftune.search.sequential import looks

        s = self.sweep
        return tuple(looks(min(s.confirm_seeds, s.max_seeds), s.max_seeds)) if self.verdict else ()

    @property
    def trial_budget_iters(self) -> int | None:
        """The trials' budget_iters: all of the sweep's; or, when a tuned control search follows (as many iterations
        as the best self-training method's trials ran), half of what the stage and the confirmation leave, so both
        fit in budget_iters."""
        budget = self.sweep.budget_iters
        if budget is not None and self.verdict and self.sweep.control == "tuned" and "supervised" not in self.methods:
            budget -= (budget - self.stage_iters - self.confirm_runs * self.max_t) // 2
        return budget

    @property
    def rungs(self) -> list[float]:
        """The iterations where ASHA compares trials (none without ASHA), as analysis reads them from meta()."""
        return sweep_rungs(self.meta())

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
    _check_metric_classes(sweep, summary)
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
        refuse_existing(experiment_dir, sweep.name)
    if sweep.optuna_storage:
        optuna_storage = sweep.optuna_storage
    elif storage.startswith(REMOTE_SCHEMES):  # a journal file needs a local (or NFS) path
        optuna_storage = "journal:" + str(Path.cwd() / f"optuna_{sweep.name}.log")
    else:
        optuna_storage = "journal:" + str(Path(experiment_dir) / JOURNAL_FILE)
    _check_fair_share(sweep, methods)
    stage_model, stage_iters = _check_shared_stage(sweep, base, methods, summary.class_names, experiment_dir)
    plan = SweepPlan(
        sweep=sweep, base=base.to_dict(), data_root=data_root, num_classes=k, class_names=list(summary.class_names),
        fingerprint=dataset_fingerprint(Path(data_root)), ctx=ctx, max_t=max_t, grace_period=grace,
        storage=storage, experiment_dir=experiment_dir, optuna_storage=optuna_storage, stage_model=stage_model,
        stage_iters=stage_iters, methods=tuple(methods),
    )
    _check_control(plan)
    return plan


def refuse_existing(experiment_dir: str, name: str) -> None:
    """A new sweep needs an unused sweep folder (its lock file alone, left by a launch that failed, is unused)."""
    if experiment_dir.startswith(REMOTE_SCHEMES) or not Path(experiment_dir).is_dir():
        return
    if any(p.name != LOCK_FILE for p in Path(experiment_dir).iterdir()):
        raise SelftuneError(
            f"a sweep named {name!r} already exists at {experiment_dir}; continue it with "
            f"`selftune sweep --resume {experiment_dir}` or choose another name"
        )


def check_same_data(plan: SweepPlan, meta: dict[str, Any], path: str) -> None:
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


def _check_control(plan: SweepPlan) -> None:
    """The verdict's keys against what the space can serve; fails naming the key and value."""
    sweep, methods, experiment_dir, max_t = plan.sweep, plan.methods, plan.experiment_dir, plan.max_t
    if sweep.control == "none":
        if sweep.control_trials is not None:
            raise SelftuneError(f"control_trials {sweep.control_trials}: only a tuned control search uses it, and "
                                "control is 'none' (no verdict); drop control_trials or set control: tuned")
        return
    if not plan.verdict:
        raise SelftuneError(f"control {sweep.control!r}: space {sweep.space!r} has no self-training method (its "
                            f"methods: {', '.join(methods)}), so there is nothing to compare with a control; set "
                            "control: none (--control none)")
    if experiment_dir.startswith(REMOTE_SCHEMES):
        raise SelftuneError(f"control {sweep.control!r}: the verdict's confirmation runs train into the sweep folder, "
                            f"which must be a local or shared (NFS) path, not {experiment_dir}; or set control: none")
    if sweep.budget_iters is not None:
        reserve = plan.confirm_runs * max_t + plan.stage_iters
        if sweep.budget_iters <= reserve:
            raise SelftuneError(
                f"budget_iters {sweep.budget_iters} leaves nothing for the trials: the shared stage ({plan.stage_iters}) "
                f"and the verdict's confirmation runs ({len(ARMS)} arms x confirm_max_seeds {sweep.max_seeds} x max_t "
                f"{max_t}) "
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


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".selftune-write-check-"):
            pass
    except OSError as exc:
        raise SelftuneError(f"storage path {path} is not writable ({exc.strerror or exc})") from None


def stage_config(base: Any, iterations: int) -> Any:
    """The shared first stage: the base config's model, supervised, for `iterations` steps."""
    return base.as_supervised(max_iters=iterations, log_images=False)


def fair_share(methods: tuple[str, ...] | list[str], startup: int, per_method: int = 1) -> tuple[dict[str, Any], ...]:
    """The first trials of a space over several methods: the methods in turn, `per_method` whole cycles (more when
    TPE's random start-up needs them), so every method is tried before TPE chooses (a categorical choice alone gave
    the demo's 12 trials no rounds trial at all). Only the method is fixed; the other knobs are sampled as usual."""
    if len(methods) < 2:
        return ()
    cycles = max(per_method, math.ceil(startup / len(methods)))
    return tuple({"method": m} for _ in range(cycles) for m in methods)


def _check_metric_classes(sweep: SweepConfig, summary: Any) -> None:
    """A metric of one class (val_iou/<class>; F1, precision, recall, positive IoU and AUC: the positive class)
    needs that class in val, where the trials are ranked, and in test, where the verdict scores: else it is NaN
    after all the work ("+nan points, 95% CI [-100, +100]"). Refused naming the class and the split."""
    from selftune.trainable.records import metric_names

    name = sweep.metric.removeprefix("val_").removesuffix("_raw")
    keys = metric_names(list(summary.class_names))
    if name.startswith("iou/") and name[4:] in keys:
        c = keys.index(name[4:])
    elif name in ("f1", "precision", "recall", "pos_iou", "auc") and len(summary.class_names) == 2:
        c = 1
    else:
        return
    splits = ["val"] + (["test"] if "test" in summary.classes_in and sweep.control != "none" else [])
    absent = [split for split in splits if not summary.classes_in.get(split, (True,) * (c + 1))[c]]
    if absent:
        raise SelftuneError(
            f"metric {sweep.metric!r} needs class {summary.class_names[c]!r}, which has no pixels in "
            f"{' or '.join(absent)} ({'where the trials are ranked' if absent[0] == 'val' else 'where the verdict scores'}"
            f"): it could not be measured; label some {summary.class_names[c]!r} pixels there or choose another metric "
            "(val_miou)")


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


__all__ = ["ARMS", "SweepPlan", "check_same_data", "fair_share", "plan_sweep", "refuse_existing", "stage_config"]
