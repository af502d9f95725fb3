"""slurm/selftune-sweep.sbatch on shared nodes: every Ray port set per job from SLURM_JOB_ID, so two jobs on
one node get disjoint ports; the `ray symmetric-run` variant; a taken port fails before Ray starts. Runs the
script against the fake srun / scontrol / ray of tests/test_clusters.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_clusters import SBATCH, run_sbatch

PORT_FLAG = re.compile(r"^--([a-z-]*port[a-z-]*)=(\d+)$")
PORTS = {"port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
         "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
         "min-worker-port", "max-worker-port"}


def ports_of(argvs: list[list[str]]) -> tuple[dict[str, int], set[int]]:
    """Every port flag Ray was started with (the head's --port included) and every port they take on the node."""
    flags: dict[str, int] = {}
    for argv in argvs:
        for a in argv:
            m = PORT_FLAG.match(a)
            if m:
                flags[m.group(1)] = int(m.group(2))
    taken = {v for k, v in flags.items() if not k.endswith("worker-port")}
    taken |= set(range(flags["min-worker-port"], flags["max-worker-port"] + 1))
    return flags, taken


def job(tmp_path: Path, job_id: int, launch: str = "srun", nodes: list[str] | None = None, **env: str):
    rc, calls, out = run_sbatch(tmp_path / str(job_id), nodes or ["gpu01"], SLURM_JOB_ID=str(job_id),
                                RAY_LAUNCH=launch, **env)
    assert rc == 0, out
    return calls


@pytest.mark.parametrize("launch", ["srun", "symmetric"])
def test_two_jobs_on_one_node_get_disjoint_ports(tmp_path: Path, launch: str) -> None:
    taken = []
    for job_id in (41872, 41873):
        calls = job(tmp_path, job_id, launch)
        argvs = [c["argv"] for c in calls if c["name"] == "ray" and c["argv"][0] in ("start", "symmetric-run")]
        flags, ports = ports_of(argvs)
        assert set(flags) >= PORTS - ({"port"} if launch == "symmetric" else set()), set(flags) ^ PORTS
        [sweep] = [c for c in calls if c["name"] == "selftune" and "--check" not in c["argv"]]
        gcs = int(sweep["argv"][sweep["argv"].index("--address") + 1].rsplit(":", 1)[1])
        ports.add(gcs)
        assert all(10000 <= p < 32768 for p in ports)  # below Linux's ephemeral range, above Ray's 6379/8265
        assert 6379 not in ports and 8265 not in ports and 10001 not in ports
        taken.append(ports)
    assert not taken[0] & taken[1]


def test_every_port_flag_is_a_real_ray_start_flag() -> None:
    from ray.scripts.scripts import start

    known = {o for p in start.params for o in p.opts}
    used = set(re.findall(r"(--(?:[a-z-]+-)?port[a-z-]*)=", SBATCH.read_text()))
    assert used >= {f"--{p}" for p in PORTS} and used <= known, used - known


def test_symmetric_run_starts_every_node_and_runs_the_sweep_on_the_head(tmp_path: Path) -> None:
    nodes = ["gpu01", "gpu02", "gpu03"]
    calls = job(tmp_path, 7, "symmetric", nodes)
    runs = [c for c in calls if c["name"] == "ray" and c["argv"][0] == "symmetric-run"]
    assert sorted(c["node"] for c in runs) == nodes  # one srun step on every node
    argv = runs[0]["argv"]
    assert argv[1:5] == ["--address", "10.0.0.1:12800", "--min-nodes", "3"]
    assert "--port" not in " ".join(argv) .split("--")[0]  # symmetric-run sets --port from --address itself
    after = argv[argv.index("--") + 1:]
    assert after[1:5] == ["sweep", str(tmp_path / "7" / "sweep.yaml"), "--address", "10.0.0.1:12800"]
    [sweep] = [c for c in calls if c["name"] == "selftune" and "--check" not in c["argv"]]
    assert sweep["node"] == "gpu01" and sweep["auth"] == "token"
    assert not [c for c in calls if c["name"] == "ray" and c["argv"][0] == "start"]


def test_a_taken_port_fails_before_ray_starts(tmp_path: Path) -> None:
    rc, calls, out = run_sbatch(tmp_path, ["gpu01"], SLURM_JOB_ID="3", FAKE_BUSY_PORT="11200")
    assert rc == 1 and "port 11200 is in use on gpu01; submit with another RAY_PORT_BASE" in out, out
    assert not [c for c in calls if c["name"] == "ray" and c["argv"][0] == "start"]
