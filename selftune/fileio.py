"""The project's atomic writers: `write_atomic` for a file, `write_folder` for a generated folder.

A file goes to a temporary file in the same folder, fsync, `os.replace`: a crash leaves either the old
file or the new one, never half of one. A full disk (or a read-only folder) is one `StorageError` (a
SelftuneError and an OSError) naming the file. A folder is written into a staging folder beside it and
moved into place at the end (the demo data sets).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from selftune.errors import DataError, StorageError


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


def write_folder(root: str | Path, write: Callable[[Path], None], *, owned: Iterable[str], marker: str,
                 overwrite: bool = False, what: str = "destination") -> Path:
    """Fill the folder `root` by `write(stage)` into a staging folder beside it, then move the result into place;
    returns `root`. An interrupted run never leaves a half-written folder, and concurrent calls cannot mix files.

    A non-empty `root` is refused (a DataError naming it as `what`) unless `overwrite`, which first removes only
    the entries named in `owned` and then moves the new ones in, the file `marker` (which says the folder is
    complete) last. An empty or missing `root` is one atomic rename; when another process completed it
    meanwhile (its `marker` is there), that folder is kept.
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{what} {root} exists and is not a folder")
    replace = root.is_dir() and any(root.iterdir())
    if replace and not overwrite:
        raise DataError(f"{what} {root} is not empty; pass overwrite=True (--overwrite) to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = root.parent / f".{root.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    stage.mkdir()  # not mkdtemp: that makes the folder private (0700), and it becomes ROOT
    try:
        write(stage)
        if replace:
            for name in owned:
                p = root / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            for item in sorted(stage.iterdir(), key=lambda p: p.name == marker):  # marker last
                os.replace(item, root / item.name)
            stage.rmdir()
        else:
            try:
                os.rename(stage, root)  # atomic; also onto an empty folder
            except OSError:
                if (root / marker).is_file():  # another process generated it meanwhile
                    shutil.rmtree(stage, ignore_errors=True)
                    return root
                raise DataError(f"{what} {root} was filled by something else while generating") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return root


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space and run the command again (nothing was overwritten)"
    return exc.strerror or str(exc)


__all__ = ["write_atomic", "write_folder"]
