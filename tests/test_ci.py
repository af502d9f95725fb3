"""Issue 35, the kill tests run: `.ci/run` runs exactly the README's test command (the fast suite), then the slow
tests that command leaves out; `-m slow` selects them and the default run deselects them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    [command] = [line for block in blocks for line in block.splitlines() if line.endswith("-m pytest")]
    return command


def test_ci_runs_the_readme_command_then_the_slow_tests() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    command = _readme_test_command()
    assert command in lines, f"the README's test command is not a line of .ci/run: {command}"
    after = lines[lines.index(command) + 1:]
    assert after == [".venv/bin/python -m pytest -m slow"]
    assert "set -euo pipefail" in lines  # the first failing step fails CI


def _collected(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args,
                        "tests/test_sweep_interrupt.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_the_default_run_leaves_the_slow_tests_out_and_dash_m_slow_runs_them() -> None:
    slow, fast = "test_ctrl_c_then_resume_then_a_copy_exports_into_itself", "test_a_finished_sweep_leaves_no"
    default = _collected()
    assert fast in default and slow not in default and "1 deselected" in default
    marked = _collected("-m", "slow")
    assert slow in marked and fast not in marked
