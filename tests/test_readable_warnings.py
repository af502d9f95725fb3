"""Issue 35, warnings a user can read: the command prints each warning as one line, `selftune: warning: ...`, once,
without Python's file:line and source line; a warning from outside selftune names its kind and where it came from;
the command puts Python's warning machinery back when it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_sweep_check_prints_each_warning_once_on_one_line(tiny_data: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "warm.yaml"  # the defaults' schedules scaled to a 300-iteration run: three warnings
    sweep.write_text(f"data: {tiny_data}\nstorage: {tmp_path / 'r'}\nbase: {{max_iters: 300, crop_size: 32}}\n")
    r = subprocess.run([sys.executable, "-m", "selftune", "sweep", str(sweep), "--check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": ""})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    said = [line for line in lines if "left at its default" in line]
    assert len(said) == 3 and all(line.startswith("selftune: warning: ") for line in said), r.stderr
    assert len({line.split(" left at")[0] for line in said}) == 3  # warmup, ST start, ramp: each once
    assert not [line for line in lines if ".py:" in line or line.startswith((" ", "\t"))], r.stderr


SCRIPT = """
import warnings
from selftune.cli import readable_warnings

before = warnings.formatwarning, list(warnings.filters)
with readable_warnings():
    for _ in range(2):
        warnings.warn("the same words", UserWarning, stacklevel=1)
    warnings.warn("the same words", UserWarning, stacklevel=1)  # from another line
    warnings.warn_explicit("from elsewhere", RuntimeWarning, "/somewhere/torch/functional.py", 7)
assert (warnings.formatwarning, list(warnings.filters)) == before, "not put back"
"""


def test_the_same_warning_from_two_places_prints_once_and_python_is_put_back() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": ""})
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    same = [line for line in err if "the same words" in line]  # from a script, not selftune: where it came from
    assert same == ["selftune: warning: the same words (UserWarning, <string>:8)"], err
    assert "selftune: warning: from elsewhere (RuntimeWarning, functional.py:7)" in err
    assert len(err) == 2, err
