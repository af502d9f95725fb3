"""Shared fixtures: a tiny demo dataset made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftune.trainable.demo import DemoSpec, generate_demo

TINY_SPEC = DemoSpec(size=32, n_train=6, n_val=4, n_test=4, n_unlabeled=12, seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px demo dataset (6 train, 4 val, 4 test, 12 unlabelled tiles). Treat it as read-only."""
    return generate_demo(tmp_path_factory.mktemp("tiny") / "data", TINY_SPEC)
