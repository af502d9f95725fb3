"""The clusters users own: cluster-onprem.yaml (Ray's SSH `local` provider), the SLURM job script run
against fake `srun`/`scontrol`/`ray`, the two-GPU workstation sweep file, and the commands in
docs/clusters.md checked against the real command-line flags. All offline, in seconds."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ONPREM = ROOT / "cluster-onprem.yaml"
SBATCH = ROOT / "slurm" / "selftune-sweep.sbatch"
WORKSTATION = ROOT / "examples" / "workstation-2gpu.yaml"
DOCS = ROOT / "docs" / "clusters.md"


# --- cluster-onprem.yaml ---------------------------------------------------------------------------

def test_onprem_cluster_passes_rays_own_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(ONPREM.read_text())
    prepared = prepare_config(config)  # the local provider's own checks, then Ray's schema
    validate_config(prepared)
    provider = config["provider"]
    assert provider["type"] == "local" and provider["head_ip"].startswith("YOUR-")
    assert len(provider["worker_ips"]) == 2 and all(ip.startswith("YOUR-") for ip in provider["worker_ips"])
    assert config["auth"]["ssh_user"].startswith("YOUR-")
    [node_type] = prepared["available_node_types"].values()  # the local provider's single node type
    assert node_type["min_workers"] == node_type["max_workers"] == 2  # every listed machine stays in

    [head_start] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    [worker_start] = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert "--num-gpus=0" in head_start and "--num-cpus=0" in head_start  # the head runs no trials
    assert "--dashboard-host=127.0.0.1" in head_start  # the dashboard only through an SSH tunnel
    assert "--num-gpus=2" in worker_start and "--address=$RAY_HEAD_IP:6379" in worker_start
    assert all("RAY_AUTH_MODE=token" in c for c in (head_start, worker_start))
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"

    setup = " ".join(config["setup_commands"])
    assert "python3.11 -m venv" in setup and "-c ~/selftune/requirements.lock ~/selftune" in setup
    assert config["file_mounts"]["~/selftune"] == "."
    assert "/mnt/YOUR-NFS-SHARE/selftune/results" in setup  # results on the share every node mounts
    assert "0.0.0.0" not in ONPREM.read_text()


def test_cluster_files_use_only_real_ray_start_flags() -> None:
    from ray.scripts.scripts import start

    known = {opt for p in start.params for opt in p.opts}
    config = yaml.safe_load(ONPREM.read_text())
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    script = SBATCH.read_text().replace("\\\n", " ")
    commands += [line for line in script.splitlines() if '/bin/ray" start' in line]
    flags = [re.split(r'ray"? start', c, maxsplit=1)[1] for c in commands if re.search(r'ray"? start', c)]
    assert len(flags) == 4  # the on-prem head and worker, the SLURM head and worker
    used = {m for f in flags for m in re.findall(r"(?<![\w-])--[a-z][a-z-]*", f)}
    assert {"--head", "--address", "--num-gpus", "--block"} <= used <= known, used - known


# --- slurm/selftune-sweep.sbatch against fake srun, scontrol, hostname, ray, selftune ------------

FAKES = {
    # Each fake appends one line to $FAKE_LOG: its name, the node srun put it on ("-" when the batch
    # script itself ran it), RAY_AUTH_MODE, RAY_ADDRESS, then its argv, shell-quoted (one write per line).
    "bin/scontrol": """
        log scontrol "$@"
        [[ "$1 $2" == "show hostnames" && "$3" == "$SLURM_JOB_NODELIST" ]] || exit 1
        printf '%s\\n' $FAKE_NODES
    """,
    "bin/srun": """
        log srun "$@"
        node="" every=""
        while (($#)); do
            case "$1" in
                -w|--nodelist) node="$2"; shift 2 ;;
                --nodelist=*) node="${1#*=}"; shift ;;
                --ntasks-per-node=1) every=1; shift ;;
                -N|-n|-c) shift 2 ;;
                --*=*|--overlap|--exact) shift ;;
                -*) echo "fake srun: unexpected option $1" >&2; exit 2 ;;
                *) break ;;
            esac
        done
        if [[ -n "$every" && -z "$node" ]]; then  # one task on every node of the job, as srun runs them
            pids=() rc=0
            for n in $FAKE_NODES; do FAKE_NODE="$n" "$@" & pids+=("$!"); done
            for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
            exit "$rc"
        fi
        [[ " $FAKE_NODES " == *" $node "* ]] || { echo "fake srun: not a node of the job: '$node'" >&2; exit 2; }
        FAKE_NODE="$node" exec "$@"
    """,
    "bin/hostname": """
        i=0
        for n in $FAKE_NODES; do
            i=$((i + 1))
            [[ "$n" == "${FAKE_NODE:-}" ]] && break
        done
        case "${1:-}" in  # the host name's address (a loopback one with FAKE_LOOPBACK), all the interfaces'
            --ip-address) [[ -n "${FAKE_LOOPBACK:-}" ]] && echo 127.0.1.1 || echo "fd00::$i 10.0.0.$i" ;;
            --all-ip-addresses) echo "fd00::$i 172.16.0.$i 10.0.0.$i" ;;
            *) echo "${FAKE_NODE:-batchhost}" ;;
        esac
    """,
    "venv/bin/ray": """
        log ray "$@"
        case "$1" in
            get-auth-token)
                mkdir -p "$HOME/.ray"
                [[ -f "$HOME/.ray/auth_token" ]] || printf 'token-0123' > "$HOME/.ray/auth_token"
                cat "$HOME/.ray/auth_token" ;;
            start)
                [[ " $* " == *" --address="* && "$FAKE_NODE" == "${FAKE_BROKEN_NODE:-}" ]] && exit 1
                printf 'joined %s\\n' "$FAKE_NODE" >> "$FAKE_LOG"
                [[ " $* " == *" --block "* ]] && exec sleep 60 ;;
            symmetric-run)  # the head (the first node) runs the command after --, the others only join
                printf 'joined %s\\n' "$FAKE_NODE" >> "$FAKE_LOG"
                [[ "$FAKE_NODE" == "${FAKE_NODES%% *}" ]] || exit 0
                while [[ "$1" != -- ]]; do shift; done
                shift
                exec "$@" ;;
        esac
        exit 0
    """,
    "venv/bin/python": """
        log python "${@: -1}"
        [[ "${@: -1}" == "${FAKE_BUSY_PORT:-}" ]] && exit 1  # the head's port check: that port is taken
        grep -c '^joined ' "$FAKE_LOG" || true
    """,
    "venv/bin/selftune": """
        log selftune "$@"
        [[ " $* " == *" --check "* ]] || exit "${FAKE_SWEEP_RC:-0}"
    """,
}
LOG_FN = """#!/bin/bash
log() {
    local line name="$1"; shift
    line="$(printf ' %q' "$name" "${FAKE_NODE:--}" "${RAY_AUTH_MODE:--}" "${RAY_ADDRESS:--}" "$@")"
    printf '%s pid=%s\\n' "$line" "$$" >> "$FAKE_LOG"
}
"""


def run_sbatch(tmp_path: Path, nodes: list[str], *args: str, **env: str):
    for name, body in FAKES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(LOG_FN + textwrap.dedent(body))
        path.chmod(0o755)
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "sweep.yaml").write_text("name: s\n")
    log = tmp_path / "calls.log"
    log.write_text("")
    environment = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
        "FAKE_LOG": str(log), "FAKE_NODES": " ".join(nodes), "SLURM_JOB_NODELIST": f"gpu[01-0{len(nodes)}]",
        "SLURM_JOB_NUM_NODES": str(len(nodes)), "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_ON_NODE": "2",
        "SWEEP_FILE": str(tmp_path / "sweep.yaml"), "RESULTS": str(tmp_path / "shared" / "results"),
        "VENV": str(tmp_path / "venv"), "RAY_WAIT_S": "10", **env,
    }
    with open(tmp_path / "job.out", "w") as out:
        proc = subprocess.run(["bash", str(SBATCH), *args], env=environment, cwd=tmp_path, stdout=out,
                              stderr=subprocess.STDOUT, timeout=60)
    calls = []
    for line in log.read_text().splitlines():
        if line.startswith("joined "):
            continue
        *words, pid = shlex.split(line)
        name, node, auth, address, *argv = words
        calls.append(dict(name=name, node=node, auth=auth, address=address, argv=argv, pid=int(pid[4:])))
    return proc.returncode, calls, (tmp_path / "job.out").read_text()


def ray_starts(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["name"] == "ray" and c["argv"][:1] == ["start"]]


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("nodes", [["gpu01"], ["gpu01", "gpu02"], ["gpu01", "gpu02", "gpu03"]])
def test_slurm_script_starts_a_head_one_worker_per_node_then_the_sweep(tmp_path: Path, nodes: list[str]) -> None:
    rc, calls, out = run_sbatch(tmp_path, nodes, "--num-samples", "64")
    assert rc == 0, out
    starts = ray_starts(calls)
    [head] = [c for c in starts if "--head" in c["argv"]]
    assert head["node"] == nodes[0]  # srun -w puts the head on the first node
    assert {"--node-ip-address=10.0.0.1", "--port=10000", "--block", "--num-gpus=2", "--num-cpus=16",
            "--dashboard-host=127.0.0.1", "--dashboard-port=10001", "--min-worker-port=10100"} <= set(head["argv"])
    workers = [c for c in starts if "--head" not in c["argv"]]
    assert sorted(c["node"] for c in workers) == nodes[1:]  # exactly one worker on every other node
    assert all({"--address=10.0.0.1:10000", "--block", "--num-gpus=2", "--max-worker-port=10399"} <= set(c["argv"])
               for c in workers)
    assert all(c["auth"] == "token" for c in starts)
    assert (tmp_path / "home" / ".ray" / "auth_token").stat().st_mode & 0o077 == 0  # the token is yours only

    sweeps = [c for c in calls if c["name"] == "selftune"]
    check, sweep = sweeps  # the sweep file is checked before Ray starts, then the sweep runs
    assert check["argv"] == ["sweep", str(tmp_path / "sweep.yaml"), "--check", "--storage",
                             str(tmp_path / "shared" / "results"), "--num-samples", "64"]
    assert sweep["argv"] == ["sweep", str(tmp_path / "sweep.yaml"), "--address", "10.0.0.1:10000", "--storage",
                             str(tmp_path / "shared" / "results"), "--num-samples", "64"]
    assert sweep["node"] == "-" and sweep["address"] == "10.0.0.1:10000" and sweep["auth"] == "token"
    order = [id(c) for c in calls]
    assert order.index(id(check)) < order.index(id(head))
    assert max(order.index(id(c)) for c in starts) < order.index(id(sweep))  # every node started first
    polls = [c for c in calls if c["name"] == "python"]
    assert polls and all(c["argv"] == ["10.0.0.1:10000"] for c in polls if c["argv"] != ["10000"])
    # no `ray stop`: it would stop every Ray of the user's on the node, another job's too
    assert not [c for c in calls if c["name"] == "ray" and c["argv"] == ["stop"]]
    assert not [c["pid"] for c in starts if is_running(c["pid"])]  # the blocking Ray steps were ended


@pytest.mark.parametrize(("env", "head_ip"), [({"FAKE_LOOPBACK": "1"}, "172.16.0.1"), ({"HEAD_IP": "10.9.9.9"}, "10.9.9.9")])
def test_slurm_script_never_gives_workers_a_loopback_head_address(tmp_path: Path, env: dict, head_ip: str) -> None:
    rc, calls, out = run_sbatch(tmp_path, ["gpu01", "gpu02"], **env)
    assert rc == 0, out
    [head, worker] = ray_starts(calls)
    assert f"--node-ip-address={head_ip}" in head["argv"] and f"--address={head_ip}:10000" in worker["argv"]


def test_slurm_script_passes_the_sweeps_failure_on_and_still_stops_ray(tmp_path: Path) -> None:
    rc, calls, out = run_sbatch(tmp_path, ["gpu01", "gpu02"], FAKE_SWEEP_RC="3")
    assert rc == 3, out
    assert not [c["pid"] for c in ray_starts(calls) if is_running(c["pid"])]


def test_slurm_script_fails_when_a_worker_never_joins(tmp_path: Path) -> None:
    rc, calls, out = run_sbatch(tmp_path, ["gpu01", "gpu02", "gpu03"], FAKE_BROKEN_NODE="gpu03", RAY_WAIT_S="3")
    assert rc != 0 and "only 2 of 3 Ray nodes joined" in out, out
    assert [c["argv"][1:3] for c in calls if c["name"] == "selftune"] == [[str(tmp_path / "sweep.yaml"), "--check"]]
    assert not [c["pid"] for c in ray_starts(calls) if is_running(c["pid"])]


def test_slurm_script_resumes_without_a_check(tmp_path: Path) -> None:
    folder = str(tmp_path / "shared" / "results" / "s")
    rc, calls, out = run_sbatch(tmp_path, ["gpu01", "gpu02"], "--resume", folder)
    assert rc == 0, out
    [sweep] = [c for c in calls if c["name"] == "selftune"]
    assert sweep["argv"][-2:] == ["--resume", folder] and "--address" in sweep["argv"]


def test_slurm_script_refuses_to_run_outside_slurm(tmp_path: Path) -> None:
    rc, calls, out = run_sbatch(tmp_path, ["gpu01"], SLURM_JOB_NODELIST="")
    assert rc != 0 and "sbatch" in out and not calls


def test_slurm_script_lints_clean() -> None:
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert re.search(r"^#SBATCH --nodes=\d+$", text, re.M) and re.search(r"^#SBATCH --gpus-per-node=\d+$", text, re.M)
    if subprocess.run(["which", "shellcheck"], capture_output=True).returncode == 0:
        lint = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


# --- the two-GPU workstation ---------------------------------------------------------------------

def test_workstation_sweep_file_fills_two_gpus() -> None:
    from selftune.search.sweepfile import SweepConfig

    sweep = SweepConfig.from_yaml(WORKSTATION)
    assert sweep.gpus_per_trial == 0.5 and sweep.max_concurrent * sweep.gpus_per_trial == 2
    assert sweep.address is None  # no cluster: Ray starts in-process with the machine's GPUs


def test_workstation_sweep_file_passes_check(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from selftune.cli import main

    assert main(["sweep", str(WORKSTATION), "--check", "--data", str(tiny_data), "--storage", str(tmp_path),
                 "--set", "crop_size=32"]) == 0  # its 256 px crop on these 32 px tiles is refused by name
    assert "'workstation-2gpu' is valid" in capsys.readouterr().out


# --- docs/clusters.md: every command matches the real flags --------------------------------------

def sweep_flags() -> set[str]:
    from selftune.search.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sweep = parser._subparsers._group_actions[0].choices["sweep"]
    return set(sweep._option_string_actions)


def selftune_sweep_commands(text: str) -> list[str]:
    """What follows `selftune sweep` (or the SLURM script, whose arguments go to it) on each line."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        for m in re.finditer(r'selftune"? sweep\b|selftune-sweep\.sbatch\b', line):
            found.append(line[m.end():].split("`")[0])  # markdown: up to the end of the inline code
    return found


