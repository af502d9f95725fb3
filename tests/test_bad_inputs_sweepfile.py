"""Issue 29, the sweep file's own keys: each value converted to its key's type or refused naming the key, the value
and the fix, before anything starts; an empty sweep file refused; the demo's derived lengths follow --set
max_iters; flags a resume would ignore refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftune.cli import main
from selftune.coerce import parse_duration
from selftune.errors import ConfigError
from selftune.search.sweepfile import SweepConfig, demo_sweep


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"num_samples": "3"}, {"num_samples": 3}),
        ({"num_samples": 3.0, "max_t": "40"}, {"num_samples": 3, "max_t": 40}),
        ({"time_budget_s": "10m"}, {"time_budget_s": 600.0}),
        ({"time_budget_s": "1h30m", "gpu_wait_s": 30}, {"time_budget_s": 5400.0, "gpu_wait_s": 30.0}),
        ({"cpus_per_trial": "2", "reduction_factor": 2}, {"cpus_per_trial": 2.0, "reduction_factor": 2.0}),
    ],
)
def test_values_are_converted_to_their_types(changes, expected) -> None:
    sweep = SweepConfig.from_dict(changes)
    assert {k: getattr(sweep, k) for k in expected} == expected
    assert all(type(getattr(sweep, k)) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": 123}, r"name must be a string, got 123; quote it"),
        ({"name": "my sweep"}, r"name 'my sweep' must be a folder name"),
        ({"name": ".."}, r"name '..' must be a folder name"),
        ({"num_samples": "three"}, r"num_samples must be a whole number, got 'three'"),
        ({"num_samples": 2.5}, r"num_samples must be a whole number, got 2.5"),
        ({"max_t": float("inf")}, r"max_t must be a whole number, got inf"),
        ({"budget_iters": float("nan")}, r"budget_iters must be a whole number, got nan"),
        ({"seed": 2**64}, r"seed must be an integer from 0 to 2\*\*32 - 1 .*got 18446744073709551616"),
        ({"max_t": 2**64}, r"max_t is too large"),
        ({"seed": -1}, r"seed must be an integer from 0 to 2\*\*32 - 1"),
        ({"time_budget_s": "ten minutes"}, r"time_budget_s must be seconds or a duration such as 90s, 10m"),
        ({"time_budget_s": float("inf")}, r"time_budget_s must be a finite number, got inf \(leave the key out"),
        ({"reduction_factor": float("nan")}, r"reduction_factor must be a finite number, got nan"),
        ({"cpus_per_trial": [1]}, r"cpus_per_trial must be a number, got \[1\]"),
        ({"space": None}, r"space must not be null"),
        ({"storage": " "}, r"storage must not be empty"),
        ({"verbose": 7}, r"verbose must be 0, 1, 2 or 3"),
        ({"shared_stage": [150]}, r"shared_stage must be a mapping"),
        ({"data": 5}, r"data must be a string, got 5"),
    ],
)
def test_bad_values_are_one_message(changes, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SweepConfig.from_dict(changes)


def test_durations() -> None:
    assert [parse_duration("k", t) for t in ("90", "90s", "2 min", "1.5h", "1h30m", "10 minutes")] == [
        90.0, 90.0, 120.0, 5400.0, 5400.0, 600.0]
    for bad in ("", "m", "10 parsecs", "1h-"):
        with pytest.raises(ConfigError, match="k must be seconds or a duration"):
            parse_duration("k", bad)


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "null\n"])
def test_an_empty_sweep_file_is_refused(tmp_path: Path, capsys, text: str) -> None:
    (tmp_path / "s.yaml").write_text(text)
    code, err = _cli(["sweep", str(tmp_path / "s.yaml"), "--check"], capsys)
    assert code == 2 and "s.yaml is empty; it needs at least `data:`" in err


def test_sweep_file_keys_in_a_file_name_the_file(tiny_data: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "s.yaml").write_text(f"data: {tiny_data}\nnum_samples: .inf\n")
    code, err = _cli(["sweep", str(tmp_path / "s.yaml"), "--check"], capsys)
    assert code == 2 and "s.yaml: num_samples must be a whole number, got inf" in err
    assert not (tmp_path / "selftune_results").exists()


def test_durations_on_the_command_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    code, err = _cli(["sweep", "--data", str(tiny_data), "--time-budget-s", "forever", "--check",
                      "--storage", str(tmp_path)], capsys)
    assert code == 2 and "time_budget_s must be seconds or a duration" in err


def test_demo_lengths_follow_the_run_length() -> None:
    demo = demo_sweep()
    assert demo.shared_stage == {"max_iters": 150} and demo.base["max_iters"] == 300
    short = demo_sweep({"max_iters": 20})
    assert short.shared_stage == {"max_iters": 10}  # the issue: the 150-iteration stage was kept
    assert short.base["max_iters"] == 20
    for key in ("eval_every", "warmup_iters", "st_start_iter", "st_rampup_iters"):
        assert 1 <= short.base[key] <= 20 * demo.base[key] // 300 + 1, key
    own = demo_sweep({"max_iters": 600, "eval_every": 7})
    assert own.base["eval_every"] == 7 and own.base["warmup_iters"] == 20  # what is set stays set
    assert demo_sweep(max_t=60).shared_stage == {"max_iters": 30}


def test_demo_with_set_max_iters_on_the_command_line(tmp_path: Path, capsys, monkeypatch) -> None:
    seen = {}

    def plan(sweep, **_):
        seen["sweep"] = sweep
        raise ConfigError("stop here")

    monkeypatch.setattr("selftune.search.run.plan_sweep", plan)
    code, _ = _cli(["sweep", "--demo", "--set", "max_iters=20", "--check"], capsys)
    assert code == 2 and seen["sweep"].shared_stage == {"max_iters": 10} and seen["sweep"].base["eval_every"] == 2


@pytest.mark.parametrize(("extra", "named"), [
    (["--data", "/elsewhere"], "--data"),
    (["--set", "lr=0.1"], "--set"),
    (["--num-samples", "9", "--space", "wide"], "--space, --num-samples"),
])
def test_resume_refuses_flags_it_would_ignore(tmp_path: Path, capsys, extra: list[str], named: str) -> None:
    code, err = _cli(["sweep", "--resume", str(tmp_path), *extra], capsys)
    assert code == 2 and named in err and "would change it" in err


def test_restart_errored_without_resume(capsys) -> None:
    code, err = _cli(["sweep", "--demo", "--restart-errored", "--check"], capsys)
    assert code == 2 and "--restart-errored goes with --resume" in err
