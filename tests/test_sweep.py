"""End to end: a tiny real sweep (Ray + Optuna + ASHA + smp) on local Ray, then export and retrain.

One sweep is run per test session (module fixture) and several tests read what it left on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from selftune.cli import main
from selftune.search.sweepfile import SweepConfig
from selftune.sweepfolder import COMPLETED, DIVERGED, EARLY_STOPPED, STOPPED_BY_SCHEDULER, read_trials
from selftune.trainable.config import TrainConfig
from tests.helpers import tiny_config

SEED = 1
TINY_BASE = tiny_config(log_images=True)

SPACE_MODULE = '''
def tiny(trial, ctx):
    """Thresholds and ST weight, plus an LR choice that includes one that diverges."""
    trial.suggest_float("threshold_base", 0.3, 0.95)
    trial.suggest_float("st_weight", 0.5, 2.0)
    trial.suggest_categorical("lr", [1e-3, 2e-3, 3e-3, 1e30])
    return {}
'''


@pytest.fixture(scope="module")
def sweep_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sequential trials (max_concurrent=1, so scheduling is deterministic) with ASHA and TPE."""
    import sys

    import ray

    mod_dir = tmp_path_factory.mktemp("spaces")
    (mod_dir / "tiny_spaces.py").write_text(SPACE_MODULE)
    sys.path.insert(0, str(mod_dir))
    storage = tmp_path_factory.mktemp("results")
    sweep = SweepConfig(
        control=False, name="tiny", data=str(tiny_data), base=TINY_BASE, space="tiny_spaces:tiny", searcher="random", seed=SEED,
        num_samples=6, max_concurrent=1, reduction_factor=2, storage=str(storage), num_cpus=2, verbose=0,
    )
    from selftune.search import run_sweep

    ray_context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    summary = run_sweep(sweep)
    ray.shutdown()
    assert summary.trials == 6
    experiment_dir = Path(summary.experiment_dir)
    (experiment_dir.parent / "ray_session_dir.txt").write_text(ray_context.address_info["session_dir"])
    return experiment_dir


def _study(sweep_dir: Path) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna_journal.log")))
    return optuna.load_study(study_name="tiny", storage=storage)


def test_optuna_is_told_how_each_trial_ended(sweep_dir: Path) -> None:
    trials = read_trials(str(sweep_dir))
    study = _study(sweep_dir)
    assert len(study.trials) == len(trials) == 6
    expected = {COMPLETED: "COMPLETE", EARLY_STOPPED: "COMPLETE", STOPPED_BY_SCHEDULER: "PRUNED", DIVERGED: "FAIL"}
    by_params = {json.dumps(t.params, sort_keys=True): t for t in trials}
    states = []
    for ot in study.trials:
        rec = by_params[json.dumps(ot.params, sort_keys=True)]
        assert ot.state.name == expected[rec.outcome], (rec.trial_id, rec.outcome, ot.state)
        # the dashboard names the Ray trial and tells an ASHA cut from a budget cut
        assert ot.user_attrs["ray_trial_id"] == rec.trial_id
        assert ot.user_attrs["selftune_status"] == rec.outcome
        states.append(ot.state.name)
        if ot.state.name in ("COMPLETE", "PRUNED"):
            # every evaluation is an intermediate value, at the loop's iteration
            assert sorted(ot.intermediate_values) == [r["iteration"] for r in rec.results]
            assert ot.intermediate_values[rec.results[-1]["iteration"]] == pytest.approx(rec.results[-1]["val_miou"])
        if ot.state.name == "COMPLETE":
            assert ot.value == pytest.approx(max(r["val_miou"] for r in rec.results))
        if rec.outcome == DIVERGED:
            assert ot.params["lr"] == 1e30
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(states), states


def test_asha_counts_iterations_and_waits_for_self_training(sweep_dir: Path) -> None:
    meta = yaml.safe_load((sweep_dir / "selftune_sweep.yaml").read_text())
    assert meta["max_t"] == 40
    assert meta["grace_period"] == 20  # st_start_iter 10 + st_rampup_iters 10
    for t in read_trials(str(sweep_dir)):
        if t.outcome == STOPPED_BY_SCHEDULER:
            assert t.results[-1]["iteration"] >= 20  # never cut before the grace period
            assert t.results[-1]["iteration"] < 40


def test_trials_leave_tensorboard_checkpoints_and_best_model(sweep_dir: Path) -> None:
    for t in read_trials(str(sweep_dir)):
        train_dir = Path(t.path) / "train"
        assert (train_dir / "config.yaml").is_file()
        assert list(train_dir.glob("events.out.tfevents.*"))
        if t.outcome != DIVERGED:
            assert (train_dir / "best_model_ema.pt").is_file()
            assert t.checkpoints and all((Path(c) / "state.pt").is_file() for c in t.checkpoints)


