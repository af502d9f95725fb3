"""Issue 29, stuck sweeps: a sweep SIGKILLed in its shared stage (before Ray's state exists) resumes; a launch that
fails before any work leaves nothing that blocks the same command; a second driver on a sweep folder is refused
naming the first. (Killed in its trials: tests/test_sweep_cluster.py; in its confirmation: tests/test_verdict.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from selftune.errors import SelftuneError
from selftune.fileio import LOCK_FILE, FolderInUseError
from selftune.search.sweepfile import SweepConfig
from tests.helpers import kill_sweep_when, tiny_config

ROOT = Path(__file__).resolve().parents[1]
BASE = tiny_config(max_iters=6, eval_every=3, warmup_iters=1, st_start_iter=0, st_rampup_iters=2, log_images=False)
SPACE = '''
def rounds_only(trial, ctx):
    trial.suggest_float("threshold_base", 0.0, 0.5)
    return {"method": "rounds", "rounds": 2}
'''


def _sweep(tiny_data: Path, storage: Path, **changes) -> SweepConfig:
    return SweepConfig(**{**dict(
        name="s1", data=str(tiny_data), base=BASE, space="stuck_spaces:rounds_only", searcher="random",
        num_samples=1, max_concurrent=1, scheduler="fifo", storage=str(storage), num_cpus=2, verbose=0,
        shared_stage={"max_iters": 150}, control="none"), **changes})


@pytest.fixture
def spaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "stuck_spaces.py").write_text(SPACE)
    monkeypatch.syspath_prepend(str(mod))
    return mod


def _metrics(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a real sweep killed in its stage and resumed: 1-2 minutes on 2 CPUs
def test_killed_in_its_shared_stage_it_resumes(tiny_data: Path, tmp_path: Path, spaces: Path) -> None:
    storage = tmp_path / "results"
    script = textwrap.dedent(f"""
        from selftune.search import SweepConfig, run_sweep
        run_sweep(SweepConfig(**{_sweep(tiny_data, storage).to_dict()!r}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(spaces), str(ROOT)])}
    stage = storage / "s1" / "shared_stage"
    kill_sweep_when(script, lambda: (stage / "metrics.jsonl").is_file() and bool((stage / "metrics.jsonl").read_text()
                                                                                .strip()),
                    cwd=tmp_path, env=env, what="its shared stage's first evaluation", poll_s=0.05)
    time.sleep(1)
    exp = storage / "s1"
    cut = _metrics(stage)
    assert cut and cut[-1] < 150 and not (exp / "tuner.pkl").exists()

    import ray

    from selftune.search import resume_sweep, run_sweep

    with pytest.raises(SelftuneError, match="already exists"):  # the stage is work: kept, and resumable
        run_sweep(_sweep(tiny_data, storage))
    try:
        summary = resume_sweep(str(exp), num_cpus=2)
    finally:
        ray.shutdown()
    iterations = _metrics(stage)
    assert iterations == sorted(set(iterations)) and iterations[-1] == 150  # continued, not redone
    assert iterations[: len(cut)] == cut
    assert summary.trials == 1 and summary.best is not None


def test_a_failed_launch_leaves_nothing_in_the_way(tiny_data: Path, tmp_path: Path, spaces: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from selftune.search import adapter, run
    from selftune.search.run import plan_sweep

    sweep = _sweep(tiny_data, tmp_path / "results", shared_stage=None, space="thresholds_shared")
    monkeypatch.setattr(run, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(run, "check_resources", lambda *a, **k: None)

    def crash(spec):
        raise RuntimeError("Ray fell over while building the tuner")

    monkeypatch.setattr(adapter, "build_tuner", crash)
    with pytest.raises(RuntimeError, match="fell over"):
        run.run_sweep(sweep)
    assert not (tmp_path / "results" / "s1").exists()  # the record this launch wrote, and its folder: gone
    plan_sweep(sweep)  # so the same command runs again (no "already exists")
    (tmp_path / "results" / "s1").mkdir()
    (tmp_path / "results" / "s1" / LOCK_FILE).write_text("{}")
    plan_sweep(sweep)  # a folder holding only a lock file is no sweep either


def test_a_second_driver_is_refused_naming_the_first(tiny_data: Path, tmp_path: Path, spaces: Path) -> None:
    import yaml

    from selftune.search.run import plan_sweep, resume_sweep

    plan = plan_sweep(_sweep(tiny_data, tmp_path / "results"))
    folder = Path(plan.experiment_dir)
    folder.mkdir(parents=True)
    (folder / "selftune_sweep.yaml").write_text(yaml.safe_dump(plan.meta(), sort_keys=False))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from selftune.fileio import folder_lock
        with folder_lock({str(folder)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=rf"sweep folder .*s1 is in use .*pid {holder.pid}"):
            resume_sweep(str(folder))
    finally:
        holder.communicate("")
