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


def test_openmp_threads_sleep_instead_of_spinning_unless_the_user_says_otherwise() -> None:
    """selftune sets OMP_WAIT_POLICY=PASSIVE before torch loads (its Ray workers inherit it); a user's value stays."""
    import os
    import subprocess
    import sys

    code = "import selftune, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    assert subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, check=True).stdout.strip() == "ACTIVE"
