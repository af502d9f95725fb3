"""The project's atomic writers (`write_atomic` for a file, `write_folder` for a generated folder), the lock
that keeps a second writer out of a run or sweep folder (`folder_lock`), and the free-space check
(`check_free_space`).

A file goes to a temporary file in the same folder, fsync, `os.replace`: a crash leaves either the old
file or the new one, never half of one. A full disk (or a read-only folder) is one `StorageError` (a
SelftuneError and an OSError) naming the file. A folder is written into a staging folder beside it and
moved into place at the end (the demo data sets).

A run or sweep folder has one writer: `folder_lock` holds an `fcntl.flock` on `<folder>/.selftune.lock` for
the writer's life (the kernel drops it when the process dies, even by SIGKILL) and refuses a second writer
with a message naming the holder's pid, host and command.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from selftune.errors import DataError, SelftuneError, StorageError

LOCK_FILE = ".selftune.lock"  # in a run or sweep folder: who writes it now (`folder_lock`)


class FolderInUseError(SelftuneError):
    """Another process writes the folder (it holds its `folder_lock`); the message names its pid."""


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


_HELD: dict[str, list[int]] = {}  # folder -> [lock file descriptor, depth]: this process's locks (re-entrant)


@contextlib.contextmanager
def folder_lock(path: str | Path, what: str = "run folder", fix: str = "choose another folder") -> Iterator[Path]:
    """Hold the folder `path` as its only writer while the block runs; yields the folder (made if missing).

    A second process asking for the same folder gets a `FolderInUseError` at once, naming the holder (pid, host,
    command, since when) and `fix`. Re-entrant within a process (the CLI and the loop may both ask). A folder this
    call made that still holds nothing but the lock file when the block ends (a launch that failed its checks) is
    removed again, with the parent folders it made, so a failed start leaves nothing behind.
    """
    path = Path(path).expanduser().absolute()
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    if path.exists() and not path.is_dir():
        raise StorageError(errno.ENOTDIR, f"{what} {path} is a file, not a folder; {fix}")
    made = _make_folder(path, what, fix)
    try:
        fd = _acquire(path, what, fix)
    except BaseException:
        _remove_made(path, made)
        raise
    _HELD[key] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        try:
            if made is not None and [p.name for p in path.iterdir()] == [LOCK_FILE]:
                os.unlink(path / LOCK_FILE)  # still holding the lock: nobody can have taken it meanwhile
                _remove_made(path, made)
        except OSError:
            pass
        finally:
            os.close(fd)


def lock_holder(path: str | Path) -> dict[str, object] | None:
    """What the lock file of folder `path` says about its last holder (pid, host, command, since), or None."""
    try:
        text = (Path(path) / LOCK_FILE).read_text()
        info = json.loads(text)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _make_folder(path: Path, what: str, fix: str) -> Path | None:
    """Make `path` (and missing parents); returns the topmost folder made, or None when it existed."""
    top = next(p for p in (path, *path.parents) if p.exists())  # "/" exists
    if top == path:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot create the {what} {path}: {_why(exc)}; {fix}") from None
    return top / path.relative_to(top).parts[0]


def _remove_made(path: Path, made: Path | None) -> None:
    """Remove `path` and its parents up to `made` (the topmost folder a lock made), while they are empty."""
    if made is None:
        return
    for p in (path, *path.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == made:
            return


def _acquire(path: Path, what: str, fix: str) -> int:
    lock = path / LOCK_FILE
    for _ in range(20):  # a holder that removes its empty folder as we open the file: open it again
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write the lock file {lock}: {_why(exc)}; {fix}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{what} {path} is in use by another process ({_holder_text(path)}); wait for "
                                   f"it to end, or {fix}") from None
        except OSError as exc:  # a file system without locks: go on, and say so
            warnings.warn(f"cannot lock {lock} ({exc.strerror}); nothing keeps a second writer out of {path}",
                          stacklevel=4)
            return fd
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            return fd
        os.close(fd)
    raise FolderInUseError(f"{what} {path}: could not take its lock file {lock}; {fix}")


def _holder_text(path: Path) -> str:
    info = lock_holder(path)
    if not info:
        return "it is starting; its pid is not written yet"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {info.get('pid')}{where}, `{info.get('command')}`, since {info.get('since')}"


def check_free_space(path: str | Path, need_bytes: int, what: str) -> None:
    """A `StorageError` naming `path` when the disk holding it (or the folder it will be made in) has less than
    `need_bytes` free; `what` says what needs the space ("a checkpoint of this model")."""
    path = Path(path).expanduser().absolute()
    where = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # cannot tell: the writes themselves still fail with one message
    if free < need_bytes:
        raise StorageError(errno.ENOSPC, f"not enough free space for {path}: {what} needs about {_size(need_bytes)}, "
                           f"the disk holding {where} has {_size(free)} free; free some space or choose another folder")


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return f"{n} bytes"


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space and run the command again (nothing was overwritten)"
    return exc.strerror or str(exc)


__all__ = ["LOCK_FILE", "FolderInUseError", "check_free_space", "folder_lock", "lock_holder", "write_atomic", "write_folder"]
