"""Issue 19: a reused trial process gives the heap pages its trial freed back to the OS (glibc's malloc_trim)."""

from __future__ import annotations

import platform
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from selftune.search import adapter
from selftune.trainable import loop
from tests.helpers import tiny_config

BLOCK = 8192  # above pymalloc's 512 bytes and below malloc's mmap threshold: these live in a malloc arena
BLOCKS = 10_000  # about 80 MB


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_give_back_freed_memory_returns_a_fragmented_heap_to_the_os() -> None:
    """What a trial leaves in a thread's arena: freed blocks held in place by a few live ones. free() cannot
    give that back (only the arena's top); malloc_trim can."""
    kept: list[bytes] = []

    def trial() -> None:
        blocks = [b"x" * BLOCK for _ in range(BLOCKS)]  # filled, so their pages are resident
        kept.extend(blocks[::50])  # a few survivors pin the arena
        del blocks

    worker = threading.Thread(target=trial)  # Ray runs each trial in a new thread of the actor
    worker.start()
    worker.join()
    before = _rss_mb()
    adapter.give_back_freed_memory()
    after = _rss_mb()
    assert before - after > 0.5 * BLOCKS * BLOCK / 2**20, (before, after)
    assert len(kept) == BLOCKS // 50


@pytest.mark.parametrize("fails", [False, True])
def test_a_trial_gives_back_freed_memory_when_it_ends(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       fails: bool) -> None:
    calls: list[str] = []

    def fake_train(*args: Any, **kwargs: Any) -> None:
        calls.append("train")
        if fails:
            raise RuntimeError("the trial failed")

    class Context:
        def get_node_id(self) -> str:
            return "node"

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(adapter, "give_back_freed_memory", lambda: calls.append("give back"))
    monkeypatch.setattr(adapter.ray, "get_runtime_context", Context)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trial sets it; restored after the test
    monkeypatch.chdir(tmp_path)  # remote storage stages the run in the working directory
    threads = torch.get_num_threads()
    try:
        if fails:
            with pytest.raises(RuntimeError, match="the trial failed"):
                adapter.selftune_trial({}, base=tiny_config(), data_root=str(tmp_path), cpus=1, gpus=0,
                                       experiment_dir="s3://bucket/sweep")
        else:
            adapter.selftune_trial({}, base=tiny_config(), data_root=str(tmp_path), cpus=1, gpus=0,
                                   experiment_dir="s3://bucket/sweep")
    finally:
        torch.set_num_threads(threads)
    assert calls == ["train", "give back"]