def test_trial_folders_have_short_readable_names(sweep_dir: Path) -> None:
    """TensorBoard shows a trial folder as its run name: the number, the id, a few searched values, not ~150
    characters of Ray's default."""
    from selftune.sweepfolder import trial_number_from_dirname

    trials = read_trials(str(sweep_dir))
    assert sorted(t.number for t in trials) == list(range(1, 7))
    for t in trials:
        name = Path(t.path).name
        assert name.startswith(f"trial_{t.number:03d}_{t.trial_id}_"), name
        assert len(name) <= 72 and "=" in name, name
        assert trial_number_from_dirname(name, t.trial_id) == t.number
        lr = t.params["lr"]
        assert f"lr={lr:.3g}" in name, name


def test_trial_dirname_for_old_and_new_folders() -> None:
    from selftune.sweepfolder import trial_dirname, trial_number_from_dirname

    name = trial_dirname(4, "1a2b3c4d", {"lr": 0.0003, "method": "rounds", "rounds/count": 3, "threshold[2]": 0.5})
    assert name == "trial_004_1a2b3c4d_method=rounds_lr=0.0003_count=3"
    assert trial_number_from_dirname(name, "1a2b3c4d") == 4
    long = trial_dirname(12, "ab", {f"very_long_parameter_name_{i}": 0.123456 for i in range(5)})
    assert len(long) <= 72 and long.endswith("=0.123"), long  # whole parts only, never a value cut short
    # a sweep written by an earlier selftune: Ray's default names
    assert trial_number_from_dirname("selftune_trial_1a2b3c4d_7_lr=0.001,st=1_2026-12-01_10-00-00", "1a2b3c4d") == 7
    assert trial_number_from_dirname("control", "1a2b3c4d") is None


def test_trial_runs_are_written_to_storage_not_left_in_ray_temp(sweep_dir: Path) -> None:
    """Ray never cleans /tmp/ray/session_*: a trial's checkpoints staged there would leak disk."""
    session_dir = Path((sweep_dir.parent / "ray_session_dir.txt").read_text())
    assert session_dir.is_dir()
    staged = [p for p in session_dir.rglob("*") if p.is_file() and p.suffix == ".pt"]
    assert staged == []
    assert all((Path(t.path) / "train" / "metrics.jsonl").is_file() for t in read_trials(str(sweep_dir)))


def test_best_config_export_then_train_round_trip(sweep_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    best = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    prov = best["provenance"]
    assert prov["rank"] == 1 and prov["trial_id"] and prov["data_fingerprint"] and prov["selftune_version"]
    assert Path(prov["checkpoint"]).is_dir() and Path(prov["best_model"]).is_file()
    values = [max(r["val_miou"] for r in t.results) for t in read_trials(str(sweep_dir)) if t.outcome != DIVERGED]
    assert prov["value"] == pytest.approx(max(values))

    out = tmp_path / "top2"
    assert main(["export", str(sweep_dir), "--top-k", "2", "--out", str(out)]) == 0
    ranks = [yaml.safe_load((out / f"rank_{r}.yaml").read_text())["provenance"] for r in (1, 2)]
    assert ranks[0]["value"] >= ranks[1]["value"]

    exported = tmp_path / "best.yaml"
    assert main(["export", str(sweep_dir), "--out", str(exported)]) == 0
    cfg = TrainConfig.from_yaml(exported)
    assert cfg.to_dict() == best["config"]
    run = tmp_path / "retrain"
    assert main(["train", "--config", str(exported), "--data", str(tiny_data), "--out", str(run)]) == 0
    assert TrainConfig.from_yaml(run / "config.yaml") == cfg
    assert (run / "best_model_ema.pt").is_file()


def test_existing_sweep_name_is_refused_and_untouched(sweep_dir: Path, tiny_data: Path, capsys) -> None:
    before = sorted(p.name for p in sweep_dir.iterdir())
    rc = main(["sweep", "--demo", "--data", str(tiny_data), "--storage", str(sweep_dir.parent), "--name", "tiny",
                "--set", "crop_size=32"])  # the demo's 64 px crop does not fit the 32 px tiles
    assert rc == 2
    assert "a sweep named 'tiny' already exists" in capsys.readouterr().err
    assert sorted(p.name for p in sweep_dir.iterdir()) == before


def test_compute_budget_stops_the_sweep(tiny_data: Path, tmp_path: Path) -> None:
    import ray

    from selftune.search import run_sweep

    sweep = SweepConfig(
        control=False, name="budget", data=str(tiny_data), base={**TINY_BASE, "log_images": False}, space="thresholds_shared",
        scheduler="fifo", num_samples=-1, budget_iters=50, max_concurrent=1, storage=str(tmp_path), num_cpus=2,
        verbose=0,
    )
    try:
        summary = run_sweep(sweep)
    finally:
        ray.shutdown()
    trials = read_trials(summary.experiment_dir)
    total = sum(t.results[-1]["iteration"] for t in trials if t.results)
    assert 50 <= total <= 60, total
    assert len(trials) == 2
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = JournalStorage(JournalFileBackend(str(Path(summary.experiment_dir) / "optuna_journal.log")))
    states = sorted(t.state.name for t in optuna.load_study(study_name="budget", storage=journal).trials)
    assert states == ["COMPLETE", "PRUNED"]  # the trial the budget cut is not left RUNNING
