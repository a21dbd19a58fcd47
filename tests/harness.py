"""A multi-process shoal cluster for tests and benchmarks.

Rules
* Every node is a real ``python -m node`` subprocess on 127.0.0.1 with free
  ports (gRPC, raft, metrics) chosen once, so a restarted node comes back on
  the same addresses, as a real broker would.
* Everything lives under ``base_dir``: ``node-<id>/`` is the data directory and
  ``node-<id>.stdout`` / ``node-<id>.stderr`` capture the output (appended
  across restarts) so that a failing test can be read afterwards.
* The harness signals only the PIDs it started, and ``close()`` reaps all of
  them (SIGCONT first, in case a test left one stopped, then SIGKILL).
* Waiting is always "poll a condition until a deadline", never a fixed sleep.

Use::

    with start_cluster(3, tmp_path) as cluster:
        leader = cluster.leader_of("t", 0)
        cluster.kill(leader)

or the ``cluster_factory`` fixture from `make_cluster_fixture`.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc

from proto import shoal_pb2, shoal_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_base_port(nodes: int = 3) -> int:
    """A base port for ``shoal cluster up --base-port``: its gRPC, Raft and metrics
    ranges (base, base + 100, base + 200; ``nodes`` ports each) are all free on 127.0.0.1."""
    for _ in range(50):
        base = random.randrange(20_000, 40_000)
        ports = [base + offset + i for offset in (0, 100, 200) for i in range(nodes)]
        try:
            for port in ports:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for a local cluster")


class RetriableFetchError(AssertionError):
    """A raw fetch failed with a code that a retry may clear (leadership moving)."""


RETRIABLE_FETCH_CODES = frozenset(
    {
        shoal_pb2.NOT_LEADER_OR_FOLLOWER,
        shoal_pb2.LEADER_NOT_AVAILABLE,
        shoal_pb2.UNKNOWN_LEADER_EPOCH,
        shoal_pb2.FENCED_LEADER_EPOCH,
        shoal_pb2.UNKNOWN_TOPIC_OR_PARTITION,
    }
)


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except (grpc.RpcError, OSError, RetriableFetchError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}{detail}")
        time.sleep(interval_s)


@dataclass
class NodeProcess:
    node_id: int
    grpc_port: int
    raft_port: int
    metrics_port: int
    data_dir: Path
    process: subprocess.Popen | None = None
    paused: bool = False
    #: RLIMIT_FSIZE for the process: no file it writes may grow past this
    #: (a "disk full" for the partition logs); None: unlimited.
    file_size_limit_bytes: int | None = None


@dataclass
class Cluster:
    base_dir: Path
    nodes: dict[int, NodeProcess]
    settings: dict[str, str] = field(default_factory=dict)
    #: Node ids that vote in the metadata quorum; the others observe it.
    voters: list[int] = field(default_factory=list)
    _channels: dict[int, grpc.Channel] = field(default_factory=dict)

    # ------------------------------------------------------------ addresses

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.nodes[node_id].grpc_port}"

    @property
    def bootstrap(self) -> str:
        return ",".join(self.address(node_id) for node_id in self.node_ids)

    def pid(self, node_id: int) -> int:
        process = self.nodes[node_id].process
        assert process is not None, f"node {node_id} is not running"
        return process.pid

    def quorum(self) -> str:
        voters = self.voters or self.node_ids
        return ",".join(f"{n.node_id}@127.0.0.1:{n.raft_port}" for n in self.nodes.values() if n.node_id in voters)

    def log_paths(self, node_id: int) -> tuple[Path, Path]:
        return self.base_dir / f"node-{node_id}.stdout", self.base_dir / f"node-{node_id}.stderr"

    def stderr_tail(self, node_id: int, lines: int = 40) -> str:
        path = self.log_paths(node_id)[1]
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------ stubs

    def channel(self, node_id: int) -> grpc.Channel:
        channel = self._channels.get(node_id)
        if channel is None:
            channel = grpc.insecure_channel(self.address(node_id), options=GRPC_OPTIONS)
            self._channels[node_id] = channel
        return channel

    def broker(self, node_id: int) -> shoal_pb2_grpc.BrokerStub:
        return shoal_pb2_grpc.BrokerStub(self.channel(node_id))

    def internal(self, node_id: int) -> shoal_pb2_grpc.InternalStub:
        return shoal_pb2_grpc.InternalStub(self.channel(node_id))

    def running(self) -> list[int]:
        return [
            node_id
            for node_id, node in sorted(self.nodes.items())
            if node.process is not None and node.process.poll() is None and not node.paused
        ]

    # ------------------------------------------------------------ lifecycle

    def start_node(self, node_id: int) -> None:
        node = self.nodes[node_id]
        assert node.process is None or node.process.poll() is not None, f"node {node_id} is already running"
        node.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "node",
            "--node-id",
            str(node_id),
            "--listen",
            f"127.0.0.1:{node.grpc_port}",
            "--data-dir",
            str(node.data_dir),
            "--controller-quorum",
            self.quorum(),
            "--metrics-port",
            str(node.metrics_port),
        ]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        stdout_path, stderr_path = self.log_paths(node_id)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        preexec = None
        if node.file_size_limit_bytes is not None:
            limit = node.file_size_limit_bytes

            def preexec() -> None:
                import resource

                # Python ignores SIGXFSZ, so a write past the limit fails with
                # EFBIG instead of killing the node: a full disk, per file.
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        with stdout_path.open("ab") as stdout, stderr_path.open("ab") as stderr:
            node.process = subprocess.Popen(
                args, stdout=stdout, stderr=stderr, cwd=REPO_ROOT, env=env, preexec_fn=preexec
            )
        node.paused = False
        # A restarted node keeps its address; drop the old channel so that the
        # first call after a restart does not wait out the reconnect backoff.
        old = self._channels.pop(node_id, None)
        if old is not None:
            old.close()

    def kill(self, node_id: int) -> None:
        """SIGKILL: no controlled shutdown, no flush (page cache survives)."""
        node = self.nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            if node.paused:
                node.process.send_signal(signal.SIGCONT)
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=30)
        node.paused = False

    def stop(self, node_id: int, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: a controlled shutdown. Returns the exit status."""
        node = self.nodes[node_id]
        assert node.process is not None
        if node.process.poll() is None:
            if node.paused:
                self.resume(node_id)
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=30)
                raise AssertionError(f"node {node_id} did not exit within {timeout_s}s of SIGTERM")
        return node.process.returncode

    def pause(self, node_id: int) -> None:
        self.nodes[node_id].process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        self.nodes[node_id].paused = True

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        self.nodes[node_id].paused = False

    def restart(self, node_id: int, wait: bool = True, timeout_s: float = 30.0) -> None:
        """Kill the node if it runs, start it again with the same ports and data."""
        self.kill(node_id)
        self.start_node(node_id)
        if wait:
            self.wait_node_ready(node_id, timeout_s)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        for node_id in self.node_ids:
            process = self.nodes[node_id].process
            if process is None:
                continue
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGCONT)
                    process.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ observation

    def describe_cluster(self, node_id: int, timeout_s: float = 2.0) -> shoal_pb2.DescribeClusterResponse:
        return self.broker(node_id).DescribeCluster(shoal_pb2.DescribeClusterRequest(), timeout=timeout_s)

    def _check_alive(self, node_id: int) -> None:
        process = self.nodes[node_id].process
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"node {node_id} exited with status {process.returncode}; stderr tail:\n{self.stderr_tail(node_id)}"
            )

    def wait_node_ready(self, node_id: int, timeout_s: float = 30.0) -> None:
        """The node answers, knows the active controller and is registered unfenced."""

        def ready() -> bool:
            self._check_alive(node_id)
            response = self.describe_cluster(node_id)
            if response.controller_id < 0:
                return False
            return any(b.node_id == node_id and not b.fenced for b in response.brokers)

        wait_until(ready, timeout_s, f"node {node_id} to be ready")

    def wait_ready(self, timeout_s: float = 45.0) -> None:
        """Every running node is ready and sees every running node unfenced."""
        expected = set(self.running())

        def ready() -> bool:
            for node_id in expected:
                self._check_alive(node_id)
                response = self.describe_cluster(node_id)
                if response.controller_id < 0:
                    return False
                unfenced = {b.node_id for b in response.brokers if not b.fenced}
                if not expected <= unfenced:
                    return False
            return True

        wait_until(ready, timeout_s, f"nodes {sorted(expected)} to be ready")

    def any_call(self, call: Callable[[shoal_pb2_grpc.BrokerStub], T], timeout_s: float = 15.0) -> T:
        """Run ``call`` against running nodes in turn until one answers."""
        holder: list[T] = []

        def attempt() -> bool:
            for node_id in self.running():
                try:
                    holder.append(call(self.broker(node_id)))
                    return True
                except grpc.RpcError:
                    continue
            return False

        wait_until(attempt, timeout_s, "any node to answer")
        return holder[0]

    def active_controller(self, timeout_s: float = 15.0) -> int:
        def find() -> int | None:
            for node_id in self.running():
                try:
                    response = self.describe_cluster(node_id)
                except grpc.RpcError:
                    continue
                if response.controller_id >= 0:
                    return response.controller_id + 1  # +1: node 0 is truthy-safe
            return None

        return wait_until(find, timeout_s, "an active controller") - 1

    def partition_metadata(self, topic: str, partition: int, node_id: int | None = None) -> shoal_pb2.PartitionMetadata:
        def fetch(stub: shoal_pb2_grpc.BrokerStub) -> shoal_pb2.MetadataResponse:
            return stub.Metadata(shoal_pb2.MetadataRequest(topics=[topic], include_internal=True), timeout=2)

        response = fetch(self.broker(node_id)) if node_id is not None else self.any_call(fetch)
        for topic_metadata in response.topics:
            if topic_metadata.name == topic:
                for partition_metadata in topic_metadata.partitions:
                    if partition_metadata.partition == partition:
                        return partition_metadata
        raise KeyError(f"{topic}-{partition} not in metadata")

    def leader_of(self, topic: str, partition: int, timeout_s: float = 15.0, exclude: int | None = None) -> int:
        """The partition's leader as the metadata says (waits until there is one, not ``exclude``)."""

        def find() -> int | None:
            try:
                metadata = self.partition_metadata(topic, partition)
            except KeyError:
                return None
            if metadata.leader >= 0 and metadata.leader != exclude and metadata.leader in self.running():
                return metadata.leader + 1
            return None

        return wait_until(find, timeout_s, f"a leader for {topic}-{partition}") - 1

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = -1,
        configs: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Create a topic and wait until every partition has a leader."""
        request = shoal_pb2.CreateTopicsRequest(
            topics=[
                shoal_pb2.NewTopic(
                    name=name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    configs=configs or {},
                )
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        response = self.any_call(lambda stub: stub.CreateTopics(request, timeout=timeout_s), timeout_s)
        result = response.results[0]
        if result.error_code not in (shoal_pb2.NONE, shoal_pb2.TOPIC_ALREADY_EXISTS):
            raise AssertionError(f"CreateTopics {name} failed: {shoal_pb2.ErrorCode.Name(result.error_code)} {result.error_message}")
        for partition in range(partitions):
            self.leader_of(name, partition, timeout_s)


def default_voter_count(n: int) -> int:
    """ARCHITECTURE.md: the first 3 (or 5) nodes vote; more nodes observe."""
    return n if n <= 3 else (3 if n < 5 else 5)


def start_cluster(
    n: int,
    base_dir: Path,
    settings: dict[str, str] | None = None,
    wait: bool = True,
    timeout_s: float = 45.0,
    voters: int | None = None,
) -> Cluster:
    """Start ``n`` nodes (ids 1..n; the first ``voters`` vote) under ``base_dir``."""
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    nodes: dict[int, NodeProcess] = {}
    used: set[int] = set()

    def unique_port() -> int:
        while True:
            port = free_port()
            if port not in used:
                used.add(port)
                return port

    for node_id in range(1, n + 1):
        nodes[node_id] = NodeProcess(
            node_id=node_id,
            grpc_port=unique_port(),
            raft_port=unique_port(),
            metrics_port=unique_port(),
            data_dir=base_dir / f"node-{node_id}",
        )
    voter_count = default_voter_count(n) if voters is None else voters
    assert 1 <= voter_count <= n
    cluster = Cluster(
        base_dir=base_dir,
        nodes=nodes,
        settings={k: str(v) for k, v in (settings or {}).items()},
        voters=list(range(1, voter_count + 1)),
    )
    try:
        for node_id in cluster.node_ids:
            cluster.start_node(node_id)
        if wait:
            cluster.wait_ready(timeout_s)
    except BaseException:
        cluster.close()
        raise
    return cluster


def make_cluster_fixture(n: int, settings: dict[str, str] | None = None, scope: str = "function"):
    """A pytest fixture factory: ``cluster3 = make_cluster_fixture(3)`` in a test module."""
    import pytest

    @pytest.fixture(scope=scope)
    def _fixture(tmp_path_factory) -> Iterator[Cluster]:
        base_dir = tmp_path_factory.mktemp(f"cluster{n}")
        cluster = start_cluster(n, base_dir, settings)
        try:
            yield cluster
        finally:
            cluster.close()

    return _fixture


# ---------------------------------------------------------------- raw gRPC data helpers
#
# A deliberately tiny producer/consumer on the raw stubs, so that data-plane
# tests depend only on the wire contract, not on the client library.


def make_batch(values: list[bytes], key: bytes | None = None, **producer_fields: int) -> bytes:
    from proto.batch import build_batch

    now_ms = int(time.time() * 1000)
    return build_batch([(key, value, (), now_ms) for value in values], **producer_fields)


def decode_values(records: bytes) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every record in the fetched batches."""
    from proto.batch import records_in

    return [(record.offset, record.value) for record in records_in(records)]


