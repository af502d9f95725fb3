"""Shared fixtures: a tiny demo dataset made once per test session (the rest is in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftune.data.demo import generate_demo
from tests.helpers import TINY_SPEC


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px demo dataset (6 train, 4 val, 4 test, 12 unlabelled tiles). Treat it as read-only."""
    return generate_demo(tmp_path_factory.mktemp("tiny") / "data", TINY_SPEC)
