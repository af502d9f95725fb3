"""The unlabelled pool's index: the sorted list of ROOT/unlabeled/images, cached on disk.

Listing a pool of hundreds of thousands of files takes a while, so `unlabeled_index` keeps the
list in ROOT/unlabeled/.selftune_index.txt (or ~/.cache/selftune when ROOT is read-only) and
rebuilds it only when a folder of the pool changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from selftune.data.format import IMAGE_EXTENSIONS
from selftune.errors import DataError
from selftune.fileio import write_atomic

INDEX_NAME = ".selftune_index.txt"
_INDEX_MAGIC = "# selftune-unlabeled-index v1 "
# A folder whose mtime is this close to the index's build time may have changed within the
# filesystem's timestamp granularity after it was listed ("racy" as git calls it): rebuild.
_RACY_NS = 2_000_000_000


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "selftune"


def unlabeled_index_path(root: Path) -> Path:
    """Where the index of ROOT/unlabeled/images is kept when ROOT is writable."""
    return Path(root) / "unlabeled" / INDEX_NAME


def _fallback_index_path(root: Path) -> Path:
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return _cache_dir() / f"index-{key}.txt"


def _scan_pool(top: Path) -> tuple[list[str], dict[str, int]]:
    """Relative paths of the images under `top` (recursive), and every folder's mtime_ns."""
    files: list[str] = []
    mtimes: dict[str, int] = {}
    seen_dirs: set[tuple[int, int]] = set()
    stack = [("", str(top))]
    while stack:
        rel, path = stack.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen_dirs:  # a folder link back to a folder above it
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            mtimes[rel] = st.st_mtime_ns
            prefix = rel + "/" if rel else ""
            with os.scandir(path) as it:
                for e in it:
                    name = e.name
                    if name.startswith("."):
                        continue
                    if e.is_dir():  # follows links: a loop of links raises ELOOP
                        stack.append((prefix + name, e.path))
                    elif name.lower().endswith(IMAGE_EXTENSIONS):
                        files.append(prefix + name)
        except OSError as exc:
            raise DataError(f"cannot list the unlabelled pool: {exc.filename or path}: {_why(exc)}") from None
    files.sort()
    return files, mtimes


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic links that lead back to themselves (a loop of links); remove or fix them"
    return exc.strerror or str(exc)


def _load_index(path: Path, top: Path) -> list[str] | None:
    """The index at `path` if it is still valid for `top`, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
            if not header.startswith(_INDEX_MAGIC):
                return None
            meta = json.loads(header[len(_INDEX_MAGIC):])
            files = f.read().splitlines()
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if meta.get("top") != str(top.resolve()) or meta.get("count") != len(files):
        return None
    built = int(meta.get("built_ns", 0))
    for rel, mtime in meta.get("dirs", {}).items():
        try:
            now = os.stat(top / rel if rel else top).st_mtime_ns
        except OSError:
            return None
        if now != mtime or now >= built - _RACY_NS:
            return None
    return files


def unlabeled_index(root: Path) -> list[str]:
    """Relative paths (with '/') of the images in ROOT/unlabeled/images, sorted, from a cached index.

    The pool is listed once with os.scandir (nested folders included, hidden names skipped) and
    the list is written atomically to ROOT/unlabeled/.selftune_index.txt, or to
    ~/.cache/selftune/index-<hash>.txt when ROOT is read-only. It is rebuilt when any indexed
    folder's modification time changed (adding or removing a file changes its folder's mtime).
    """
    root = Path(root)
    top = root / "unlabeled" / "images"
    if not top.is_dir():
        raise DataError(f"missing folder {top} (the unlabelled pool)")
    primary, fallback = unlabeled_index_path(root), _fallback_index_path(root)
    for path in (primary, fallback):
        files = _load_index(path, top)
        if files is not None:
            return files
    built_ns = _now_ns(root)
    files, mtimes = _scan_pool(top)
    meta = {"top": str(top.resolve()), "count": len(files), "built_ns": built_ns, "dirs": mtimes}
    text = _INDEX_MAGIC + json.dumps(meta, separators=(",", ":")) + "\n" + "".join(f + "\n" for f in files)
    for path in (primary, fallback):
        try:
            write_atomic(path, text)
            break
        except OSError:
            continue
    else:
        warnings.warn(f"could not write the unlabelled index for {top}; it will be rebuilt next time", stacklevel=2)
    return files


def _now_ns(root: Path) -> int:
    """The filesystem's idea of "now" (file mtimes come from the file server's clock on network mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".selftune-clock-", dir=root / "unlabeled")
    except OSError:
        import time

        return time.time_ns()
    try:
        os.close(fd)
        return os.stat(tmp).st_mtime_ns
    finally:
        os.unlink(tmp)


__all__ = ["INDEX_NAME", "unlabeled_index", "unlabeled_index_path"]
