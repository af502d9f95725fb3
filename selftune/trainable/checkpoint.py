"""Files of a training run: the resumable training state (its schema, save and restore), the best EMA model.

Every file is written to a temporary name in its folder and moved into place with `os.replace`,
so a crash leaves either the old file or the new one, never half of one. Everything is read back
with `torch.load(..., weights_only=True)`: the files hold only tensors and plain Python data.

Two checkpoints are kept: before a new checkpoint/state.pt is written, the complete one it replaces
becomes state.prev.pt in the run folder (beside checkpoint/, so the folder reported to Ray, which
copies it at every report, holds one state). A state.pt that cannot be read (a copy cut short, a
disk fault) is then not the end of the run: `resume_state` warns, naming both files, and resumes from
state.prev.pt.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selftune.errors import ConfigError, DataError, StorageError
from selftune.fileio import write_atomic
from selftune.status import RUNNING
from selftune.trainable.config import TrainConfig

STATE_VERSION = 1
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
PREVIOUS_FILE = "state.prev.pt"  # the checkpoint before checkpoint/state.pt, in the run folder
BEST_FILE = "best_model_ema.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
# Keys that may change when a run is resumed: a longer run, a different patience.
RESUMABLE_CHANGES = ("max_iters", "patience")


def save_atomic(obj: Any, path: Path) -> None:
    """`torch.save` to `path` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def load(path: Path) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` onto the CPU; DataError naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise DataError(f"cannot read checkpoint {path}: {_unreadable(path, exc)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a selftune checkpoint (got {type(obj).__name__})")
    return obj


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not load `path`: empty, truncated, not a torch file, or torch's own words (on one line)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): a save or a copy was cut short"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return f"the file is truncated ({size:,} bytes, its end is missing): a save or a copy was cut short"
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # neither a zip nor a (legacy) pickle
        return f"not a torch file (it starts with {head!r}); expected a state.pt or best_model_ema.pt from selftune"
    detail = " ".join(str(exc).split())
    return f"the torch file is corrupt ({type(exc).__name__}: {detail[:300] or 'no detail'})"


def state_path(resume_from: Path) -> Path:
    """`resume_from` is a checkpoint folder (holding state.pt), a run folder, or state.pt itself."""
    p = Path(resume_from)
    for candidate in (p, p / STATE_FILE, p / CHECKPOINT_DIR / STATE_FILE):
        if candidate.is_file():
            return candidate
    raise DataError(f"no checkpoint to resume from at {p} (expected {p / STATE_FILE}); a run that stopped before "
                    "its first checkpoint can be started again, without resuming, into the same folder")


def previous_path(resume_from: Path) -> Path | None:
    """Where the checkpoint before the one at `resume_from` (as `state_path` takes it) is kept: RUN/state.prev.pt
    for RUN, RUN/checkpoint or RUN/checkpoint/state.pt; None for a state.pt outside a checkpoint/ folder (Ray's
    copies, which Ray keeps its own earlier ones of)."""
    p = Path(resume_from)
    if p.name == STATE_FILE:
        p = p.parent
    if p.name != CHECKPOINT_DIR:
        p = p / CHECKPOINT_DIR
        if not p.is_dir():
            return None
    return p.parent / PREVIOUS_FILE


def _load_training_state(path: Path) -> dict[str, Any]:
    state = load(path)
    missing = [k for k in ("config", "iteration", "model", "ema", "optimizer") if k not in state]
    if missing:
        raise DataError(f"{path} is not a selftune training state (missing {', '.join(missing)})")
    return state


def resume_state(resume_from: Path) -> tuple[Path, dict[str, Any]]:
    """(the file, the training state) to resume from: state.pt, or, when that is missing or unreadable and the
    run folder holds state.prev.pt, that one, with a warning naming both files."""
    try:
        path = state_path(resume_from)
        return path, _load_training_state(path)
    except DataError as exc:
        previous = previous_path(resume_from)
        if previous is None or not previous.is_file():
            raise
        try:
            state = _load_training_state(previous)
        except DataError as exc2:
            raise DataError(f"{exc}; the previous checkpoint cannot be used either: {exc2}") from None
        warnings.warn(f"{exc}; resuming from the previous checkpoint {previous} (iteration {state['iteration']}) "
                      "instead", stacklevel=2)
        return previous, state


def load_state(resume_from: Path) -> dict[str, Any]:
    """The training state at `resume_from` (see `resume_state`)."""
    return resume_state(resume_from)[1]


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    """A run resumes only with the config it was started with (save max_iters and patience)."""
    now = cfg.to_dict()
    try:
        before = TrainConfig.from_dict(saved).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"the config saved in {where} is not valid any more: {exc}") from None
    differ = [k for k in now if now[k] != before[k] and k not in RESUMABLE_CHANGES]
    if differ:
        details = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(
            f"cannot resume from {where}: the config differs in {', '.join(differ)} ({details}); "
            f"only {' and '.join(RESUMABLE_CHANGES)} may change on resume"
        )


def load_model_file(path: Path) -> tuple[TrainConfig, tuple[str, ...] | None, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, class names, EMA weights, info) from best_model_ema.pt, a state.pt or their folders."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / BEST_FILE, p / STATE_FILE, p / CHECKPOINT_DIR / STATE_FILE):
            if candidate.is_file():
                p = candidate
                break
        else:
            raise DataError(f"no {BEST_FILE} or {STATE_FILE} in {path}")
    obj = load(p)
    weights = obj.get("model") if "ema" not in obj else obj["ema"]
    if not isinstance(weights, dict) or "config" not in obj:
        raise DataError(f"{p} is not a selftune model file (expected {BEST_FILE} or {STATE_FILE})")
    names = obj.get("class_names")
    info = {"file": str(p), "iteration": obj.get("iteration"), "val_miou": obj.get("val_miou")}
    return TrainConfig.from_dict(obj["config"]), tuple(names) if names else None, weights, info


def truncate_metrics(path: Path, last_iteration: int, lost: dict[str, Any] | None = None) -> bool:
    """Drop metrics.jsonl lines past `last_iteration` (written after the checkpoint being resumed). `lost` is the
    checkpoint's own evaluation (saved in its state.pt): when no line is at `last_iteration` (a crash between
    the checkpoint and the metrics line), it is appended. Returns whether it was."""
    if not path.is_file() and lost is None:
        return False
    kept, last = [], 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        try:
            it = json.loads(line).get("iteration", 0)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if it <= last_iteration:
            kept.append(line + "\n")
            last = it
    restore = lost is not None and last < last_iteration and lost.get("iteration") == last_iteration
    if restore:
        kept.append(json.dumps(lost) + "\n")
    write_atomic(path, "".join(kept))
    return restore


# ---------------------------------------------------------------------- the training state


@dataclass
class Progress:
    """Where a run stands: the counters the loop keeps between evaluations (saved in state.pt)."""

    iteration: int = 0  # optimizer steps completed
    best_val_miou: float = -math.inf
    best_iteration: int = 0  # 0: no evaluation yet
    bad_evals: int = 0  # evaluations since the last new best (patience)
    status: str = RUNNING
    early_losses: list[float] = field(default_factory=list)  # the first step losses: the divergence reference

    @property
    def best_or_nan(self) -> float:
        return self.best_val_miou if self.best_iteration else float("nan")


@dataclass
class TrainingState:
    """Everything that changes while a run trains; `save_state` writes it, `restore_state` loads it back."""

    model: torch.nn.Module  # the student
    teacher: torch.nn.Module  # its EMA copy (scored and kept)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    method: Any  # selftune.trainable.methods.Method
    window: Any  # selftune.trainable.records.Window
    progress: Progress


def _cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_state(path: Path, st: TrainingState, cfg: TrainConfig, class_names: tuple[str, ...], device: torch.device,
               metrics: dict[str, Any] | None = None, fingerprint: str | None = None) -> None:
    """Write the resumable state (schema version STATE_VERSION) to `path`, atomically, with `metrics`, the
    evaluation it follows (its metrics.jsonl line, restored from here if a crash lost it); in a run's
    checkpoint/ folder, the complete state.pt it replaces is kept as the run's state.prev.pt."""
    previous = previous_path(path)
    for folder in dict.fromkeys([path.parent, *([previous.parent] if previous is not None else [])]):
        _still_writable(folder, st.progress.iteration)
    if previous is not None and path.is_file() and zipfile.is_zipfile(path):  # a whole file, not one cut short
        _keep_as(path, previous)
    p = st.progress
    save_atomic({
        "version": STATE_VERSION, "config": cfg.to_dict(), "class_names": list(class_names),
        "iteration": p.iteration, "status": p.status, "best_val_miou": p.best_val_miou,
        "best_iteration": p.best_iteration, "bad_evals": p.bad_evals, "early_losses": list(p.early_losses),
        "model": _cpu(st.model), "ema": _cpu(st.teacher), "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(), "scaler": st.scaler.state_dict(), "method": st.method.state_dict(),
        "window": st.window.state_dict(), "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [], "metrics": metrics,
        "data_fingerprint": fingerprint,  # the dataset's, compared on resume
    }, path)


def _still_writable(folder: Path, iteration: int) -> None:
    """Before a checkpoint: `folder` still takes files. The run checked it before its first step; one that turned
    read-only since (a remount, a changed permission) is named as such, not by the error of the first file
    operation to meet it (a read-only checkpoint/ read 'Invalid cross-device link' when its state.pt was kept as
    state.prev.pt across the two mounts)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".selftune-write-check-"):
            pass
    except OSError as exc:
        run = folder.parent if folder.name == CHECKPOINT_DIR else folder
        raise StorageError(exc.errno, (
            f"cannot save the checkpoint of iteration {iteration}: {folder} is not writable any more "
            f"({exc.strerror or exc}; it took files when the run started, so it turned read-only while the run ran). "
            f"Nothing there was changed: make it writable, then `selftune train --resume --out {run}` (or `selftune "
            "sweep --resume` for a sweep) continues from its last checkpoint")) from None


