"""Resume after the driver is SIGKILLed, a multi-node cluster on one machine, and cluster.yaml."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml

from selftune.sweepfolder import read_trials
from tests.helpers import kill_sweep_when, tiny_config

ROOT = Path(__file__).resolve().parents[1]
BASE = tiny_config(max_iters=60, log_images=False)


def test_cluster_yaml_passes_rays_own_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["resources"]["GPU"] >= 1
    assert config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
    assert "requirements.lock" in " ".join(config["setup_commands"])
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text
    opened = [p["FromPort"] for p in config["provider"]["security_group"]["IpPermissions"]]
    assert opened == [22]  # never the dashboard (8265), client (10001) or GCS (6379) ports


def test_searcher_restored_behind_the_study_does_not_tell_a_finished_trial_again(tmp_path: Path) -> None:
    """The Optuna journal is written at once, the searcher's state only at Ray's checkpoints: a driver killed
    in between resumes with a searcher that thinks a trial the study has finished is still running."""
    from selftune.search.adapter import make_searcher
    from selftune.search.study import open_optuna_storage
    from selftune.spaces import SpaceContext

    journal = f"journal:{tmp_path / 'optuna.journal'}"

    def searcher_on_journal():
        return make_searcher("tpe", "thresholds_shared", SpaceContext(7, 60, 10), seed=0, num_samples=4,
                             max_concurrent=1, study_name="lag", storage_url=journal).searcher

    searcher = searcher_on_journal()
    assert searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val_miou": 0.2, "iteration": 10})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's last experiment checkpoint before the crash
    searcher.on_trial_complete("t1", {"val_miou": 0.3, "best_val_miou": 0.35, "iteration": 60,
                                      "status": "completed"})

    behind = searcher_on_journal()
    behind.restore(str(tmp_path / "searcher.pkl"))
    assert "t1" not in behind._completed_trials
    behind.on_trial_result("t1", {"val_miou": 0.3, "iteration": 60})  # the resumed trial's duplicate report
    behind.on_trial_complete("t1", {"val_miou": 0.3, "best_val_miou": 0.35, "iteration": 60, "status": "completed"})
    [trial] = optuna.load_study(study_name="lag", storage=open_optuna_storage(journal)).trials
    assert trial.state.name == "COMPLETE" and trial.value == 0.35


@pytest.mark.slow  # a real sweep killed and resumed: 1-2 minutes on 2 CPUs
def test_resume_after_driver_sigkill_accounts_for_every_trial(tiny_data: Path, tmp_path: Path) -> None:
    storage = tmp_path / "results"
    script = textwrap.dedent(f"""
        from selftune.search import SweepConfig, run_sweep
        run_sweep(SweepConfig(control=False, name="killed", data={str(tiny_data)!r}, base={BASE!r}, space="thresholds_shared",
                              num_samples=4, max_concurrent=1, scheduler="fifo", storage={str(storage)!r},
                              num_cpus=2, verbose=0))
    """)
    exp = storage / "killed"

    def one_finished_and_the_next_reported() -> bool:
        lines = sorted(len((d / "result.json").read_text().splitlines()) for d in exp.glob("*/")
                       if (d / "result.json").is_file()) if exp.is_dir() else []
        return len(lines) >= 2 and lines[-1] == 6 and 1 <= lines[0] < 6

    kill_sweep_when(script, one_finished_and_the_next_reported, cwd=tmp_path, what="the point to kill it",
                    poll_s=0.2)
    time.sleep(1)
    before = {t.trial_id: t for t in read_trials(str(exp))}
    interrupted = [t for t in before.values() if t.results and t.results[-1]["iteration"] < 60]
    assert interrupted, "no trial was cut mid-run"

    import ray

    from selftune.search import resume_sweep

    try:
        summary = resume_sweep(str(exp), num_cpus=2)
    finally:
        ray.shutdown()
    after = read_trials(str(exp))
    assert summary.trials == len(after) == 4
    assert all(t.finished and t.outcome in ("completed", "early_stopped") for t in after), [
        (t.trial_id, t.ray_status, t.outcome) for t in after
    ]
    for t in after:  # the space samples patience, so a trial may stop early, but never twice at one iteration
        iterations = [r["iteration"] for r in t.results]
        assert iterations == sorted(set(iterations))
        assert iterations[-1] == 60 or t.outcome == "early_stopped"
    for t in interrupted:  # it continued from its checkpoint rather than starting over
        resumed = next(a for a in after if a.trial_id == t.trial_id)
        assert resumed.results[len(t.results) - 1]["iteration"] == t.results[-1]["iteration"]
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="killed", storage=JournalStorage(JournalFileBackend(str(exp / "optuna_journal.log"))))
    # The journal is written at once, the searcher's state only at Ray's checkpoints: a trial suggested or
    # finished between the last checkpoint and the kill may be known to Optuna and not to the resumed searcher.
    # What always holds: the trial finished before the kill and the two started after the resume are COMPLETE,
    # and nothing is left RUNNING (close_open_trials closes what the resumed searcher could not).
    states = [t.state.name for t in study.trials]
    assert len(states) >= 4 and states.count("COMPLETE") >= 3 and "RUNNING" not in states, states
    assert all(t.intermediate_values for t in study.trials if t.state.name == "COMPLETE")


@pytest.mark.slow  # three Ray nodes on one machine: about 30 s on 2 CPUs
def test_trials_spread_over_a_multi_node_cluster(tiny_data: Path, tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from selftune.search import SweepConfig, run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]  # logical GPUs
    cluster.wait_for_nodes()
    storage = tmp_path / "shared"
    try:
        ray.init(address=cluster.address)
        summary = run_sweep(SweepConfig(
            control=False, name="spread", data=str(tiny_data), base={**BASE, "max_iters": 20}, space="thresholds_shared",
            num_samples=4, max_concurrent=2, scheduler="fifo", gpus_per_trial=1, cpus_per_trial=1,
            storage=str(storage), address=cluster.address, verbose=0,
        ))
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = read_trials(summary.experiment_dir)
    assert len(trials) == 4 and all(t.outcome in ("completed", "early_stopped") for t in trials)
    worker_ids = {n.node_id for n in nodes}
    used = {r["node_id"] for t in trials for r in t.results}
    assert used == worker_ids  # both GPU nodes ran trials; the GPU-less head ran none
    assert all(Path(t.path).parent == storage / "spread" for t in trials)
