"""Ray for a sweep: attach to a cluster (or start Ray in this process) and check, before any trial, that a trial
fits on it. Only these functions and `adapter` talk to Ray."""

from __future__ import annotations

import socket
import time

from selftune.errors import SelftuneError
from selftune.search.sweepfile import SweepConfig


def _check_address(address: str) -> None:
    """Fail in seconds, not minutes, when a given Ray address cannot be reached."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise SelftuneError(f"cannot reach the Ray cluster at --address {address} ({exc})") from None


def start_ray(address: str | None, num_cpus: int | None, *, nice_trials: bool = False) -> None:
    """Attach to `address`, or start Ray in this process; its trial workers run at normal priority unless
    `nice_trials` (Ray starts workers at nice 15, and beside any other process on the machine they starve)."""
    import os

    import ray

    if ray.is_initialized():
        return
    if not address and not nice_trials:
        os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112  (Ray's own name, read by the raylet it starts)
    if address:
        _check_address(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise SelftuneError(f"cannot attach to the Ray cluster at --address {address}: {exc}") from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def check_resources(sweep: SweepConfig) -> None:
    """Fail fast when no node could ever run a trial, instead of leaving trials pending forever."""
    import ray

    deadline = time.monotonic() + sweep.gpu_wait_s
    requested = False
    while True:
        total = ray.cluster_resources()
        gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
        if sweep.gpus_per_trial <= gpus and sweep.cpus_per_trial <= cpus:
            return
        if time.monotonic() >= deadline:
            break
        if not requested:  # on an autoscaling cluster, ask for one trial's worth so GPU nodes start
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[{"CPU": sweep.cpus_per_trial, "GPU": sweep.gpus_per_trial}])
            requested = True
        time.sleep(5)
    if sweep.gpus_per_trial > gpus:
        raise SelftuneError(
            f"gpus_per_trial is {sweep.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs; "
            "set gpus_per_trial: 0 to run on CPU, or give gpu_wait_s on an autoscaling cluster"
        )
    raise SelftuneError(f"cpus_per_trial is {sweep.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPUs")


__all__ = ["check_resources", "start_ray"]
