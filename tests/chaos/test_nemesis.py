"""Self-tests of the nemesis machinery on plain processes and real namespaces (no shoal node).

Each test checks that a fault really happens (a killed process is gone, a paused
one stops answering, an iptables cut stalls an established TCP connection and
healing delivers the stalled bytes, a libfaketime offset moves the wall clock but
not the monotonic one) and that it is recorded in the history as the checker
expects. Namespace tests need root with `ip` and `iptables`, and skip otherwise.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos import netns
from tests.chaos.cluster import FAKETIME_SLEEP_SHIM, libfaketime_path
from tests.chaos.history import HistoryRecorder, load_history
from tests.chaos.nemesis import Nemesis, Roles

# A tiny TCP echo server: it answers "pong" to every line, so that a test can tell
# whether a process (or the path to it) is alive.
ECHO_SERVER = r"""
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen()
def serve(connection):
    with connection:
        buffer = b""
        while True:
            data = connection.recv(100)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                _, buffer = buffer.split(b"\n", 1)
                connection.sendall(b"pong\n")
while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def _wait_stopped(pid: int, timeout_s: float) -> None:
    """Wait until /proc says the process is stopped (state T)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces, so split after ")".
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop within {timeout_s} s")


def _ping(connection: socket.socket, timeout_s: float) -> bool:
    connection.settimeout(timeout_s)
    try:
        connection.sendall(b"ping\n")
        return connection.recv(5) == b"pong\n"
    except (TimeoutError, OSError):
        return False


class ProcessSet:
    """A NodeControl over echo servers on 127.0.0.1 (the nemesis's view of a cluster)."""

    def __init__(self, node_ids: list[int]) -> None:
        self.ports = {node_id: _free_port() for node_id in node_ids}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.offsets: dict[int, float] = {}
        for node_id in node_ids:
            self.start_node(node_id)

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.ports)

    def start_node(self, node_id: int) -> None:
        self.processes[node_id] = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, "127.0.0.1", str(self.ports[node_id])]
        )
        _wait_listening("127.0.0.1", self.ports[node_id])

    def kill(self, node_id: int) -> None:
        process = self.processes[node_id]
        process.send_signal(signal.SIGCONT)  # a stopped process must die too
        process.kill()
        process.wait(timeout=10)

    def pause(self, node_id: int) -> None:
        os.kill(self.processes[node_id].pid, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        os.kill(self.processes[node_id].pid, signal.SIGCONT)

    def alive(self, node_id: int) -> bool:
        return self.processes[node_id].poll() is None

    def set_clock_offset(self, node_id: int, offset_s: float) -> None:
        self.offsets[node_id] = offset_s

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def processes():
    control = ProcessSet([1, 2, 3])
    try:
        yield control
    finally:
        control.close()


@pytest.fixture
def recorder(tmp_path: Path):
    with HistoryRecorder(tmp_path / "history.jsonl") as history:
        yield history


def test_kill_and_restart_are_real_and_recorded(processes: ProcessSet, recorder: HistoryRecorder, tmp_path: Path) -> None:
    nemesis = Nemesis(processes, recorder, random.Random(1))
    old_pid = processes.processes[2].pid
    nemesis.kill(2, "leader:0")
    assert not processes.alive(2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", processes.ports[2]), timeout=1).close()
    assert nemesis.down == {2}
    nemesis.restart(2)
    assert processes.alive(2) and processes.processes[2].pid != old_pid
    recorder.close()
    events = [(op.f, op.value["targets"]) for op in load_history(tmp_path / "history.jsonl")]
    assert events == [("kill", [2]), ("restart", [2])]


def test_pause_stops_answering_until_resume(processes: ProcessSet, recorder: HistoryRecorder) -> None:
    nemesis = Nemesis(processes, recorder, random.Random(2))
    connection = socket.create_connection(("127.0.0.1", processes.ports[1]), timeout=2)
    with connection:
        assert _ping(connection, 2.0)
        nemesis.pause(1)
        # kill(SIGSTOP) returns before the target has stopped; on a loaded machine
        # it can still serve a request first. Wait until the kernel says stopped.
        _wait_stopped(processes.processes[1].pid, timeout_s=5.0)
        assert not _ping(connection, 0.5), "a SIGSTOPped process answered"
        nemesis.resume(1)
        # The ping sent while paused is answered first, then a fresh one.
        assert connection.recv(5) == b"pong\n"
        assert _ping(connection, 2.0)


def test_only_a_minority_is_disabled_and_heal_all_undoes_everything(
    processes: ProcessSet, recorder: HistoryRecorder, tmp_path: Path
) -> None:
    nemesis = Nemesis(processes, recorder, random.Random(3), clock_nodes=[3])
    assert nemesis.can_disable_one()
    nemesis.pause(1)
    assert not nemesis.can_disable_one(), "a second node of three may not go down at once"
    nemesis.clock(3, 30.0)
    assert processes.offsets[3] == 30.0
    nemesis.heal_all()
    assert processes.offsets[3] == 0.0
    assert not nemesis.paused and not nemesis.down and not nemesis.skewed
    assert all(processes.alive(node) for node in processes.node_ids)
    recorder.close()
    history = load_history(tmp_path / "history.jsonl")
    assert [op.f for op in history] == ["pause", "clock", "resume", "heal", "heal"]
    assert history[-1].value["what"] == "final"


def test_kill_all_restarts_every_node(processes: ProcessSet, recorder: HistoryRecorder, tmp_path: Path) -> None:
    nemesis = Nemesis(processes, recorder, random.Random(4))
    nemesis.kill_all()
    assert not any(processes.alive(node) for node in processes.node_ids)
    nemesis.restart_all(max_stagger_s=0.2)
    assert all(processes.alive(node) for node in processes.node_ids)
    recorder.close()
    history = load_history(tmp_path / "history.jsonl")
    assert history[0].f == "kill_all" and history[0].value["targets"] == [1, 2, 3]
    assert sorted(op.value["targets"][0] for op in history[1:]) == [1, 2, 3]


def test_targets_are_weighted_towards_leaders_controller_and_coordinator(
    processes: ProcessSet, recorder: HistoryRecorder
) -> None:
    roles = Roles(partition_leaders={0: 2, 1: 2, 2: 2}, controller=2, coordinators=frozenset({2}))
    nemesis = Nemesis(processes, recorder, random.Random(5), roles=lambda: roles)
    picks = [nemesis.pick()[0] for _ in range(400)]
    # Node 2 weighs 1 + 6 + 2 + 2 = 11 against 1 and 1: about 85 % of the picks.
    assert 0.75 < picks.count(2) / len(picks) < 0.95
    assert nemesis.pick([1, 3])[0] in (1, 3)
    assert roles.describe(2) == "leader:0,leader:1,leader:2,controller,coordinator"


needs_netns = pytest.mark.skipif(not netns.available()[0], reason=netns.available()[1])


@needs_netns
def test_partition_stalls_established_connections_and_heal_delivers(recorder: HistoryRecorder, tmp_path: Path) -> None:
    with netns.NetworkLab.create([1, 2, 3]) as lab:
        port = 7000
        servers = [
            subprocess.Popen(lab.exec_prefix(node) + [sys.executable, "-c", ECHO_SERVER, lab.address(node), str(port)])
            for node in (1, 2, 3)
        ]
        try:
            for node in (1, 2, 3):
                _wait_listening(lab.address(node), port)

            # A client inside node 1's namespace holds an established connection to node 2.
            client = subprocess.Popen(
                lab.exec_prefix(1)
                + [
                    sys.executable,
                    "-c",
                    "import socket,sys\n"
                    f"s=socket.create_connection(('{lab.address(2)}',{port}),timeout=30)\n"
                    "for line in sys.stdin:\n"
                    "    s.sendall(b'ping\\n'); print(s.recv(5).decode().strip(), flush=True)\n",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "pong"

            nemesis = Nemesis(_NoProcesses([1, 2, 3]), recorder, random.Random(6), lab=lab)
            nemesis.partition("isolate", 1, "leader:0")
            assert "-A OUTPUT -d " + lab.address(2) in lab.rules(1)
            client.stdin.write("go\n")
            client.stdin.flush()
            # The established connection stalls: no answer while the cut holds.
            import selectors

            selector = selectors.DefaultSelector()
            selector.register(client.stdout, selectors.EVENT_READ)
            assert not selector.select(timeout=1.5), "bytes crossed an iptables partition"
            # The harness (bridge address) still reaches the isolated node.
            _wait_listening(lab.address(1), port, timeout_s=2)
            nemesis.heal_network()
            assert selector.select(timeout=15), "the stalled request was not delivered after heal"
            assert client.stdout.readline().strip() == "pong"
            client.stdin.close()
            client.wait(timeout=10)

            nemesis.partition("bridge", 2)
            assert lab.address(3) in lab.rules(1) and lab.address(1) in lab.rules(3)
            assert lab.address(2) not in lab.rules(1)
            nemesis.heal_network()
            nemesis.partition("client", 3)
            with pytest.raises(OSError):
                socket.create_connection((lab.address(3), port), timeout=1).close()
            nemesis.heal_network()
            _wait_listening(lab.address(3), port)
        finally:
            for server in servers:
                server.kill()
                server.wait(timeout=10)
        namespaces = [lab.namespace(node) for node in (1, 2, 3)]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(namespace in listed for namespace in namespaces), "namespaces left behind"
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert lab.bridge not in links, "bridge left behind"
    recorder.close()
    kinds = [(op.f, op.value.get("kind")) for op in load_history(tmp_path / "history.jsonl")]
    assert kinds == [
        ("partition", "isolate"),
        ("heal", None),
        ("partition", "bridge"),
        ("heal", None),
        ("partition", "client"),
        ("heal", None),
    ]


@pytest.mark.skipif(libfaketime_path() is None, reason="libfaketime is not installed (apt-get install faketime)")
def test_faketime_file_moves_the_wall_clock_of_a_running_process_only(tmp_path: Path) -> None:
    clock_file = tmp_path / "clock"
    clock_file.write_text("+0\n")
    probe = (
        "import json, sys, time\n"
        "for line in sys.stdin:\n"
        "    time.sleep(0.01)\n"  # the shim's sleep must work under libfaketime
        "    print(json.dumps([time.time(), time.monotonic()]), flush=True)\n"
    )
    env = dict(
        os.environ,
        LD_PRELOAD=str(libfaketime_path()),
        FAKETIME_TIMESTAMP_FILE=str(clock_file),
        FAKETIME_NO_CACHE="1",
        DONT_FAKE_MONOTONIC="1",
    )
    # The same shim the chaos cluster uses, running the probe instead of the node.
    shim = FAKETIME_SLEEP_SHIM.replace('runpy.run_module("node", run_name="__main__", alter_sys=True)', "exec(sys.argv[1])")
    process = subprocess.Popen(
        [sys.executable, "-c", shim, probe], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None and process.stdout is not None
    try:

        def sample() -> tuple[float, float, float, float]:
            process.stdin.write("x\n")
            process.stdin.flush()
            wall, monotonic = json.loads(process.stdout.readline())
            return wall, monotonic, time.time(), time.monotonic()

        wall, monotonic, real_wall, real_monotonic = sample()
        assert abs(wall - real_wall) < 2
        clock_file.write_text("-30.000\n")
        wall, monotonic_after, real_wall, _ = sample()
        assert -32 < wall - real_wall < -28, "the wall clock did not jump back 30 s"
        assert monotonic_after >= monotonic, "the monotonic clock moved backwards"
        assert abs(monotonic_after - time.monotonic()) < 2, "the monotonic clock was faked too"
    finally:
        process.stdin.close()
        process.wait(timeout=10)


class _NoProcesses:
    """A NodeControl for network-only tests: there are no processes to signal."""

    def __init__(self, node_ids: list[int]) -> None:
        self._node_ids = node_ids

    @property
    def node_ids(self) -> list[int]:
        return self._node_ids

    def kill(self, node_id: int) -> None:
        raise AssertionError("network-only test")

    start_node = pause = resume = kill

    def alive(self, node_id: int) -> bool:
        return True

    def set_clock_offset(self, node_id: int, offset_s: float) -> None:
        raise AssertionError("network-only test")
