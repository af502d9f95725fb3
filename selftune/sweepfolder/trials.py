"""Reading a sweep folder offline: local, NFS, or s3:// / gs:// through pyarrow filesystems.

No Ray is needed: a sweep folder holds `selftune_sweep.yaml` (written by the driver),
Ray's `experiment_state-*.json` (trial statuses) and one folder per trial with `params.json`,
`result.json` (one JSON line per report) and `checkpoint_*` folders.
"""

from __future__ import annotations

import json
import posixpath
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import yaml

from selftune.errors import SelftuneError
from selftune.sweepfolder.layout import ERROR_FILES, SWEEP_FILE, VERDICT_FILE, trial_number_from_dirname
from selftune.sweepfolder.outcome import DIVERGED, FINISHED, trial_outcome

ENDED_BY_ITSELF = (*FINISHED, DIVERGED)  # a last report's status that says the loop ended the run
# what every driver's selftune_sweep.yaml holds (selftune.search.run.SweepPlan.meta); one that lacks any was cut short
DRIVER_KEYS = ("sweep", "base", "data_root", "data_fingerprint", "class_names", "max_t", "grace_period",
               "optuna_storage")


@dataclass
class TrialRecord:
    """One trial as found on disk (or, for a trial Ray has created but not started, in its state file)."""

    trial_id: str
    path: str  # the trial folder (a URI for remote storage)
    params: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    ray_status: str = "UNKNOWN"  # TERMINATED | ERROR | RUNNING | PENDING | PAUSED | UNKNOWN
    errored: bool = False
    checkpoints: list[str] = field(default_factory=list)
    number: int | None = None  # Ray's creation index (the `_<n>_` in the folder name), 1-based
    error_file: str | None = None  # error.txt of the last failure, if any

    @property
    def finished(self) -> bool:
        return self.ray_status in ("TERMINATED", "ERROR")

    @property
    def outcome(self) -> str:
        last = self.results[-1] if self.results else None
        return trial_outcome(last, errored=self.errored, finished=self.finished)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, file://, ...)."""
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SelftuneError(f"cannot open {path}: {exc}") from None
    return pafs.LocalFileSystem(), path


def read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def as_uri(original: str, fs_path: str) -> str:
    """A path pyarrow returned, as the user can use it again: with the scheme of the path they gave."""
    if "://" not in original:
        return fs_path
    return f"{original.split('://', 1)[0]}://{fs_path}"


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def _is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def read_sweep_meta(path: str) -> dict[str, Any]:
    """The driver's record of the sweep (resolved sweep file, data root, fingerprint, max_t)."""
    fs, root = filesystem(str(path))
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise SelftuneError(f"{path} does not exist")
    if info.type != pafs.FileType.Directory:
        raise SelftuneError(f"{path} is not a selftune sweep folder (it is not a folder)")
    if not _is_file(fs, _join(root, SWEEP_FILE)):
        hint = ""
        subs = [i for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.Directory]
        found = [posixpath.basename(i.path) for i in subs if _is_file(fs, _join(i.path, SWEEP_FILE))]
        if found:
            hint = f"; sweeps inside it: {', '.join(sorted(found)[:10])}"
        raise SelftuneError(f"{path} is not a selftune sweep folder (no {SWEEP_FILE} in it){hint}")
    file = _join(str(path), SWEEP_FILE)
    again = ("; it is written once, when the sweep starts: copy it again from where the sweep ran (the trial "
             "folders do not depend on it)")
    try:
        meta = yaml.safe_load(read_text(fs, _join(root, SWEEP_FILE)))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SelftuneError(f"{file} is damaged (not valid YAML: {problem}){again}") from None
    if meta is None:
        raise SelftuneError(f"{file} is empty{again}")
    if not isinstance(meta, dict):
        raise SelftuneError(f"{file} is not a sweep record (expected a mapping, got {type(meta).__name__}){again}")
    for key in ("sweep", "base"):
        if key in meta and not isinstance(meta[key], dict):
            raise SelftuneError(f"{file}: `{key}` should be a mapping, got {meta[key]!r}: the record is damaged{again}")
    missing = [k for k in DRIVER_KEYS if k not in meta]
    if "selftune_version" in meta and missing:  # written by the driver, so it had all of them: cut short
        raise SelftuneError(f"{file} is cut short (no {', '.join(missing)}){again}")
    return meta


