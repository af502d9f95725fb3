"""Sweeps over methods: a shared first stage, rounds trials that start from it, the control and the verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from selftune.errors import SelftuneError
from selftune.search.run import plan_sweep
from selftune.search.sweepfile import SweepConfig, demo_sweep
from selftune.spaces import SpaceContext, check_space
from selftune.sweepfolder import read_trials, read_verdict
from selftune.trainable.config import TrainConfig
from tests.helpers import tiny_config

BASE = tiny_config(max_iters=20, eval_every=5, warmup_iters=2, st_start_iter=0, st_rampup_iters=5, log_images=False)
SPACES = '''
def rounds_only(trial, ctx):
    trial.suggest_float("threshold_base", 0.0, 0.5)
    return {"method": "rounds"}

def two_methods(trial, ctx):
    return {"method": trial.suggest_categorical("method", ["supervised", "rounds"])}

def bogus_method(trial, ctx):
    trial.suggest_float("lr", 1e-4, 1e-3)
    return {"method": "bogus"}
'''


@pytest.fixture(scope="module")
def spaces_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    mod_dir = tmp_path_factory.mktemp("spaces")
    (mod_dir / "method_spaces.py").write_text(SPACES)
    sys.path.insert(0, str(mod_dir))
    return "method_spaces"


@pytest.fixture(scope="module")
def staged_sweep(tiny_data: Path, spaces_module: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ray

    from selftune.search import run_sweep

    sweep = SweepConfig(
        name="staged", data=str(tiny_data), base=BASE, space=f"{spaces_module}:rounds_only", searcher="random",
        num_samples=2, max_concurrent=1, scheduler="fifo", storage=str(tmp_path_factory.mktemp("results")),
        num_cpus=2, verbose=0, shared_stage={"max_iters": 10}, confirm_seeds=1, confirm_max_seeds=1,  # pairs: test_verdict
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(sweep)
    finally:
        ray.shutdown()
    assert summary.verdict is not None
    return Path(summary.experiment_dir)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rounds_trials_start_from_the_shared_stage(staged_sweep: Path) -> None:
    stage = staged_sweep / "shared_stage"
    assert [m["iteration"] for m in _metrics(stage)] == [5, 10]
    assert (stage / "best_model_ema.pt").is_file()
    trials = read_trials(str(staged_sweep))
    assert len(trials) == 2
    for t in trials:
        cfg = TrainConfig.from_yaml(Path(t.path) / "train" / "config.yaml")
        assert cfg.method == "rounds" and cfg.teacher_checkpoint == str(stage / "best_model_ema.pt")
        assert {m["round"] for m in _metrics(Path(t.path) / "train")} == {2}  # round 1 is the stage
        assert max(m["iteration"] for m in _metrics(Path(t.path) / "train")) == 20
    best = yaml.safe_load((staged_sweep / "best_config.yaml").read_text())
    assert best["config"]["teacher_checkpoint"] == str(stage / "best_model_ema.pt")  # export: what the trial ran


def test_the_confirmation_runs_are_compute_matched_and_the_verdict_is_written(staged_sweep: Path) -> None:
    """rounds_only has no supervised trial: a tuned control search ran; both arms were retrained with fresh seeds
    from the shared stage for the rounds trial's 20 iterations, patience off."""
    stage = str(staged_sweep / "shared_stage" / "best_model_ema.pt")
    assert len(read_trials(str(staged_sweep / "control_search"))) == 2  # as many as the rounds trials
    runs = sorted((staged_sweep / "confirm").iterdir())
    assert [r.name for r in runs] == ["self_training_seed1000", "supervised_seed1000"]
    for run in runs:
        cfg = TrainConfig.from_yaml(run / "config.yaml")
        assert cfg.max_iters == 20 and cfg.patience == 0 and cfg.seed == 1000
        assert max(m["iteration"] for m in _metrics(run)) == 20
        if run.name.startswith("supervised"):
            assert cfg.method == "supervised" and cfg.init_checkpoint == stage
        else:
            assert cfg.method == "rounds" and cfg.teacher_checkpoint == stage
    verdict = read_verdict(str(staged_sweep))
    assert verdict is not None and verdict["format"] == 2 and verdict["split"] == "test"
    d = verdict["difference"]
    assert d["low"] <= d["mean"] <= d["high"] and d["seeds"] == 1 and d["images"] == 4
    word = {"helps": "HELPS", "hurts": "HURTS", "no clear difference": "NO CLEAR DIFFERENCE"}[verdict["outcome"]]
    assert word in verdict["headline"] and "rounds (trial" in verdict["headline"]
    assert (verdict["outcome"] == "helps") == (d["low"] > 0) and (verdict["outcome"] == "hurts") == (d["high"] < 0)
    assert len(verdict["runs"]) == 2 and verdict["compute"]["confirmation"] == 40
    assert any("one seed per arm" in f for f in verdict["flags"])
    assert verdict["arms"]["supervised"]["tuned"] is True
    best = yaml.safe_load((staged_sweep / "best_config.yaml").read_text())
    assert best["provenance"]["verdict"]["headline"] == verdict["headline"]


