"""TrainConfig: the schema. Unknown keys and bad values fail naming the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from selftune.errors import ConfigError
from selftune.trainable.config import TrainConfig, demo_config


def test_defaults_follow_v31() -> None:
    cfg = TrainConfig()
    assert cfg.st_weight == 1.5 and cfg.lr == 3e-4 and cfg.warmup_iters == 1500 and cfg.patience == 40
    assert min(cfg.thresholds[1:]) == 0.45 and max(cfg.thresholds[1:]) == 0.60
    assert cfg.encoder_weights is None


def test_unknown_key_suggests_the_field() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'st_wieght' \(did you mean 'st_weight'\?\)"):
        TrainConfig.from_dict({"st_wieght": 2.0})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"lr": -1}, r"lr must be a positive number, got -1"),
        ({"max_iters": 2.5}, r"max_iters must be a whole number, got 2.5"),
        ({"thresholds": [0.5, 1.2]}, r"thresholds\[1\] must be in \[0, 1\], got 1.2"),
        ({"arch": "UNet"}, r"arch must be one of .*got 'UNet'"),
        ({"scale_min": 1.5, "scale_max": 1.0}, r"must satisfy 0.1 <= scale_min <= scale_max <= 10"),
        ({"strong_aug": "yes"}, r"strong_aug must be true or false, got 'yes'"),
        ({"class_weighting": "explicit"}, r"class_weights is empty"),
        ({"ema_decay": 1.5}, r"ema_decay must be in \[0, 1\], got 1.5"),
        ({"min_accept_ratio": -0.1}, r"min_accept_ratio must be in \[0, 1\], got -0.1"),
        ({"st_loss_normalization": "pixels"}, r"st_loss_normalization must be one of .*got 'pixels'"),
        ({"teacher_tta": "rot"}, r"teacher_tta must be one of none, flip, d4; got 'rot'"),
        ({"fp_dropout": 1.0}, r"fp_dropout must be in \[0, 1\), got 1.0"),
        ({"fp_weight": -1}, r"fp_weight must be a finite number >= 0, got -1"),
        ({"hue_jitter": 0.7}, r"hue_jitter must be in \[0, 0.5\], got 0.7"),
        ({"grayscale_prob": 2}, r"grayscale_prob must be in \[0, 1\], got 2"),
        ({"blur_sigma": [2.0, 0.1]}, r"blur_sigma must be \[low, high\] .*got \[2.0, 0.1\]"),
    ],
)
def test_bad_values_fail_by_name(data, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)


def test_yaml_round_trip_and_exported_form(tmp_path) -> None:
    cfg = demo_config(lr=1e-3)
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(p) == cfg
    p.write_text("provenance: {trial_id: x}\nconfig:\n" + "".join(f"  {line}\n" for line in cfg.to_yaml().splitlines()))
    assert TrainConfig.from_yaml(p) == cfg


def test_yaml_errors_name_the_file(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("lr: [\n")
    with pytest.raises(ConfigError, match=r"c\.yaml is not valid YAML"):
        TrainConfig.from_yaml(p)
    p.write_text("lrr: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'lrr'"):
        TrainConfig.from_yaml(p)


def test_class_count_checks() -> None:
    with pytest.raises(ConfigError, match="thresholds has 7 values but the dataset has 3 classes"):
        TrainConfig().check_num_classes(3)


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("lr: 3e-4\nmax_iters: 1e4\n")
    cfg = TrainConfig.from_yaml(p)
    assert cfg.lr == 3e-4 and cfg.max_iters == 10000
    with pytest.raises(ConfigError, match=r"lr must be a number, got 'fast'"):
        TrainConfig.from_dict({"lr": "fast"})


# ---------------------------------------------------------------------- schedules against the run (issue 29)


def test_a_schedule_given_longer_than_the_run_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"warmup_iters is 400, longer than the run \(max_iters 300 iterations\)"):
        TrainConfig.from_dict({"max_iters": 300, "warmup_iters": 400})
    with pytest.raises(ConfigError, match=r"st_start_iter \+ st_rampup_iters is 350, longer than the run"):
        TrainConfig.from_dict({"max_iters": 300, "st_start_iter": 100, "st_rampup_iters": 250})
    with pytest.raises(ConfigError, match=r"st_start_iter \+ threshold_ramp_iters is 320"):
        TrainConfig.from_dict({"max_iters": 300, "st_start_iter": 20, "threshold_schedule": "linear",
                               "threshold_ramp_iters": 300})
    with pytest.raises(ConfigError, match=r"longer than the run \(its shortest round, 100 iterations\)"):
        TrainConfig.from_dict({"method": "rounds", "rounds": 3, "max_iters": 300, "st_start_iter": 0,
                               "st_rampup_iters": 120})
    # supervised has no self-training schedule to finish; a constant threshold schedule has no ramp
    assert TrainConfig.from_dict({"method": "supervised", "max_iters": 300, "warmup_iters": 30, "st_start_iter": 400})
    assert TrainConfig.from_dict({"max_iters": 300, "warmup_iters": 30, "st_start_iter": 30, "st_rampup_iters": 60,
                                  "threshold_ramp_iters": 10000}).threshold_ramp_iters == 10000


def test_schedules_left_at_their_defaults_follow_a_shorter_run() -> None:
    """The 4-class case: max_iters 300 and the default 1,500-iteration warmup trained at LR <= 3e-5 throughout."""
    from selftune.trainable.config import ScheduleScaled

    with pytest.warns(ScheduleScaled, match=r"warmup_iters left at its default 1500 \(for max_iters 75000\) could "
                                            r"not finish in max_iters 300; scaled to 6"):
        cfg = TrainConfig.from_dict({"max_iters": 300})
    assert (cfg.warmup_iters, cfg.st_start_iter, cfg.st_rampup_iters) == (6, 2, 4)
    assert cfg.threshold_ramp_iters == 10000  # a constant threshold schedule has no ramp to finish
    assert TrainConfig.from_dict({"max_iters": 300, "threshold_schedule": "linear"}).threshold_ramp_iters == 40
    sup = TrainConfig.from_dict({"method": "supervised", "max_iters": 3000})
    assert (sup.warmup_iters, sup.st_start_iter) == (1500, 500)  # nothing that cannot finish: nothing scaled
    assert TrainConfig.from_dict({"max_iters": 300, "warmup_iters": 30}).warmup_iters == 30  # given: kept
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # a resolved config reads back unchanged


@pytest.mark.parametrize(("changes", "message"), [
    ({"batch_size": 1}, "batch_size is 1: the model's BatchNorm layers need at least 2 images per training batch"),
    ({"class_weights": [1.0, 2.0]}, r"class_weights is \[1.0, 2.0\] but class_weighting is 'none', which ignores it"),
    ({"round_init": "fresh"}, "round_init is 'fresh', but only method rounds uses it"),
    ({"rounds": 3}, "rounds is 3, but only method rounds uses it"),
    ({"max_iters": float("inf")}, "max_iters must be a whole number, got inf"),
    ({"patience": float("nan")}, "patience must be a whole number, got nan"),
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"seed": 2**64}, r"seed must be in \[0, 2\^32 - 1\], got 18446744073709551616"),
])
def test_knobs_the_run_would_ignore_or_crash_on_are_refused_by_name(changes: dict, message: str) -> None:
    """Issue 29: each of these was ignored without a word or crashed later (IndexError, OverflowError, BatchNorm)."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(changes)