def test_every_selftune_sweep_command_uses_real_flags() -> None:
    known = sweep_flags()
    sources = [DOCS, ONPREM, SBATCH, WORKSTATION]
    commands = [c for path in sources for c in selftune_sweep_commands(path.read_text())]
    assert len(commands) >= 8
    used = {m for c in commands for m in re.findall(r"(?<![\w-])--[a-z][a-z-]*", c)}
    assert used and used <= known, used - known


def test_every_ray_command_uses_real_flags() -> None:
    from ray.scripts.scripts import cli

    sources = [DOCS, ONPREM, SBATCH]
    checked = 0
    for path in sources:
        for line in path.read_text().replace("\\\n", " ").splitlines():
            for m in re.finditer(r"\bray\"? (up|down|exec|attach|dashboard|status|get-auth-token|start|stop)\b", line):
                rest = re.split(r"[\"`#;|&]", line[m.end():])[0]  # up to a quoted command, a comment, the next command
                known = {opt for p in cli.commands[m.group(1)].params for opt in p.opts}
                used = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", rest))
                assert used <= known, (path.name, line, used - known)
                checked += 1
    assert checked >= 12


def test_docs_cover_every_kind_of_cluster() -> None:
    text = DOCS.read_text()
    for needle in ("ray up cluster-onprem.yaml", "sbatch slurm/selftune-sweep.sbatch", "squeue",
                   "gpus_per_trial: 0.5", "CUDA_VISIBLE_DEVICES", "/kaggle/working", "ssh -N -L",
                   "examples/workstation-2gpu.yaml", "optuna_journal.log", "README.md"):
        assert needle in text, needle