def _keep_as(path: Path, previous: Path) -> None:
    """Make `previous` the file at `path` now: a hard link (state.pt stays in place), or a move where links fail,
    or a copy where the two are on different file systems (a checkpoint/ mounted on its own)."""
    tmp = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(path, tmp)
            os.replace(tmp, previous)
        except OSError:
            if tmp.exists():
                tmp.unlink()
            try:
                os.replace(path, previous)  # until the new state.pt is in place, resume falls back to this one
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(path, tmp)
                os.replace(tmp, previous)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(exc.errno, f"cannot keep {path} as {previous}: {exc.strerror}") from None


def restore_state(state: dict[str, Any], st: TrainingState, device: torch.device) -> None:
    """Load a saved state into the freshly built `st` (and the global RNGs)."""
    st.model.load_state_dict(state["model"])
    st.teacher.load_state_dict(state["ema"])
    st.optimizer.load_state_dict(state["optimizer"])
    st.scheduler.load_state_dict(state["scheduler"])
    if st.scaler.is_enabled() and state["scaler"]:  # empty when saved without fp16 (CPU, bf16)
        st.scaler.load_state_dict(state["scaler"])
    st.method.load_state_dict(state["method"])
    st.window = type(st.window).from_state(state["window"], device)
    st.progress = Progress(int(state["iteration"]), float(state["best_val_miou"]), int(state["best_iteration"]),
                           int(state["bad_evals"]), str(state.get("status", RUNNING)),
                           [float(x) for x in state.get("early_losses", [])])
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def save_best(path: Path, teacher: torch.nn.Module, cfg: TrainConfig, class_names: tuple[str, ...],
              iteration: int, val_miou: float) -> None:
    """best_model_ema.pt: the EMA weights with the config and classes that built them."""
    save_atomic({"config": cfg.to_dict(), "class_names": list(class_names), "model": _cpu(teacher),
                 "iteration": iteration, "val_miou": val_miou}, path)


__all__ = [
    "BEST_FILE",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "PREVIOUS_FILE",
    "STATE_FILE",
    "Progress",
    "TrainingState",
    "check_resume_config",
    "load",
    "load_model_file",
    "load_state",
    "previous_path",
    "restore_state",
    "resume_state",
    "save_atomic",
    "save_best",
    "save_state",
    "state_path",
    "truncate_metrics",
]
