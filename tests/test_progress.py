"""The sweep's console at default verbosity: one line per finished trial, a one-line status, no Ray tables."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest

from selftune.search.progress import ProgressLines, ray_verbosity, status_line


@dataclass
class FakeTrial:
    """What the callback reads off Ray's Trial."""

    trial_id: str
    experiment_tag: str
    evaluated_params: dict[str, Any]
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    path: str = "/sweeps/demo/trial"


def report(cb: ProgressLines, trials: list[FakeTrial], t: FakeTrial, iteration: int, value: float,
           status: str = "running") -> None:
    t.last_result = {"iteration": iteration, "val_miou": value, "status": status}
    cb.on_trial_result(iteration=0, trials=trials, trial=t, result=t.last_result)


def test_a_line_per_finished_trial_and_a_periodic_status() -> None:
    out = io.StringIO()
    cb = ProgressLines("val_miou", rungs=[20.0, 60.0], every=0.0, file=out)
    a = FakeTrial("aaaa1111", "1_method=rounds", {"method": "rounds", "lr": 1e-3})
    b = FakeTrial("bbbb2222", "2_method=supervised", {"method": "supervised", "lr": 1e-4})
    c = FakeTrial("cccc3333", "3_method=s4gan", {"method": "s4gan"}, status="PENDING")
    trials = [a, b, c]
    for it, v in [(20, 0.20), (40, 0.31), (60, 0.30)]:
        report(cb, trials, a, it, v)
    a.last_result["status"] = "completed"
    a.status = "TERMINATED"
    cb.on_trial_complete(iteration=0, trials=trials, trial=a)
    report(cb, trials, b, 20, 0.10)
    report(cb, trials, b, 40, 0.12)  # ended from outside between rungs: the sweep's budget, not ASHA
    b.status = "TERMINATED"
    cb.on_trial_complete(iteration=0, trials=trials, trial=b)
    c.status = "ERROR"
    cb.on_trial_error(iteration=0, trials=trials, trial=c)
    cb.on_step_end(iteration=0, trials=trials)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("trial 1 finished: aaaa1111 rounds, completed at iteration 60, best val_miou 0.3100 at 40 "
                        "(new best)")
    assert lines[1] == "trial 2 finished: bbbb2222 supervised, stopped by the sweep budget at iteration 40, " \
                       "best val_miou 0.1200"
    assert lines[2] == "trial 3 finished: cccc3333 s4gan, errored, no val_miou; see /sweeps/demo/trial/error.txt"
    assert lines[3].endswith("] 3 of 3 trials finished (1 errored); best val_miou 0.3100 (trial aaaa1111, rounds)")
    assert len(lines) == 4


def test_status_line_counts_rays_statuses() -> None:
    line = status_line(200, {"TERMINATED": 4, "RUNNING": 2, "PENDING": 6}, (0.4123, "1a2b3c4d", "rounds"), "val_miou")
    assert line == "[3m20s] 4 of 12 trials finished, 2 running, 6 to start; best val_miou 0.4123 (trial 1a2b3c4d, rounds)"
    assert status_line(5, {"PENDING": 3}, None, "val_f1") == "[0m05s] 0 of 3 trials finished, 3 to start; no val_f1 yet"


@pytest.mark.parametrize(("verbose", "ray"), [(0, 0), (1, 0), (2, 1), (3, 2)])
def test_the_sweep_key_verbose_picks_the_view(verbose: int, ray: int) -> None:
    assert ray_verbosity(verbose) == ray


def test_ray_calls_it_and_prints_no_table(capsys: pytest.CaptureFixture[str]) -> None:
    """A real Tuner with a two-report function: the callback's lines, and none of Ray's trial tables."""
    import ray
    from ray import tune

    def fn(config: dict[str, Any]) -> None:
        for it in (10, 20):
            tune.report({"iteration": it, "val_miou": config["x"] * it / 20, "status": "running" if it < 20 else
                         "completed"})

    class Progress(ProgressLines, tune.Callback):  # as the adapter makes it
        pass

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tune.Tuner(fn, param_space={"x": tune.grid_search([0.3, 0.5])},
                       tune_config=tune.TuneConfig(metric="val_miou", mode="max"),
                       run_config=tune.RunConfig(storage_path=tmp, name="p", verbose=ray_verbosity(1),
                                                 callbacks=[Progress("val_miou")])).fit()
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    finished = [line for line in printed.splitlines() if " finished: " in line and line.startswith("trial ")]
    assert len(finished) == 2 and all("completed at iteration 20" in line for line in finished), printed
    assert "best val_miou 0.5000 (trial " in [line for line in printed.splitlines() if line.strip()][-1], printed
    # Ray's header box (the experiment's configuration, printed once at any verbosity) and nothing else of its
    assert printed.count("Configuration for experiment") == 1
    assert "Trial status" not in printed and "Trial name" not in printed
