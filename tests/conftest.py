"""Shared fixtures: a tiny demo dataset made once per test session, and the tiny train config every test starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selftune.data.demo import DemoSpec, generate_demo

TINY_SPEC = DemoSpec(size=32, n_train=6, n_val=4, n_test=4, n_unlabeled=12, seed=0)

# A 32 px Unet with the smallest timm encoder: seconds per run on one CPU thread.
TINY_CONFIG: dict[str, Any] = dict(
    arch="Unet", encoder="tu-mobilenetv3_small_050", crop_size=32, batch_size=4, unlabeled_batch_size=4,
    train_eval_size=4, max_iters=40, eval_every=10, warmup_iters=2, st_start_iter=10, st_rampup_iters=10,
    patience=0, ema_decay=0.9, num_threads=1,
)


def tiny_config(**changes: Any) -> dict[str, Any]:
    """The tiny train config as plain data (a sweep's `base`, or `TrainConfig.from_dict`), with `changes`."""
    return {**TINY_CONFIG, **changes}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px demo dataset (6 train, 4 val, 4 test, 12 unlabelled tiles). Treat it as read-only."""
    return generate_demo(tmp_path_factory.mktemp("tiny") / "data", TINY_SPEC)
