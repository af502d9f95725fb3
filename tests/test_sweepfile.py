"""The sweep file: typed, unknown keys fail by name."""

from __future__ import annotations

import pytest

from selftune.errors import ConfigError
from selftune.search.sweepfile import SweepConfig, demo_sweep


def test_unknown_key_is_named_with_a_suggestion(tmp_path) -> None:
    f = tmp_path / "sweep.yaml"
    f.write_text("name: x\nnum_sample: 4\n")
    with pytest.raises(ConfigError, match=r"unknown sweep key 'num_sample' \(did you mean 'num_samples'\?\)"):
        SweepConfig.from_yaml(f)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"searcher": "bayes"}, "searcher must be one of"),
        ({"scheduler": "pbt"}, "scheduler must be one of"),
        ({"num_samples": 0}, "num_samples must be"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial above 1 must be whole"),
        ({"reduction_factor": 1}, "reduction_factor must be > 1"),
        ({"base": [1, 2]}, "'base' must be a mapping"),
        ({"mlflow_uri": "file:///tmp/mlruns"}, "MLflow's file store cannot hold"),
        ({"num_samples": -1}, "needs a time_budget_s or a budget_iters"),
        ({"nice_trials": "maybe"}, "nice_trials must be true or false, got 'maybe'"),
        ({"control": 1}, r"control must be one of tuned, base, none \(or true / false\), got 1"),
    ],
)
def test_bad_values_fail_by_name(changes, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SweepConfig.from_dict(changes)


def test_base_keys_are_train_config_keys() -> None:
    with pytest.raises(ConfigError, match=r"sweep 'base': unknown config key 'lr_max'"):
        SweepConfig.from_dict({"base": {"lr_max": 1}}).base_train_config()


def test_demo_sweep_is_small_and_valid() -> None:
    sweep = demo_sweep()
    base = sweep.base_train_config()
    assert sweep.data is None and base.max_iters <= 600


@pytest.mark.parametrize(
    ("num_samples", "budget_iters", "max_t", "expected"),
    [
        (30, None, None, 10),  # Optuna's default for sweeps of 30+ trials
        (12, None, None, 4),  # a third of the trials
        (4, None, None, 3),  # never below 3
        (-1, 900, 150, 3),  # budget of 6 full trials: TPE must start modelling after 3, not 10
        (-1, 6000, 150, 10),  # 40 full trials
        (-1, None, 150, 10),  # time budget only: the count is unknown
    ],
)
def test_tpe_startup_follows_the_expected_number_of_trials(num_samples, budget_iters, max_t, expected) -> None:
    from selftune.search.adapter import startup_trials

    assert startup_trials(num_samples, budget_iters, max_t) == expected