def test_resume_does_not_train_the_stage_or_the_confirmation_again(staged_sweep: Path) -> None:
    import ray

    from selftune.search import resume_sweep

    states = [p / "checkpoint" / "state.pt" for p in [staged_sweep / "shared_stage",
                                                      *(staged_sweep / "confirm").iterdir()]]
    before = {p: p.stat().st_mtime_ns for p in states}  # a run trained again writes its checkpoint again
    verdict = read_verdict(str(staged_sweep))
    try:
        resume_sweep(str(staged_sweep), num_cpus=2)
    finally:
        ray.shutdown()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert read_verdict(str(staged_sweep))["difference"] == verdict["difference"]  # the same runs, the same answer


def test_the_methods_space_covers_every_method_with_its_own_knobs() -> None:
    base = TrainConfig.from_dict(tiny_config())
    report = check_space("methods", base, SpaceContext(num_classes=7, max_iters=40, eval_every=10))
    assert set(report.params["method"].choices) >= {"supervised", "ema_self_training", "rounds"}
    assert {"rounds", "round_init", "threshold_base", "min_accept_ratio", "ema_decay"} <= report.params.keys()
    assert "patience" not in report.params


def test_the_demo_searches_methods_with_a_shared_stage() -> None:
    demo = demo_sweep()
    assert demo.space == "methods" and demo.shared_stage == {"max_iters": 150} and demo.control


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(shared_stage={"max_iters": 10}, space="thresholds"),
         r"shared_stage \{'max_iters': 10\}: no trial of space 'thresholds' can start from it"),
        (dict(space="method_spaces:bogus_method"), r"method must be one of supervised, ema_self_training, rounds.*; "
                                                    r"got 'bogus'"),
        (dict(base={**BASE, "method": "rounds", "rounds": 0}), r"rounds must be >= 1, got 0"),
        (dict(base={**BASE, "method": "rounds", "round_iters": [5, 5]}),
         r"round_iters \[5, 5\] adds up to 10, but max_iters is 20"),
    ],
)
def test_bad_method_sweeps_fail_by_name_before_any_trial(
    changes: dict, message: str, tiny_data: Path, spaces_module: str, tmp_path: Path
) -> None:
    sweep = SweepConfig.from_dict({"name": "bad", "data": str(tiny_data), "base": BASE, "storage": str(tmp_path),
                                   **changes})
    with pytest.raises(SelftuneError, match=message):
        plan_sweep(sweep)
    assert not (tmp_path / "bad").exists()


