"""Real Ray clusters on this machine for tests: `ray start` nodes, each with a temp dir of its own,
stopped by killing exactly their processes (`ray stop` would kill every Ray on the machine, a
developer's running experiment included)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
_HEAD_PORTS: dict[str, int] = {}  # temp dir of a head node -> its GCS port


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this session: the OS may give a just-closed port
    again, and one `ray start` asking for two that collide refuses to start (seen in CI)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray's auth mode and address: cifar-tune must find both."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    return {**env, **extra}


def ensure_auth_token() -> None:
    """Token authentication needs a token before the head starts: `ray start --head` finding none
    starts the cluster with authentication off (while a first `ray.init()` would have made one). A
    user's machine has one from either; a fresh CI machine may not yet, so make it as a user would."""
    if not (Path.home() / ".ray" / "auth_token").is_file() and not os.environ.get("RAY_AUTH_TOKEN"):
        subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, text=True, timeout=60,
                       env=clean_env(), check=True)


# What `ray start --address` says when the head it joins answered too late (a head started seconds
# before, on 2 busy cores, as in CI): worth another try on a fresh temp dir.
JOIN_TOO_EARLY = ("Deadline Exceeded", "Failed to get node info")
JOIN_ATTEMPTS = 3


def start_node(port: int, head: bool, cpus: int, dashboard_port: int | None = None,
               env: dict[str, str] | None = None, temp_dir: str | None = None, client_port: int | None = None) -> str:
    """Start one node; returns its temp dir (short: Ray's socket paths must stay under ~107 characters),
    which its processes name on their command line. `env`: extra variables for the node's processes
    (cloud credentials, as a cloud node has them from its role). `temp_dir`: share another node's, as
    `ray start` nodes on one machine do by default (/tmp/ray). `client_port`: Ray Client's (head).
    A worker node with a temp dir of its own that joined too early is started again (JOIN_TOO_EARLY)."""
    if head:
        ensure_auth_token()
    shared = temp_dir is not None
    dashboard = [f"--dashboard-port={dashboard_port}"] if dashboard_port else ["--include-dashboard=false"]
    where = ["--head", f"--port={port}", *dashboard] if head else [f"--address=127.0.0.1:{port}"]
    if head:  # Ray Client's server (ray://) on a port of its own, not the default 10001
        where.append(f"--ray-client-server-port={client_port or free_port()}")
    env = clean_env(**(env or {})) if head else clean_env(RAY_AUTH_MODE="token", **(env or {}))  # a worker joins the token auth
    for attempt in range(1, JOIN_ATTEMPTS + 1):
        node_dir = temp_dir or tempfile.mkdtemp(prefix="ct-ray-", dir="/tmp")
        # Ports of its own for the dashboard agent: the defaults may be held by another Ray on this
        # machine (the test session's own), and then `ray job submit` finds no agent.
        agent = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}"]
        started = subprocess.run([RAY, "start", *where, *agent, f"--num-cpus={cpus}", f"--temp-dir={node_dir}",
                                  "--disable-usage-stats"], capture_output=True, text=True, timeout=120, env=env)
        if head:
            _HEAD_PORTS[node_dir] = port
        if started.returncode == 0:
            return node_dir
        if not shared:  # a shared temp dir names the other node's processes too: leave them
            stop_node(node_dir)
        retry = not head and not shared and any(text in started.stderr for text in JOIN_TOO_EARLY)
        if not retry or attempt == JOIN_ATTEMPTS:
            break
        time.sleep(2.0 * attempt)
    raise RuntimeError(f"ray start failed: {started.stderr[-2000:]}")


def stop_node(temp_dir: str) -> None:
    """Kill this node only: its processes name its temp dir, and its agents are their children.
    A head's Ray Client server and the per-client servers it starts name only the cluster's
    address, and outlive the node otherwise (holding port 23000, which the next cluster's Ray
    Client then cannot use). (gcs_server and raylet ignore SIGTERM: SIGKILL.)"""
    def pgrep(*args: str) -> list[str]:
        return subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()

    owners = pgrep("-f", temp_dir)
    if temp_dir in _HEAD_PORTS:
        owners += pgrep("-f", rf"ray\.util\.client\.server --address=[^ ]+:{_HEAD_PORTS.pop(temp_dir)} ")
    children = [child for pid in owners for child in pgrep("-P", pid)]
    if owners or children:
        subprocess.run(["kill", "-9", *owners, *children], capture_output=True)
    shutil.rmtree(temp_dir, ignore_errors=True)


# Ray's own per-node processes, and workers its pool keeps warm: not anything a run left behind.
NODE_PROCESSES = {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::IDLE"}


def process_table() -> list[tuple[int, int, str, float]]:
    """Every process as (pid, ppid, command line, CPU seconds of it and its reaped children), from
    /proc (Linux, as the simulated clusters are)."""
    tick = os.sysconf("SC_CLK_TCK")
    rows = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone since the listing
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, ...
        cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick  # utime, stime, cutime, cstime
        rows.append((int(entry.name), int(fields[1]), cmdline or stat[stat.index("(") + 1:stat.rindex(")")], cpu))
    return rows


def node_processes(nodes: list[str], also: int | None = None) -> list[tuple[int, int, str, float]]:
    """process_table()'s rows of these nodes (the processes whose command line names a node's temp
    dir) and of their descendants (Ray workers, wandb-core), and of process `also` and its own."""
    procs = process_table()
    children: dict[int, list] = {}
    for row in procs:
        children.setdefault(row[1], []).append(row)
    stack = [row for row in procs if row[0] == also or any(node in row[2] for node in nodes)]
    tree: dict[int, tuple] = {}
    while stack:
        row = stack.pop()
        if row[0] not in tree:
            tree[row[0]] = row
            stack.extend(children.get(row[0], []))
    return list(tree.values())


def ray_workers(processes: list[tuple[int, int, str, float]]) -> Counter:
    """Ray worker processes among `processes`, by title (ray::ImplicitFunc.train, ray::IDLE, ...)."""
    return Counter(title.split()[0] for _, _, title, _ in processes if title.startswith("ray::"))


def left_by_a_run(workers: Counter) -> dict[str, int]:
    """Those of ray_workers()' titles that are not the nodes' own (NODE_PROCESSES): after a run has
    ended, what it left behind (a trial's actor, the W&B logger, the ledger, an export)."""
    return {title: n for title, n in workers.items() if title not in NODE_PROCESSES}


def submit_job(dashboard_port: int, working_dir: Path, command: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir DIR -- COMMAND`, as the README shows; waits for the job to end.
    The dashboard's job server, and then its job agent, come up seconds after `ray start` returns
    (later on a busy machine); until then submission is refused with one of these messages."""
    submit = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir",
              str(working_dir), "--", *command]
    not_ready = ("Failed to connect to Ray at address", "No available agent to submit job")
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(submit, capture_output=True, text=True, timeout=timeout_s,
                                env=clean_env(RAY_AUTH_MODE="token"), cwd=working_dir)
        if not any(message in result.stderr for message in not_ready) or time.monotonic() > deadline:
            return result
        time.sleep(2)
