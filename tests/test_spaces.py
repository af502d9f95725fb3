"""Spaces: named, checked before launch, applied to the config; driven through real Optuna trials."""

from __future__ import annotations

import optuna
import pytest

from selftune.errors import ConfigError
from selftune.spaces import SPACES, SpaceContext, apply_params, call_space, check_space, get_space
from selftune.trainable.config import TrainConfig, demo_config

CTX = SpaceContext(num_classes=7, max_iters=1200, eval_every=50)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_named_space_checks_and_samples_valid_configs(name: str) -> None:
    base = demo_config()
    report = check_space(name, base, CTX)
    assert report.params, name
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        constants = call_space(get_space(name), trial, CTX)
        cfg = apply_params(base, {**trial.params, **constants})
        assert len(cfg.thresholds) == 7
        study.tell(trial, 0.5)


def test_conditional_parameters_only_exist_when_enabled() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_with, seen_without = False, False
    for _ in range(40):
        trial = study.ask()
        call_space(SPACES["wide"], trial, CTX)
        if trial.params["strong_aug"]:
            assert {"cutmix_prob", "hue_jitter", "grayscale_prob", "blur_prob"} <= trial.params.keys()
            seen_with = True
        else:
            assert not {"cutmix_prob", "hue_jitter", "grayscale_prob", "blur_prob"} & trial.params.keys()
            seen_without = True
        if trial.params["threshold_schedule"] == "constant":
            assert "threshold_ramp_iters" not in trial.params
        study.tell(trial, 0.0)
    assert seen_with and seen_without


def test_base_plus_offsets_give_per_class_thresholds_clipped() -> None:
    cfg = apply_params(demo_config(), {"threshold_base": 0.9, "threshold_offset[1]": 0.15, "threshold_offset[2]": -0.1})
    assert cfg.thresholds[0] == pytest.approx(0.9)
    assert cfg.thresholds[1] == 1.0  # clipped
    assert cfg.thresholds[2] == pytest.approx(0.8)


def test_independent_threshold_changes_only_its_class() -> None:
    base = demo_config()
    cfg = apply_params(base, {"thresholds[3]": 0.33})
    assert cfg.thresholds[3] == 0.33
    assert cfg.thresholds[:3] == base.thresholds[:3]


def test_ranges_scale_with_run_length() -> None:
    short = check_space("thresholds", demo_config(), SpaceContext(7, 200, 25))
    long = check_space("thresholds", TrainConfig(), SpaceContext(7, 75000, 500))
    assert short.params["warmup_iters"].high == 10
    assert long.params["warmup_iters"].high == 3750


def test_unknown_space_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown space 'thresold'.*thresholds"):
        get_space("thresold")


def bad_field(trial, ctx):
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)


def empty_range(trial, ctx):
    trial.suggest_float("lr", 1e-3, 1e-3)


def inverted_range(trial, ctx):
    trial.suggest_int("warmup_iters", 100, 10)


def out_of_bounds(trial, ctx):
    trial.suggest_float("ema_decay", 0.9, 1.5)


def computes(trial, ctx):
    trial.set_user_attr("x", 1)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (bad_field, r"'learning_rate' is not a config field"),
        (empty_range, r"'lr' has an empty range"),
        (inverted_range, r"'warmup_iters' has an inverted range \[100, 10\]"),
        (out_of_bounds, r"ema_decay must be in \[0, 1\], got 1.5"),
        (computes, r"may only call trial.suggest"),
    ],
)
def test_bad_spaces_fail_before_launch_naming_the_parameter(fn, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_space(fn, demo_config(), CTX)


def test_module_function_spaces_load(tmp_path, monkeypatch) -> None:
    (tmp_path / "myspaces.py").write_text(
        "def small(trial):\n    trial.suggest_float('lr', 1e-4, 1e-3, log=True)\n    return {'st_weight': 1.0}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    report = check_space("myspaces:small", demo_config(), CTX)
    assert set(report.params) == {"lr"} and report.constants == {"st_weight": 1.0}
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        get_space("myspaces:nope")