def test_bad_shared_stage_keys_and_foreign_checkpoints(tiny_data: Path, tmp_path: Path) -> None:
    from selftune.trainable.loop import train

    with pytest.raises(SelftuneError, match="shared_stage needs exactly one of max_iters or checkpoint"):
        SweepConfig(shared_stage={})
    with pytest.raises(SelftuneError, match="unknown shared_stage key 'iters'"):
        SweepConfig(shared_stage={"iters": 5})
    fpn = tmp_path / "fpn"
    train(TrainConfig.from_dict(tiny_config(arch="FPN", decoder_channels=[], method="supervised", max_iters=2, eval_every=2,
                                            log_images=False)), tiny_data, fpn, progress=False)
    sweep = SweepConfig(name="bad", data=str(tiny_data), base=BASE, space="methods", storage=str(tmp_path / "r"),
                        shared_stage={"checkpoint": str(fpn)})
    with pytest.raises(SelftuneError, match=r"shared_stage checkpoint .*fpn: it holds a FPN/tu-mobilenetv3_small_050 "
                                            r"model, the sweep's base config trains Unet"):
        plan_sweep(sweep)


def test_the_demo_base_is_the_same_with_other_data_and_on_resume(tiny_data: Path, tmp_path: Path) -> None:
    """Issue 19: `--demo --data X` and a resumed demo sweep ran TrainConfig's defaults (DeepLabV3Plus at 256)."""
    demo = demo_sweep()
    with_data = demo.replace(data=str(tiny_data), storage=str(tmp_path))
    assert with_data.base_train_config() == demo.base_train_config()
    assert demo.base_train_config().arch == "Unet" and demo.base_train_config().crop_size == 64
    sweep = SweepConfig(name="r", data=str(tiny_data), base=BASE, storage=str(tmp_path), space="methods")
    plan = plan_sweep(sweep)
    meta = plan.meta()
    again = SweepConfig.from_dict(meta["sweep"]).replace(data=meta["data_root"], base={}, base_config=None)
    assert plan_sweep(again, resume=True, base_dict=meta["base"]).base == plan.base  # what resume_sweep does


def test_tensorboard_has_every_trial_with_its_status_on_one_step_axis(staged_sweep: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for t in read_trials(str(staged_sweep)):
        ea = EventAccumulator(str(Path(t.path) / "train"))
        ea.Reload()
        assert not [tag for tag in ea.Tags()["scalars"] if tag.startswith("ray/")]  # Ray's duplicate axis is off
        content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert info.hparams["status"].string_value == t.outcome
        assert info.hparams["trial_id"].string_value == t.trial_id


@pytest.mark.slow
def test_a_spent_time_budget_still_runs_each_method_then_ends_with_a_verdict(
        tiny_data: Path, spaces_module: str, tmp_path: Path) -> None:
    """Real Ray: a time budget already spent when the trials begin. The search still runs each method to its grace
    period (a verdict needs both), then ends; the verdict's first look still runs."""
    import ray

    from selftune.search import run_sweep

    sweep = SweepConfig(
        name="closing", data=str(tiny_data), base=BASE, space=f"{spaces_module}:two_methods", searcher="random",
        num_samples=6, max_concurrent=1, scheduler="fifo", storage=str(tmp_path), num_cpus=2, verbose=0,
        time_budget_s=1.0, confirm_seeds=1, confirm_max_seeds=1,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(sweep)
    finally:
        ray.shutdown()
    trials = read_trials(summary.experiment_dir)
    assert sorted(t.params["method"] for t in trials) == ["rounds", "supervised"]  # the fair share, then no more
    assert summary.verdict is not None and summary.verdict["outcome"] is not None


@pytest.mark.slow
def test_a_closed_search_ends_in_ray_after_its_running_trials(tmp_path: Path, capfd: pytest.CaptureFixture[str]
                                                              ) -> None:
    """Real Ray Tune: once `ClosingLimiter.closed()` says so, Ray starts no new trial and the experiment ends when
    the running ones finish, each to its end (none stopped)."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from selftune.search.adapter import ClosingLimiter

    def trainable(config: dict) -> None:
        for i in range(3):
            tune.report({"score": config["x"] + i})

    limiter = ClosingLimiter(OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="score", mode="max", seed=0),
                             max_concurrent=1)
    limiter.closed = lambda: limiter.started_trials >= 2
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=limiter, num_samples=6),
                          run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        ray.shutdown()
    assert len(grid) == 2 and all(r.metrics["training_iteration"] == 3 for r in grid)
    assert "time_budget_s: no new trials after 2" in capfd.readouterr().err
