"""The cluster under chaos: 3 real node processes, optionally one network namespace each.

Rules
-----
* `ChaosCluster` is `tests.harness.Cluster` with three differences, each needed by a
  nemesis: nodes may run inside the namespaces of a `NetworkLab` (and then listen,
  and talk Raft, on their namespace address, so that iptables rules cut them apart);
  nodes may run under libfaketime with a per-node timestamp file (the clock nemesis
  rewrites it); and every node gets the extra environment of the run (the planted
  bug switches `SHOAL_BUG_*` of the mutation check).
* Without a lab, nodes listen on 127.0.0.1 exactly as the test harness does.
* The clock is faked for the wall clock only (`DONT_FAKE_MONOTONIC=1`): shoal's
  locks, leases and Raft timers use `time.monotonic()`, and the invariant under
  test is that a wall-clock jump does not expire a lock early or resurrect a record.
* `close()` reaps every process this cluster started (SIGCONT, then SIGKILL),
  and only those; the lab is closed by whoever created it (the runner), after the
  processes that live in it are gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.netns import NetworkLab
from tests.harness import REPO_ROOT, Cluster, NodeProcess, free_port

LIBFAKETIME_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
)


# libfaketime 0.9.10 (Debian 12) with DONT_FAKE_MONOTONIC=1 makes Python 3.11's
# time.sleep fail with EINVAL: sleep uses clock_nanosleep(CLOCK_MONOTONIC,
# TIMER_ABSTIME) and the library converts the absolute time wrongly. Event waits,
# lock timeouts, select and asyncio are unaffected (checked on this machine). So a
# node under libfaketime starts through this shim, which makes time.sleep wait with
# select() for the same relative duration and then runs `python -m node` unchanged.
FAKETIME_SLEEP_SHIM = """
import runpy, select, sys, time
def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        select.select([], [], [], remaining)
time.sleep = _sleep
sys.argv = ["node"] + sys.argv[1:]
runpy.run_module("node", run_name="__main__", alter_sys=True)
"""


def libfaketime_path() -> Path | None:
    """Where libfaketime is installed (apt-get install -y faketime), or None."""
    for candidate in LIBFAKETIME_CANDIDATES:
        if candidate.exists():
            return candidate
    return None


@dataclass
class ChaosCluster(Cluster):
    lab: NetworkLab | None = None
    # node id -> the libfaketime timestamp file of that node ("+0" = real time).
    clock_files: dict[int, Path] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def host(self, node_id: int) -> str:
        return self.lab.address(node_id) if self.lab is not None else "127.0.0.1"

    def address(self, node_id: int) -> str:
        return f"{self.host(node_id)}:{self.nodes[node_id].grpc_port}"

    def quorum(self) -> str:
        return ",".join(f"{n.node_id}@{self.host(n.node_id)}:{n.raft_port}" for n in self.nodes.values())

    def set_clock_offset(self, node_id: int, offset_s: float) -> None:
        """Move one node's wall clock; the node reads the file on every clock call."""
        path = self.clock_files[node_id]
        # Written by rename so that the node never reads a half-written offset.
        temporary = path.with_suffix(".tmp")
        temporary.write_text(f"{offset_s:+.3f}\n")
        os.replace(temporary, path)

    def start_node(self, node_id: int) -> None:
        node = self.nodes[node_id]
        assert node.process is None or node.process.poll() is not None, f"node {node_id} is already running"
        node.data_dir.mkdir(parents=True, exist_ok=True)
        entry = ["-c", FAKETIME_SLEEP_SHIM] if node_id in self.clock_files else ["-m", "node"]
        args = [
            sys.executable,
            *entry,
            "--node-id",
            str(node_id),
            "--listen",
            self.address(node_id),
            "--data-dir",
            str(node.data_dir),
            "--controller-quorum",
            self.quorum(),
            "--metrics-port",
            str(node.metrics_port),
        ]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        if self.lab is not None:
            args = self.lab.exec_prefix(node_id) + args
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        if node_id in self.clock_files:
            library = libfaketime_path()
            assert library is not None, "clock files were configured without libfaketime"
            env["LD_PRELOAD"] = str(library)
            env["FAKETIME_TIMESTAMP_FILE"] = str(self.clock_files[node_id])
            env["FAKETIME_NO_CACHE"] = "1"
            env["DONT_FAKE_MONOTONIC"] = "1"
        stdout_path, stderr_path = self.log_paths(node_id)
        with stdout_path.open("ab") as stdout, stderr_path.open("ab") as stderr:
            node.process = subprocess.Popen(args, stdout=stdout, stderr=stderr, cwd=REPO_ROOT, env=env)
        node.paused = False
        old = self._channels.pop(node_id, None)
        if old is not None:
            old.close()

    def alive(self, node_id: int) -> bool:
        process = self.nodes[node_id].process
        return process is not None and process.poll() is None


def start_chaos_cluster(
    n: int,
    base_dir: Path,
    settings: dict[str, str],
    *,
    lab: NetworkLab | None = None,
    clock_nodes: tuple[int, ...] = (),
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> ChaosCluster:
    """Start nodes 1..n (all quorum voters) and wait until every one is ready."""
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    used: set[int] = set()

    def unique_port() -> int:
        while True:
            port = free_port()
            if port not in used:
                used.add(port)
                return port

    nodes = {
        node_id: NodeProcess(
            node_id=node_id,
            grpc_port=unique_port(),
            raft_port=unique_port(),
            metrics_port=unique_port(),
            data_dir=base_dir / f"node-{node_id}",
        )
        for node_id in range(1, n + 1)
    }
    clock_files = {}
    for node_id in clock_nodes:
        path = base_dir / f"node-{node_id}.faketime"
        path.write_text("+0\n")
        clock_files[node_id] = path
    cluster = ChaosCluster(
        base_dir=base_dir,
        nodes=nodes,
        settings={key: str(value) for key, value in settings.items()},
        lab=lab,
        clock_files=clock_files,
        extra_env=dict(extra_env or {}),
    )
    try:
        for node_id in cluster.node_ids:
            cluster.start_node(node_id)
        cluster.wait_ready(timeout_s)
    except BaseException:
        cluster.close()
        raise
    return cluster