def _read_state(fs: pafs.FileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Ray's latest experiment state: trial id -> {status, dir, params, number}."""
    states = [
        i for i in fs.get_file_info(pafs.FileSelector(root))
        if posixpath.basename(i.path).startswith("experiment_state") and i.path.endswith(".json")
    ]
    out: dict[str, dict[str, Any]] = {}
    # the file name holds the session's start time; a resumed sweep writes a newer one with every trial
    for info in sorted(states, key=lambda i: (posixpath.basename(i.path), i.mtime_ns or 0))[-1:]:
        try:
            state = json.loads(read_text(fs, info.path))
            for trial_json, _meta in state.get("trial_data", []):
                t = json.loads(trial_json)
                tag = str(t.get("experiment_tag") or "")
                number = int(tag.split("_", 1)[0]) if tag.split("_", 1)[0].isdigit() else None
                params = t.get("evaluated_params") or t.get("config") or {}
                out[t["trial_id"]] = {
                    "status": t.get("status", "UNKNOWN"), "dir": t.get("relative_logdir"),
                    "params": params if isinstance(params, dict) else {}, "number": number,
                }
        except (ValueError, KeyError, TypeError):
            pass  # a state file caught mid-write: statuses stay unknown
    return out


def _read_results(fs: pafs.FileSystem, path: str) -> list[dict[str, Any]]:
    """Every complete line of result.json; a line cut by a killed driver (always the last) is dropped."""
    if not _is_file(fs, path):
        return []
    results = []
    for line in read_text(fs, path).splitlines():
        line = line.strip()
        if line:
            try:
                row = json.loads(line)
            except ValueError:
                break
            if isinstance(row, dict):
                results.append(row)
    return results


def _read_params(fs: pafs.FileSystem, tdir: str, results: list[dict[str, Any]], state: dict[str, dict[str, Any]],
                 path: str) -> dict[str, Any] | None:
    """A trial's params.json; one cut short (a killed driver, a partial copy) is read from what else the trial
    holds (its reports' config, Ray's state), with a warning naming the file; None, with a warning, when nothing
    holds them (the trial is left out)."""
    file = _join(tdir, "params.json")
    text = read_text(fs, file)
    try:
        params = json.loads(text) if text.strip() else {}
        if isinstance(params, dict):
            return params
    except ValueError:
        pass
    shown = as_uri(path, file)
    name = posixpath.basename(tdir)
    known = next((s["params"] for s in state.values() if s["dir"] == name and s["params"]), None)
    config = results[0].get("config") if results else None
    found = known or (config if isinstance(config, dict) and config else None)
    if found is not None:
        source = "Ray's experiment state" if known else "its result.json"
        warnings.warn(f"{shown} is damaged (not a JSON object); its parameters are read from {source}", stacklevel=3)
        return dict(found)
    warnings.warn(f"{shown} is damaged (not a JSON object) and nothing else holds its parameters: that trial is "
                  "left out", stacklevel=3)
    return None


def read_trials(path: str) -> list[TrialRecord]:
    """Every trial of a sweep folder, finished or not (pending ones included), in trial-id order."""
    path = str(path)
    read_sweep_meta(path)
    fs, root = filesystem(path)
    state = _read_state(fs, root)
    by_dir = {s["dir"]: tid for tid, s in state.items() if s["dir"]}
    records = []
    seen = set()
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory:
            continue
        tdir = info.path
        if not _is_file(fs, _join(tdir, "params.json")):
            continue
        results = _read_results(fs, _join(tdir, "result.json"))
        params = _read_params(fs, tdir, results, state, path)
        if params is None:  # left out whole: a record without its params would export the base config as its own
            seen.update(t for t, s in state.items() if s["dir"] == posixpath.basename(tdir))
            continue
        children = fs.get_file_info(pafs.FileSelector(tdir))
        checkpoints = sorted(c.path for c in children if posixpath.basename(c.path).startswith("checkpoint_"))
        error_file = next((c.path for c in children if posixpath.basename(c.path) == ERROR_FILES[0]), None)
        has_error = any(posixpath.basename(c.path) in ERROR_FILES for c in children)
        name = posixpath.basename(tdir)
        trial_id = by_dir.get(name) or (results[0].get("trial_id") if results else None)
        if not trial_id:
            trial_id = next((t for t in state if t in name), name)
        trial_state = state.get(trial_id, {})
        status = trial_state.get("status", "UNKNOWN")
        # Ray's status is the truth when we have it: a trial that failed once and then succeeded on a
        # retry keeps its error.txt but is TERMINATED. Without a state file, an error file and no final
        # status in the last report mean it failed.
        last_status = results[-1].get("status") if results else None
        errored = (has_error and last_status not in ENDED_BY_ITSELF) if status == "UNKNOWN" else status == "ERROR"
        number = trial_state.get("number")
        if number is None:
            number = trial_number_from_dirname(name, trial_id)
        records.append(TrialRecord(
            trial_id, as_uri(path, tdir), params, results, status, errored, [as_uri(path, c) for c in checkpoints],
            number, as_uri(path, error_file) if error_file else None,
        ))
        seen.add(trial_id)
    for trial_id, s in state.items():  # created by Ray but not started yet: no folder
        if trial_id not in seen:
            tdir = _join(root, s["dir"]) if s["dir"] else _join(root, trial_id)
            records.append(TrialRecord(trial_id, as_uri(path, tdir), dict(s["params"]), [], s["status"], s["status"] == "ERROR",
                                       [], s["number"], None))
    return sorted(records, key=lambda r: r.trial_id)


def read_verdict(path: str) -> dict[str, Any] | None:
    """The sweep's verdict against its supervised control (verdict.json), or None when it has none."""
    fs, root = filesystem(str(path))
    file = _join(root, VERDICT_FILE)
    if not _is_file(fs, file):
        return None
    try:
        data = json.loads(read_text(fs, file))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        warnings.warn(f"{as_uri(str(path), file)} is damaged (not a JSON object): the sweep's verdict is left out; "
                      "`selftune sweep --resume` writes it again", stacklevel=2)
        return None
    return data
