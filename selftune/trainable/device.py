"""Where the loop runs: CPU threads, the device, mixed precision, and batches moved to the device."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from selftune.data import IGNORE_VALUE
from selftune.errors import ConfigError
from selftune.trainable.augment import normalize
from selftune.trainable.config import TrainConfig


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: cgroup/taskset limits, Ray's allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")
    return torch.device(name)


def resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: CUDA only (bf16 where supported, else fp16 with a GradScaler); None = fp32."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    bf16_ok = torch.cuda.is_bf16_supported()
    if cfg.amp == "bf16" and not bf16_ok:
        raise ConfigError("amp 'bf16' requested but this GPU does not support bfloat16; use fp16 or auto")
    if cfg.amp == "fp16" or not bf16_ok:
        return torch.float16
    return torch.bfloat16


def make_autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    """A factory of autocast contexts (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=dtype)


def memory_format_for(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """channels_last when configured (CUDA and CPU: oneDNN's convolutions run 13% faster in it on the demo's model,
    docs/benchmarks.md), else the default layout."""
    return torch.channels_last if (device.type in ("cuda", "cpu") and cfg.channels_last) else torch.contiguous_format


@dataclass
class DeviceBatch:
    """Moves uint8 batches to the device and normalises them there (4x less to copy than float)."""

    device: torch.device
    memory_format: torch.memory_format
    ignore_index: int

    def images(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=self.memory_format)

    def masks(self, y: torch.Tensor) -> torch.Tensor:
        y = y.to(self.device, non_blocking=True)
        if self.ignore_index != IGNORE_VALUE:  # masks on disk mark "not labelled" with 255
            y = torch.where(y == IGNORE_VALUE, self.ignore_index, y)
        return y

    def labeled(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(batch[0]), self.masks(batch[1])


__all__ = ["DeviceBatch", "available_cpus", "make_autocast", "memory_format_for", "resolve_amp", "resolve_device"]
