"""Sweeps on a shared workstation: trial workers are not starved by Ray's nice level."""

from __future__ import annotations


def test_trial_workers_of_a_local_sweep_run_at_normal_priority() -> None:
    """Ray starts workers at nice 15; beside other work on a shared machine, such trials starve (issue 19)."""
    import os

    import ray

    from selftune.search.ray_setup import start_ray

    assert not ray.is_initialized()
    start_ray(None, 1)
    try:
        niceness = ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote())
    finally:
        ray.shutdown()
        os.environ.pop("RAY_worker_niceness", None)
    assert niceness == os.nice(0)  # the same priority as the driver (0 for a normal shell)
