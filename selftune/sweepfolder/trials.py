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
from selftune.sweepfolder.layout import (
    BEST_CONFIG_FILE,
    CONFIRM_DIR,
    ERROR_FILES,
    SWEEP_FILE,
    VERDICT_FILE,
    is_remote,
    trial_number_from_dirname,
)
from selftune.sweepfolder.outcome import DAMAGED, ENDED_BY_ITSELF, sweep_rungs, trial_outcome
from selftune.sweepfolder.paths import resolve_meta

# what every driver's selftune_sweep.yaml holds (selftune.search.plan.SweepPlan.meta); one that lacks any was cut short
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
    damaged: str | None = None  # why its result.json cannot be read, naming the file; None when it reads
    rungs: tuple[float, ...] = ()  # the sweep's ASHA rungs (`outcome.sweep_rungs`): an outside stop at one is ASHA's

    @property
    def finished(self) -> bool:
        return self.ray_status in ("TERMINATED", "ERROR")

    @property
    def outcome(self) -> str:
        if self.damaged:  # not the last readable report's word: what came after it is unknown
            return DAMAGED
        return trial_outcome(self.results[-2:], errored=self.errored, finished=self.finished, rungs=self.rungs)


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
    """The driver's record of the sweep (resolved sweep file, data root, fingerprint, max_t), its paths into the
    folder where the sweep ran read as paths into `path` (`paths.resolve_meta`: a copied folder points into itself)."""
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
    return resolve_meta(meta, str(path))  # a copied or moved folder points into itself


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


def _read_results(fs: pafs.FileSystem, path: str, shown: str) -> tuple[list[dict[str, Any]], str | None]:
    """Every report of result.json, and why the file is damaged (naming it as `shown`) or None. A last line cut by a
    killed driver (a JSON object begun, no newline after it) is dropped quietly: Ray writes each report as one line
    and a newline. Any other line that is not a JSON object (garbage, a line cut inside the file, bytes that are not
    text) is damage: the reports around it are kept, and the trial is never read as ending with the last of them."""
    if not _is_file(fs, path):
        return [], None
    try:
        text = read_text(fs, path)
    except UnicodeDecodeError:
        return [], f"{shown} is damaged (not text)"
    results: list[dict[str, Any]] = []
    bad: list[int] = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            results.append(row)
        elif not (n == len(lines) and line.lstrip().startswith("{")):  # the last line, cut short: not damage
            bad.append(n)
    if not bad:
        return results, None
    where = f"line {bad[0]}" if len(bad) == 1 else f"{len(bad)} lines (the first: line {bad[0]})"
    return results, f"{shown} is damaged ({where} of {len(lines) - (not lines[-1])} not a JSON report)"


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
    rungs = tuple(sweep_rungs(read_sweep_meta(path)))
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
        results, damaged = _read_results(fs, _join(tdir, "result.json"), as_uri(path, _join(tdir, "result.json")))
        if damaged:
            warnings.warn(f"{damaged}: that trial is left out of the ranking, and how it ended is unknown; copy the "
                          "trial folder again from where the sweep ran", stacklevel=2)
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
            number, as_uri(path, error_file) if error_file else None, damaged, rungs,
        ))
        seen.add(trial_id)
    for trial_id, s in state.items():  # created by Ray but not started yet: no folder
        if trial_id not in seen:
            tdir = _join(root, s["dir"]) if s["dir"] else _join(root, trial_id)
            records.append(TrialRecord(trial_id, as_uri(path, tdir), dict(s["params"]), [], s["status"], s["status"] == "ERROR",
                                       [], s["number"], None, rungs=rungs))
    return sorted(records, key=lambda r: r.trial_id)


# verdict.json's keys that the report reads, and the type each must have when present (None allowed)
VERDICT_TYPES: dict[str, tuple[type, ...]] = {
    "format": (int,), "headline": (str,), "outcome": (str,), "split": (str,), "lines": (list,), "flags": (list,),
    "difference": (dict,), "arms": (dict,), "runs": (list,), "per_class": (dict,), "scores": (dict,),
}
VERDICT_ITEMS: dict[str, type] = {"arms": dict, "runs": dict, "per_class": dict}  # each value / item of these
_TYPE_WORDS = {int: "a whole number", str: "a string", list: "a list", dict: "a mapping"}


