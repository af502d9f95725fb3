"""The benchmark scripts cannot rot: each imports and parses its flags, and the search benchmark runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_help(script: str) -> None:
    out = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_pseudo_label_quality_scores_a_trained_model(tmp_path: Path) -> None:
    from selftune.data.demo import DemoSpec, generate_demo
    from selftune.trainable.config import TrainConfig
    from selftune.trainable.loop import train

    data = generate_demo(tmp_path / "d", DemoSpec(size=32, n_train=4, n_val=2, n_test=0, n_unlabeled=6,
                                                  unlabeled_masks=True), workers=1)
    cfg = TrainConfig.from_dict(tiny_config(batch_size=2, method="supervised", max_iters=2, eval_every=2,
                                            warmup_iters=0, train_eval_size=2, log_images=False))
    train(cfg, data, tmp_path / "run", progress=False)
    out = subprocess.run([sys.executable, "bench/pseudo_label_quality.py", str(tmp_path / "run"), str(data), "--quick",
                          "--tta", "d4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "6 images of" in out.stdout and "tta d4" in out.stdout and "rows predicted class" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.strip().startswith(("0.00", "0.95"))]
    assert len(rows) == 2 and rows[0].split()[1] == "1.00"  # threshold 0 accepts every pixel


@pytest.mark.slow  # a real sweep (about 45 s on 2 CPUs): the suite keeps inside its 10 minutes
def test_search_benchmark_smoke(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/bench_search.py", "--smoke", "--arms", "ae", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    events = pd.read_csv(tmp_path / "search_smoke_events.csv")
    assert set(events["arm"]) == {"a", "e"}
    assert events.groupby("arm")["compute"].max().ge(40).all()  # each arm spent its budget
    assert events["test_miou"].notna().all()  # test mIoU reported for the incumbent, never used by the tuner
    assert (tmp_path / "search_smoke.png").stat().st_size > 10_000


@pytest.mark.slow  # a real sweep (about 45 s on 2 CPUs): the suite keeps inside its 10 minutes
def test_fractional_trials_share_a_device(tiny_data: Path) -> None:
    """The GPU profile's fractional-trials path, run on CPU: n trials of the same config at once, each
    reporting its own step times, summed into an aggregate throughput."""
    sys.path.insert(0, str(ROOT))
    from bench.bench_loop import fractional_trials
    from selftune.trainable.config import demo_config

    cfg = demo_config(encoder="tu-mobilenetv3_small_050", crop_size=32, batch_size=2, unlabeled_batch_size=2,
                      train_eval_size=2, val_max_images=2, eval_every=2, warmup_iters=0, st_start_iter=0, st_rampup_iters=1,
                      patience=0, log_images=False, device="cpu", num_threads=1)
    import ray

    try:
        (row,) = fractional_trials(cfg, tiny_data, steps=6, counts=[2])
    finally:
        ray.shutdown()
    assert row["trials"] == 2
    assert row["aggregate_its"] > row["per_trial_its"] > 0  # two trials' rates summed
