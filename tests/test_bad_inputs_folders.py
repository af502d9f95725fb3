"""Issue 29, folders: one writer per run or sweep folder (`fileio.folder_lock`), the free-space check, and two
`selftune train --out DIR` at once (the second refused by name, the first's files untouched)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from selftune.errors import StorageError
from selftune.fileio import LOCK_FILE, FolderInUseError, check_free_space, folder_lock, lock_holder


def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock until its stdin closes."""
    script = textwrap.dedent(f"""
        import sys
        from selftune.fileio import folder_lock
        with folder_lock({str(folder)!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "race"
    holder = _hold(run)
    try:
        busy = rf"run folder .*race is in use .*pid {holder.pid}.*choose another"
        with pytest.raises(FolderInUseError, match=busy), folder_lock(run):
            pass
        assert lock_holder(run)["pid"] == holder.pid  # type: ignore[index]
    finally:
        holder.communicate("")
    with folder_lock(run):  # the holder ended: the folder is free again
        assert lock_holder(run)["pid"] == os.getpid()  # type: ignore[index]


def test_a_killed_holder_frees_the_folder(tmp_path: Path) -> None:
    holder = _hold(tmp_path / "run")
    holder.kill()
    holder.wait()
    with folder_lock(tmp_path / "run"):
        pass


def test_reentrant_and_a_failed_start_leaves_nothing(tmp_path: Path) -> None:
    run = tmp_path / "a" / "b" / "run"
    with pytest.raises(ValueError), folder_lock(run), folder_lock(run):  # the CLI and the loop both ask
        assert (run / LOCK_FILE).is_file()
        raise ValueError("a check failed")
    assert not (tmp_path / "a").exists()  # the folders it made, removed again: nothing was written in them
    with folder_lock(run):
        (run / "metrics.jsonl").write_text("{}\n")
    assert (run / "metrics.jsonl").is_file()  # a folder with work in it stays
    kept = tmp_path / "kept"
    kept.mkdir()
    with folder_lock(kept):
        pass
    assert kept.is_dir()  # a folder that was there before stays, empty or not


def test_a_file_or_an_unmakeable_folder_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="is a file, not a folder"), folder_lock(tmp_path / "f"):
        pass
    with pytest.raises(StorageError, match="cannot create the run folder /proc/selftune/run"), \
            folder_lock("/proc/selftune/run"):
        pass


def test_check_free_space(tmp_path: Path) -> None:
    check_free_space(tmp_path / "not" / "yet", 1, "a checkpoint")
    with pytest.raises(StorageError, match=r"a checkpoint needs about 1000.0 TB.*free some space"):
        check_free_space(tmp_path / "run", 10**15, "a checkpoint")


def test_two_trains_into_one_folder(tiny_data: Path, tmp_path: Path) -> None:
    """Issue 29's lost case: two `selftune train --out runs/race` 0.3 s apart. The second is refused by name
    before it writes anything; the first's metrics.jsonl is one run's."""
    from tests.helpers import sets

    out = tmp_path / "race"
    argv = ["-m", "selftune", "train", "--data", str(tiny_data), "--out", str(out), *sets("max_iters=6")]
    first = subprocess.Popen([sys.executable, *argv], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / LOCK_FILE).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    first.communicate()
    assert second.returncode == 2, second.stderr
    assert "selftune: error: run folder" in second.stderr and f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0
    import json

    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations == sorted(set(iterations))
