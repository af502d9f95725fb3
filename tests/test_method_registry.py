"""Adding a method is one file: a toy method, defined in this module alone and registered, trains, resumes exactly
and runs in a tiny sweep. The registry is the one list of methods (issue 26)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selftune.errors import ConfigError
from selftune.sweepfolder import read_trials
from selftune.trainable.config import TrainConfig
from selftune.trainable.methods import (
    REGISTRY,
    Method,
    get_method,
    method_names,
    register,
    self_training_methods,
)
from tests.helpers import crash_and_resume, read_metrics, same, same_weights, tiny_config, train_once


class FixedThreshold(Method):
    """Self-training with one fixed global threshold: the EMA teacher's pseudo-label of a pixel counts when its
    confidence is at least THRESHOLD, whatever the class; the student sees the batch as the teacher did."""

    name = "fixed_threshold"
    self_training = True
    needs_unlabeled = True
    THRESHOLD = 0.1  # below 1/7: on the 7-class tiny data every pixel passes, so the test sees self-training

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        if cfg.strong_aug:
            raise ConfigError("strong_aug is True, but method fixed_threshold shows the student the teacher's view")

    def thresholds_at(self, it: int) -> list[float]:
        return [self.THRESHOLD] * self.num_classes


def register_toy() -> None:
    """Register the toy method; in the sweep, Ray runs it in every worker process before its first trial (pickled
    by value, so the registry is looked up through its module, not a copy of this module's global)."""
    from selftune.trainable import methods

    if methods.REGISTRY.get(FixedThreshold.name) is not FixedThreshold:
        methods.register(FixedThreshold)


def toy_space(trial: Any, ctx: Any) -> dict[str, Any]:
    trial.suggest_float("lr", 1e-4, 1e-3, log=True)
    return {"method": "fixed_threshold"}


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """The toy method is registered for this module's tests only."""
    register_toy()
    yield
    REGISTRY.pop(FixedThreshold.name, None)


def toy(**changes: Any) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config(**{**dict(method="fixed_threshold", max_iters=12, eval_every=4,
                                                       st_start_iter=2, st_rampup_iters=2, lr=1e-3), **changes}))


def test_a_registered_method_is_a_config_choice_with_its_own_checks() -> None:
    assert method_names()[-1] == "fixed_threshold" and get_method("fixed_threshold") is FixedThreshold
    assert "fixed_threshold" in self_training_methods() and "supervised" not in self_training_methods()
    assert toy().method == "fixed_threshold"
    with pytest.raises(ConfigError, match="strong_aug is True, but method fixed_threshold"):
        toy(strong_aug=True)
    with pytest.raises(ConfigError, match=r"lambda_fm is 0\.5, but only method s4gan uses it"):
        toy(lambda_fm=0.5)  # the other methods' own knobs are refused for it too
    with pytest.raises(ConfigError, match=r"method must be one of .*fixed_threshold; got 'nope'"):
        toy(method="nope")
    with pytest.raises(ValueError, match="already"):
        register(type("Impostor", (FixedThreshold,), {}))  # a name is held by one class


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


def test_the_toy_method_runs_in_a_tiny_sweep(tiny_data: Path, tmp_path: Path) -> None:
    import ray
    from ray import cloudpickle

    from selftune.search import run_sweep
    from selftune.search.sweepfile import SweepConfig

    # Ray's workers are other processes: they get the toy method by value (this module is not importable there)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    base = tiny_config(method="fixed_threshold", max_iters=6, eval_every=3, st_start_iter=2, st_rampup_iters=2,
                       log_images=False)
    sweep = SweepConfig(
        name="toy", data=str(tiny_data), base=base, space=f"{__name__}:toy_space", searcher="random",
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
    assert len(trials) == 2
    for t in trials:
        cfg = TrainConfig.from_yaml(Path(t.path) / "train" / "config.yaml")
        assert cfg.method == "fixed_threshold"
        rows = read_metrics(Path(t.path) / "train")
        assert [r["iteration"] for r in rows] == [3, 6] and rows[-1]["status"] == "completed"
