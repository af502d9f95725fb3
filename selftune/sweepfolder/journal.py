"""The Optuna journal of a sweep folder: detect and repair a torn last line.

Optuna's JournalFileBackend appends one JSON line per operation. A driver killed mid-write (or a full
disk) can leave half a line at the end, and Optuna then fails on every later read with a
JSONDecodeError. Every complete line is intact, so the repair is to drop the torn tail.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path


def torn_tail(path: str | Path) -> int:
    """Bytes at the end of the journal that are not complete JSON lines (0 when it is intact)."""
    data = Path(path).read_bytes()
    good = len(data)
    while good:
        start = data.rfind(b"\n", 0, good - 1) + 1  # start of the last line in data[:good]
        line = data[start:good]
        if line.endswith(b"\n"):
            try:
                json.loads(line)
                break
            except ValueError:
                pass
        good = start
    return len(data) - good


def repair_journal(path: str | Path, *, backup: bool = True) -> int:
    """Drop a torn last line from the journal at `path`, keeping a copy of the torn file beside it (`backup`).
    Returns the bytes dropped (0: nothing to repair), with a warning naming the file when it repaired one."""
    path = Path(path)
    if not path.is_file():
        return 0
    cut = torn_tail(path)
    if not cut:
        return 0
    if backup:
        shutil.copy2(path, path.with_name(f"{path.name}.torn-{int(time.time())}"))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - cut)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: dropped a torn last line ({cut} bytes, written by a process that died mid-write)"
                  + (f"; the torn file is kept as {path.name}.torn-*" if backup else ""), stacklevel=2)
    return cut


__all__ = ["repair_journal", "torn_tail"]
