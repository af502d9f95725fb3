"""Adding a method is one file: a toy method with two knobs of its own and its own search piece, defined in this
module alone and registered, is a config choice with its knobs validated and refused with other methods, is searched
in `methods`, trains, resumes exactly, and runs in a tiny sweep whose report and HPARAMS show its knobs and whose
analysis counts it as self-training. The registry is the one list of methods (issues 26, 33)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selftune.errors import ConfigError
from selftune.spaces import SpaceContext, check_space
from selftune.spaces.library import methods_among
from selftune.sweepfolder import read_trials
from selftune.trainable.config import TrainConfig
from selftune.trainable.methods import (
    REGISTRY,
    Knob,
    MethodSpec,
    get_method,
    method_names,
    register,
    self_training_methods,
    unregister,
)
from selftune.trainable.methods.base import Method
from tests.helpers import crash_and_resume, read_metrics, same, same_weights, tiny_config, train_once


def check(cfg: TrainConfig) -> None:
    if cfg.strong_aug:
        raise ConfigError("strong_aug is True, but method fixed_threshold shows the student the teacher's view")
    if cfg.ft_threshold * cfg.ft_weight > 1:
        raise ConfigError(f"ft_threshold * ft_weight is {cfg.ft_threshold * cfg.ft_weight}, above 1")


def piece(trial: Any, ctx: Any) -> None:
    """Its own search piece: its two knobs."""
    trial.suggest_float("ft_threshold", 0.05, 0.2)
    trial.suggest_float("ft_weight", 0.5, 2.0, log=True)


SPEC = MethodSpec(
    name="fixed_threshold", doc="one fixed global threshold", implementation=lambda: FixedThreshold,
    self_training=True, needs_unlabeled=True, space=piece, check=check,
    knobs=(Knob("ft_threshold", 0.1, "the one threshold of every class", low=0, high=1),
           Knob("ft_weight", 1.0, "times st_weight", above=0)),
)


class FixedThreshold(Method):
    """Self-training with one fixed global threshold: the EMA teacher's pseudo-label of a pixel counts when its
    confidence is at least `ft_threshold`, whatever the class; its loss weighs `ft_weight` times the ST weight."""

    spec = SPEC

    def thresholds_at(self, it: int) -> list[float]:
        return [self.cfg.ft_threshold] * self.num_classes

    def st_weight(self, it: int) -> float:
        return super().st_weight(it) * self.cfg.ft_weight


def register_toy() -> None:
    """Register the toy method; in the sweep, Ray runs it in every worker process before its first trial (pickled
    by value, so the registry is looked up through its module, not a copy of this module's global)."""
    from selftune.trainable import methods

    if methods.REGISTRY.get(SPEC.name) is not SPEC:
        methods.register(SPEC)


toy_or_supervised = methods_among("supervised", "fixed_threshold")  # the `methods` space over two methods


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """The toy method is registered for this module's tests only."""
    register_toy()
    yield
    unregister(SPEC.name)


def toy(**changes: Any) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config(**{**dict(method="fixed_threshold", max_iters=12, eval_every=4,
                                                       st_start_iter=2, st_rampup_iters=2, lr=1e-3), **changes}))


