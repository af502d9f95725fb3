"""Issue 19: a run survives crashes, broken files, noisy pools, odd class counts and bad input, with real files
and real tiny models (no mocks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from selftune.cli import main
from tests.test_train_cli import sets


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


# ---------------------------------------------------------------------- bad input: one message, exit 2 (defect 10)


def test_a_bad_set_value_is_one_message_for_train_and_sweep(tiny_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_data), "--out", str(out), "--no-progress", "--set", "thresholds=[0.5,"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("selftune: error: --set thresholds: value '[0.5,' is not valid YAML")
    assert not out.exists()
    rc = main(["sweep", "--check", "--storage", str(tmp_path / "sweeps"), "--set", "thresholds=[0.5,"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("selftune: error: --set thresholds: value '[0.5,' is not valid")
    assert not (tmp_path / "sweeps").exists()


def test_a_loop_of_symlinks_in_the_pool_is_one_message(tiny_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "unlabeled" / ".selftune_index.txt").unlink(missing_ok=True)
    pool = root / "unlabeled" / "images"
    os.symlink(pool / "b", pool / "a")
    os.symlink(pool / "a", pool / "b")
    before = files_under(root)
    rc = main(["data", "check", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert str(pool) in line and "loop" in line
    assert files_under(root) == before  # no index written


@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_an_unusable_out_folder_is_one_message(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               where: str) -> None:
    if where == "under /proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    (tmp_path / "afile").write_text("not a folder")
    out = {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "run",
           "under /proc": Path("/proc/selftune-test/run")}[where]
    before = files_under(tmp_path)
    rc = main(["train", "--data", str(tiny_data), "--out", str(out), "--no-progress", *sets("max_iters=2")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("selftune: error:") and str(out) in line
    assert files_under(tmp_path) == before