def produce(
    stub: shoal_pb2_grpc.BrokerStub,
    topic: str,
    partition: int,
    records: bytes,
    acks: int = -1,
    timeout_ms: int = 10_000,
) -> shoal_pb2.ProducePartitionResult:
    response = stub.Produce(
        shoal_pb2.ProduceRequest(
            acks=acks,
            timeout_ms=timeout_ms,
            partitions=[shoal_pb2.PartitionRecords(topic=topic, partition=partition, records=records)],
        ),
        timeout=timeout_ms / 1000 + 5,
    )
    return response.results[0]


def fetch(
    stub: shoal_pb2_grpc.BrokerStub,
    topic: str,
    partition: int,
    offset: int,
    max_wait_ms: int = 0,
    min_bytes: int = 0,
    partition_max_bytes: int = 1 << 20,
    leader_epoch: int = -1,
) -> shoal_pb2.FetchPartitionData:
    response = stub.Fetch(
        shoal_pb2.FetchRequest(
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            partitions=[
                shoal_pb2.FetchPartition(
                    topic=topic,
                    partition=partition,
                    fetch_offset=offset,
                    partition_max_bytes=partition_max_bytes,
                    current_leader_epoch=leader_epoch,
                )
            ],
        ),
        timeout=max_wait_ms / 1000 + 10,
    )
    return response.partitions[0]


def read_all(stub: shoal_pb2_grpc.BrokerStub, topic: str, partition: int, start: int = 0) -> list[tuple[int, bytes | None]]:
    """Every committed record from ``start`` up to the high watermark."""
    out: list[tuple[int, bytes | None]] = []
    offset = start
    while True:
        data = fetch(stub, topic, partition, offset)
        if data.error_code != shoal_pb2.NONE:
            error_class = RetriableFetchError if data.error_code in RETRIABLE_FETCH_CODES else AssertionError
            raise error_class(f"fetch failed: {shoal_pb2.ErrorCode.Name(data.error_code)} {data.error_message}")
        if not data.records:
            return out
        decoded = [item for item in decode_values(data.records) if item[0] >= offset]
        out.extend(decoded)
        offset = decoded[-1][0] + 1 if decoded else data.high_watermark
        if offset >= data.high_watermark:
            return out