def test_a_registered_method_is_a_config_choice_with_its_own_knobs_and_checks(tmp_path: Path) -> None:
    assert method_names()[-1] == "fixed_threshold" and get_method("fixed_threshold") is SPEC
    assert "fixed_threshold" in self_training_methods() and "supervised" not in self_training_methods()
    assert {"ft_threshold", "ft_weight"} <= set(TrainConfig.field_names())
    cfg = toy(ft_threshold=0.15, ft_weight="2")  # YAML's strings become the knob's type
    assert (cfg.method, cfg.ft_threshold, cfg.ft_weight) == ("fixed_threshold", 0.15, 2.0)
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())  # the YAML stays flat
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg and "ft_weight: 2.0" in cfg.to_yaml()
    for changes, match in [
        (dict(ft_threshold=1.5), r"ft_threshold must be in \[0, 1\], got 1.5"),
        (dict(ft_weight=0), r"ft_weight must be a positive number, got 0"),
        (dict(ft_weight="heavy"), r"ft_weight must be a number, got 'heavy'"),
        (dict(ft_threshold=0.8, ft_weight=1.5), r"ft_threshold \* ft_weight is 1.2.*, above 1"),
        (dict(strong_aug=True), r"strong_aug is True, but method fixed_threshold"),
        (dict(lambda_fm=0.5), r"lambda_fm is 0\.5, but only method s4gan uses it"),  # the others' knobs are refused
        (dict(method="nope"), r"method must be one of .*fixed_threshold; got 'nope'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            toy(**changes)
    for method in ("supervised", "ema_self_training", "rounds", "s4gan"):  # and its knobs with theirs
        with pytest.raises(ConfigError, match=rf"ft_threshold is 0.2, but only method fixed_threshold uses it "
                                              rf"\(method is '{method}'\)"):
            TrainConfig.from_dict({"method": method, "ft_threshold": 0.2})
    assert TrainConfig.from_dict({"method": "s4gan"}).ft_threshold == 0.1  # at its default it is no one's business
    assert cfg.as_supervised().ft_weight == 1.0
    with pytest.raises(ValueError, match="already"):
        register(MethodSpec(name="fixed_threshold", doc="an impostor", implementation="x:Y"))
    with pytest.raises(ValueError, match="knob 'lambda_fm' is already method s4gan's"):
        register(MethodSpec(name="thief", doc="", implementation="x:Y", knobs=(Knob("lambda_fm", 0.1, ""),)))
    with pytest.raises(ValueError, match="knob 'lr' is already a config field"):
        register(MethodSpec(name="thief", doc="", implementation="x:Y", knobs=(Knob("lr", 0.1, ""),)))
    assert "thief" not in REGISTRY


def test_the_methods_space_offers_it_and_searches_its_own_piece() -> None:
    import optuna

    from selftune.spaces import SPACES, apply_params, call_space

    ctx = SpaceContext(num_classes=7, max_iters=12, eval_every=4)
    report = check_space("methods", toy(), ctx)
    assert "fixed_threshold" in report.params["method"].choices and {"ft_threshold", "ft_weight"} <= report.params.keys()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for method in method_names():
        study.enqueue_trial({"method": method})
        trial = study.ask()
        call_space(SPACES["methods"], trial, ctx)
        assert ("ft_threshold" in trial.params) == (method == "fixed_threshold")  # its knobs in its branch only
        assert {"lr", "warmup_iters"} <= trial.params.keys()  # the knobs every method shares
        if method == "fixed_threshold":
            cfg = apply_params(toy(), trial.params)
            assert (cfg.ft_threshold, cfg.ft_weight) == (trial.params["ft_threshold"], trial.params["ft_weight"])


@pytest.fixture(scope="module")
def unbroken(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return train_once(toy(), tiny_data, tmp_path_factory.mktemp("toy") / "run")


def test_the_toy_method_trains_with_its_threshold(unbroken: tuple[Path, Any]) -> None:
    _, reports = unbroken
    metrics = [m for m, _ in reports]
    assert [m["iteration"] for m in metrics] == [4, 8, 12]
    assert all(m["threshold/background"] == pytest.approx(0.1) for m in metrics)
    assert sum(m["st_count"] for m in metrics) > 0  # it self-trained


def test_the_toy_method_resumes_exactly(unbroken: tuple[Path, Any], tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert crash_and_resume(toy(), tiny_data, run, at=8).status == "completed"
    assert same(read_metrics(run), read_metrics(unbroken[0]))
    assert same_weights(run, unbroken[0])  # the student and its EMA, bit for bit


def test_the_toy_method_runs_in_a_tiny_sweep_and_analysis_reads_its_traits(tiny_data: Path, tmp_path: Path) -> None:
    import ray
    from ray import cloudpickle

    from selftune.analysis import analyze
    from selftune.analysis.report import self_training_trials
    from selftune.analysis.result import own_knobs
    from selftune.analysis.tables import load_sweep
    from selftune.search import run_sweep
    from selftune.search.sweepfile import SweepConfig
    from selftune.search.tensorboard import declared_hparams

    # Ray's workers are other processes: they get the toy method by value (this module is not importable there)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    base = tiny_config(max_iters=6, eval_every=3, st_start_iter=2, st_rampup_iters=2, log_images=False)
    sweep = SweepConfig(
        name="toy", data=str(tiny_data), base=base, space=f"{__name__}:toy_or_supervised", searcher="random",
        num_samples=2, max_concurrent=1, scheduler="fifo", storage=str(tmp_path), num_cpus=2, verbose=0,
        control=False,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": register_toy})
    try:
        summary = run_sweep(sweep)
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    trials = read_trials(summary.experiment_dir)
    assert sorted(t.params["method"] for t in trials) == ["fixed_threshold", "supervised"]  # each tried first
    for t in trials:
        cfg = TrainConfig.from_yaml(Path(t.path) / "train" / "config.yaml")
        assert cfg.method == t.params["method"]
        rows = read_metrics(Path(t.path) / "train")
        assert [r["iteration"] for r in rows] == [3, 6] and rows[-1]["status"] == "completed"
        if cfg.method == "fixed_threshold":
            assert (cfg.ft_threshold, cfg.ft_weight) == (t.params["ft_threshold"], t.params["ft_weight"])
    union, _ = declared_hparams(trials)
    assert {"ft_threshold", "ft_weight", "method"} <= union.keys()  # TensorBoard's HPARAMS columns
    loaded = load_sweep(summary.experiment_dir)
    st = self_training_trials(loaded)
    assert list(loaded.trials.loc[st, "param.method"]) == ["fixed_threshold"]  # its trait, not "not supervised"
    a = analyze(summary.experiment_dir, out=str(tmp_path / "report"))
    table = (tmp_path / "report" / "trials.csv").read_text().splitlines()[0]
    assert "param.ft_threshold" in table and "param.ft_weight" in table  # the report's trial table
    toy_row = a.trials[a.trials["param.method"] == "fixed_threshold"].iloc[0]
    assert "ft_threshold=" in own_knobs(a, toy_row, top=20)  # the top table's "its own knobs"
    assert a.methods is not None and set(a.methods["method"]) == {"fixed_threshold", "supervised"}