def test_unknown_encoder_weights_fail_at_once_naming_the_known_ones() -> None:
    """Issue 29: `encoder_weights: bogus` retried the hub for about 50 s before failing; now it is refused before
    smp is asked for the model, so nothing is downloaded."""
    from selftune.trainable.model import build_model

    with pytest.raises(ConfigError, match=r"encoder_weights 'bogus' is not a weight set of encoder 'resnet18' "
                                          r"\(known: imagenet, ssl, swsl\); use null"):
        build_model(TrainConfig.from_dict({"encoder": "resnet18", "encoder_weights": "bogus"}), 3)
    with pytest.raises(ConfigError, match=r"encoder 'tu-mobilenetv3_small_050' \(known: imagenet\)"):
        build_model(TrainConfig.from_dict({"encoder": "tu-mobilenetv3_small_050", "encoder_weights": "ssl"}), 3)


def test_files_written_before_the_knobs_moved_to_their_methods_still_load() -> None:
    """Configs, an exported config and checkpoints' configs written by the code before issue 33 (each method's knobs
    were fields written in config.py) load unchanged: the YAML stays flat."""
    import json

    from selftune.trainable.methods import get_method

    folder = Path(__file__).parent / "data" / "configs_before_33"

    def unchanged(cfg: TrainConfig, written: dict) -> bool:  # fields added since (keep_last; issue 34's heads and
        added = {k: getattr(TrainConfig, k) for k in cfg.to_dict().keys() - written.keys()}  # diverse_head's knobs)
        return cfg.to_dict() == {**written, **added} and added.keys() <= {"keep_last", "heads", "head_agreement",
                                                                          *get_method("diverse_head").own_knobs}

    for path in sorted(folder.glob("*.yaml")):
        cfg = TrainConfig.from_yaml(path)
        data = yaml.safe_load(path.read_text())
        assert unchanged(cfg, data.get("config", data)), path.name
    for name, saved in json.loads((folder / "checkpoint_configs.json").read_text()).items():
        assert unchanged(TrainConfig.from_dict(saved), saved), name
    s4gan = TrainConfig.from_yaml(folder / "s4gan.yaml")
    assert (s4gan.lambda_fm, s4gan.d_width, s4gan.threshold_st_schedule) == (0.3, 32, "linear")
    assert TrainConfig.from_yaml(folder / "rounds.yaml").round_iters == (1000, 1000, 1000)
