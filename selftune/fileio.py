"""The one atomic writer of the project: a temporary file in the same folder, fsync, `os.replace`.

A crash leaves either the old file or the new one, never half of one. A full disk (or a
read-only folder) is one `StorageError` (a SelftuneError and an OSError) naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from selftune.errors import StorageError


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # open(..., "xb") rather than mkstemp: the file gets the usual permissions (umask), not 0600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(exc.errno, f"cannot write {path}: {_why(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space and run the command again (nothing was overwritten)"
    return exc.strerror or str(exc)


__all__ = ["write_atomic"]
