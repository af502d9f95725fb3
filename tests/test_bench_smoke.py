"""The benchmark scripts cannot rot: each imports and parses its flags, and the search benchmark runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_help(script: str) -> None:
    out = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_search_benchmark_smoke(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/bench_search.py", "--smoke", "--arms", "ae", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    events = pd.read_csv(tmp_path / "search_smoke_events.csv")
    assert set(events["arm"]) == {"a", "e"}
    assert events.groupby("arm")["compute"].max().ge(40).all()  # each arm spent its budget
    assert events["test_miou"].notna().all()  # test mIoU reported for the incumbent, never used by the tuner
    assert (tmp_path / "search_smoke.png").stat().st_size > 10_000


def test_fractional_trials_share_a_device(tiny_data: Path) -> None:
    """The GPU profile's fractional-trials path, run on CPU: n trials of the same config at once, each
    reporting its own step times, summed into an aggregate throughput."""
    sys.path.insert(0, str(ROOT))
    from bench.bench_loop import fractional_trials
    from selftune.trainable.config import demo_config

    cfg = demo_config(encoder="tu-mobilenetv3_small_050", crop_size=32, batch_size=2, unlabeled_batch_size=2,
                      train_eval_size=2, val_max_images=2, eval_every=2, st_start_iter=0, st_rampup_iters=1,
                      patience=0, log_images=False, device="cpu", num_threads=1)
    import ray

    try:
        (row,) = fractional_trials(cfg, tiny_data, steps=6, counts=[2])
    finally:
        ray.shutdown()
    assert row["trials"] == 2
    assert row["aggregate_its"] > row["per_trial_its"] > 0  # two trials' rates summed
