"""Reading a sweep folder offline: local, NFS, or s3:// / gs:// through pyarrow filesystems.

No Ray is needed: a sweep folder holds `selftune_sweep.yaml` (written by the driver),
Ray's `experiment_state-*.json` (trial statuses) and one folder per trial with `params.json`,
`result.json` (one JSON line per report) and `checkpoint_*` folders.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import yaml

from selftune.errors import SelftuneError
from selftune.search.outcome import trial_outcome

SWEEP_FILE = "selftune_sweep.yaml"


@dataclass
class TrialRecord:
    """One trial as found on disk."""

    trial_id: str
    path: str  # the trial folder (a URI for remote storage)
    params: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    ray_status: str = "UNKNOWN"  # TERMINATED | ERROR | RUNNING | PENDING | PAUSED | UNKNOWN
    errored: bool = False
    checkpoints: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.ray_status in ("TERMINATED", "ERROR")

    @property
    def outcome(self) -> str:
        last = self.results[-1] if self.results else None
        return trial_outcome(last, errored=self.errored, finished=self.finished)


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def _read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def read_sweep_meta(path: str) -> dict[str, Any]:
    """The driver's record of the sweep (resolved sweep file, data root, fingerprint, max_t)."""
    fs, root = _fs(str(path))
    info = fs.get_file_info(_join(root, SWEEP_FILE))
    if info.type != pafs.FileType.File:
        raise SelftuneError(f"{path} is not a selftune sweep folder (no {SWEEP_FILE} in it)")
    return yaml.safe_load(_read_text(fs, _join(root, SWEEP_FILE))) or {}


def read_trials(path: str) -> list[TrialRecord]:
    """Every trial of a sweep folder, finished or not, in trial-id order."""
    path = str(path)
    read_sweep_meta(path)
    fs, root = _fs(path)
    statuses: dict[str, str] = {}
    states = [
        i for i in fs.get_file_info(pafs.FileSelector(root))
        if posixpath.basename(i.path).startswith("experiment_state") and i.path.endswith(".json")
    ]
    for info in sorted(states, key=lambda i: i.mtime_ns or 0)[-1:]:
        try:
            state = json.loads(_read_text(fs, info.path))
            for trial_json, _meta in state.get("trial_data", []):
                t = json.loads(trial_json)
                statuses[t["trial_id"]] = t.get("status", "UNKNOWN")
        except (ValueError, KeyError):
            pass  # a state file caught mid-write: statuses stay unknown
    records = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory:
            continue
        tdir = info.path
        if fs.get_file_info(_join(tdir, "params.json")).type != pafs.FileType.File:
            continue
        params = json.loads(_read_text(fs, _join(tdir, "params.json")) or "{}")
        results = []
        if fs.get_file_info(_join(tdir, "result.json")).type == pafs.FileType.File:
            for line in _read_text(fs, _join(tdir, "result.json")).splitlines():
                line = line.strip()
                if line:
                    try:
                        results.append(json.loads(line))
                    except ValueError:
                        break  # a line cut by a killed driver
        children = fs.get_file_info(pafs.FileSelector(tdir))
        checkpoints = sorted(c.path for c in children if posixpath.basename(c.path).startswith("checkpoint_"))
        errored = any(posixpath.basename(c.path) in ("error.txt", "error.pkl") for c in children)
        name = posixpath.basename(tdir)
        trial_id = results[0]["trial_id"] if results else next((t for t in statuses if t in name), name)
        status = statuses.get(trial_id, "UNKNOWN")
        if status == "ERROR":
            errored = True
        records.append(
            TrialRecord(trial_id, tdir, params, results, status, errored, checkpoints)
        )
    return sorted(records, key=lambda r: r.trial_id)