def _verdict_type_error(data: dict[str, Any]) -> str | None:
    """What in a verdict.json of the right shape has the wrong type (`key` should be ..., got ...), or None."""
    for key, kinds in VERDICT_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            return f"`{key}` should be {_TYPE_WORDS[kinds[0]]}, got {type(value).__name__} {_short(value)}"
    for key, kind in VERDICT_ITEMS.items():
        value = data.get(key)
        items = value.items() if isinstance(value, dict) else enumerate(value or [])
        for name, item in items:
            if not isinstance(item, kind):
                return f"`{key}` entry {name!r} should be {_TYPE_WORDS[kind]}, got {type(item).__name__} {_short(item)}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def read_verdict(path: str, *, warn: bool = True) -> dict[str, Any] | None:
    """The sweep's verdict against its supervised control (verdict.json), or None when it has none. One that cannot
    be read (not JSON, or a key of the wrong type) is None too, with a warning naming the file and what is wrong
    (unless not `warn`; `verdict_problem` says it): it is never read as a verdict."""
    data, problem = _read_verdict(str(path))
    if problem and warn:
        warnings.warn(problem, stacklevel=2)
    return data


def _read_verdict(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(verdict.json's record, None), (None, why it is damaged) or (None, None) when there is none."""
    fs, root = filesystem(path)
    file = _join(root, VERDICT_FILE)
    if not _is_file(fs, file):
        return None, None
    shown = as_uri(path, file)
    again = "the sweep's verdict is left out; `selftune sweep --resume` writes it again"
    try:
        data = json.loads(read_text(fs, file))
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        return None, f"{shown} is damaged (not a JSON object): {again}"
    wrong = _verdict_type_error(data)
    if wrong:
        return None, f"{shown} is damaged ({wrong}): {again}"
    return data, None


def verdict_problem(path: str, meta: dict[str, Any] | None = None) -> str | None:
    """Why the sweep at `path` has no verdict to show though it should, naming the file, or None: its verdict.json is
    damaged (`read_verdict`), or missing while best_config.yaml carries the verdict the sweep wrote, or missing while
    the sweep ended (best_config.yaml is there) with a control other than none. A sweep with a control that has not
    ended says it is not there yet; one on s3:// or gs:// writes none."""
    fs, root = filesystem(str(path))
    file, best = _join(root, VERDICT_FILE), _join(root, BEST_CONFIG_FILE)
    if _is_file(fs, file):
        return _read_verdict(str(path))[1]
    if is_remote(str(path)):
        return None
    shown = as_uri(str(path), file)
    meta = meta if meta is not None else read_sweep_meta(path)
    control = meta.get("sweep", {}).get("control") if isinstance(meta.get("sweep"), dict) else None
    carried = None
    if _is_file(fs, best):
        try:
            doc = yaml.safe_load(read_text(fs, best))
            carried = doc.get("provenance", {}).get("verdict") if isinstance(doc, dict) else None
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
            carried = None
        if isinstance(carried, dict):
            return (f"{shown} is missing, though {BEST_CONFIG_FILE} carries the verdict the sweep wrote "
                    f"({str(carried.get('headline') or '?')[:120]}); its runs, per-class differences and flags went "
                    f"with it. `selftune sweep --resume {path}` writes it again from the confirmation runs in "
                    f"{CONFIRM_DIR}/")
        if control not in (None, "none", False):
            return (f"{shown} is missing: the sweep ran with control {control!r}, which writes it when the sweep "
                    f"ends, and it ended ({BEST_CONFIG_FILE} is there). `selftune sweep --resume {path}` writes it "
                    "again")
        return None
    if control not in (None, "none", False):
        return (f"no {VERDICT_FILE} yet: the sweep (control {control!r}) writes it when it ends, and it has not ended "
                f"(no {BEST_CONFIG_FILE})")
    return None
