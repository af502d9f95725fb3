"""Issue 35, a real sweep as a new user meets it: Ctrl-C while its trials run is a message naming the resume command
and exit 130, with no best config presented as final; `--resume` finishes it; the finished sweep leaves no Optuna
trial pending (its fair share's enqueued trials the budget never reached are failed, saying why); and a copy of it,
with the original gone, exports configs that point into the copy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from selftune.search.study import NOT_STARTED, close_open_trials, open_optuna_storage
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SPACE = '''
def two_methods(trial, ctx):
    method = trial.suggest_categorical("method", ["supervised", "rounds"])
    trial.suggest_float("lr", 1e-3, 3e-3, log=True)
    return {"rounds": 2} if method == "rounds" else {}
'''


def _selftune(args: list[str], cwd: Path, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "selftune", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


@pytest.mark.slow  # a real sweep interrupted and resumed, then copied: about 1.5 min on 2 CPUs
def test_ctrl_c_then_resume_then_a_copy_exports_into_itself(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "issue35_spaces.py").write_text(SPACE)
    storage = tmp_path / "results"
    # the stage's 6 iterations and two trials of 12 fill budget_iters 30: the fair share enqueued 4 trials
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "s", "data": str(tiny_data), "storage": str(storage), "space": "issue35_spaces:two_methods",
        "base": tiny_config(max_iters=12, eval_every=3, warmup_iters=1, st_start_iter=0, st_rampup_iters=2,
                            log_images=False),
        "shared_stage": {"max_iters": 6}, "num_samples": -1, "budget_iters": 30, "max_concurrent": 1,
        "scheduler": "fifo", "searcher": "random", "control": "none", "num_cpus": 2}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    exp = storage / "s"

    driver = _selftune(["sweep", str(tmp_path / "sweep.yaml")], tmp_path, env)
    deadline = time.monotonic() + 240
    while not any(p.stat().st_size for p in exp.glob("trial_*/result.json")):  # a trial has reported
        assert driver.poll() is None, f"the sweep ended before Ctrl-C: {driver.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no trial reported within 4 minutes"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGINT)  # as the terminal sends Ctrl-C: to the whole foreground group
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("selftune: interrupted:")]
    assert len(said) == 1 and f"`selftune sweep --resume {exp}`" in said[0] and "not finished" in said[0]
    assert "Tuner.restore" not in err + out and "Traceback" not in err
    assert "best config:" not in out and not (exp / "best_config.yaml").exists()

    resumed = _selftune(["sweep", "--resume", str(exp)], tmp_path, env)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-3000:]
    assert (exp / "best_config.yaml").is_file() and f"best config:  {exp}/best_config.yaml" in out

    study = optuna.load_study(study_name="s", storage=open_optuna_storage(f"journal:{exp}/optuna_journal.log"))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.WAITING not in states and optuna.trial.TrialState.RUNNING not in states
    not_started = [t for t in study.trials if t.user_attrs.get("selftune_status") == NOT_STARTED]
    assert not_started and all(t.state == optuna.trial.TrialState.FAIL and "never started" in
                               t.system_attrs["fail_reason"] for t in not_started)

    copy = tmp_path / "elsewhere" / "s"
    shutil.copytree(exp, copy)
    shutil.rmtree(exp)  # the original is gone: nothing may point there
    from selftune.cli import main
    from selftune.trainable.config import TrainConfig
    from selftune.trainable.train_cli import _in_its_sweep_folder

    assert main(["export", str(copy), "--top-k", "9", "--out", str(tmp_path / "top.yaml")]) == 0
    docs = list(yaml.safe_load_all((tmp_path / "top.yaml").read_text()))
    rounds = [d for d in docs if d["config"]["method"] == "rounds"]
    assert rounds, [d["config"]["method"] for d in docs]
    for d in docs:
        for key in ("trial_path", "best_model"):
            assert d["provenance"][key].startswith(f"{copy}/") and Path(d["provenance"][key]).exists()
    stage = copy / "shared_stage" / "best_model_ema.pt"
    assert all(d["config"]["teacher_checkpoint"] == str(stage) for d in rounds) and stage.is_file()
    best = copy / "best_config.yaml"  # written by the sweep, where it ran: read where it is now
    cfg = _in_its_sweep_folder(best, TrainConfig.from_yaml(best))
    assert cfg.method != "rounds" or cfg.teacher_checkpoint == str(stage)
    assert str(exp) not in yaml.safe_dump(cfg.to_dict())


def test_a_finished_sweep_leaves_no_enqueued_trial_waiting(tmp_path: Path) -> None:
    """The study as a sweep that ended before its fair-share cycle leaves it: one trial told, one stopped by the
    budget while running, two enqueued and never asked for."""
    url = f"journal:{tmp_path / 'optuna_journal.log'}"
    study = optuna.create_study(study_name="s", storage=open_optuna_storage(url), direction="maximize")
    for method in ("supervised", "rounds", "supervised", "rounds"):
        study.enqueue_trial({"method": method})
    done, cut = study.ask(), study.ask()
    for t in (done, cut):
        t.suggest_categorical("method", ["supervised", "rounds"])
    study.tell(done, 0.4)
    cut.report(0.3, 6)
    assert close_open_trials(url, "s") == 3
    trials = optuna.load_study(study_name="s", storage=open_optuna_storage(url)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL"]
    for t in trials[2:]:
        assert t.user_attrs["selftune_status"] == NOT_STARTED
        assert t.system_attrs["fail_reason"].startswith("never started: enqueued (method=")
    assert close_open_trials(url, "s") == 0  # nothing left open


def test_ctrl_c_in_the_control_search_names_the_sweep_folder_to_resume() -> None:
    """The tuned control search is a Ray experiment inside the sweep folder: `--resume` takes the sweep's folder."""
    from selftune.search.adapter import _interrupted_message, sweep_folder_of

    assert sweep_folder_of("/r/s/control_search") == "/r/s" and sweep_folder_of("/r/s/") == "/r/s"
    said = _interrupted_message("/r/s/control_search", None)
    assert "during its tuned control search" in said and "`selftune sweep --resume /r/s`" in said
    assert "during its trials" in _interrupted_message("/r/s", None) and "no best config" in said
