"""The seams inside a node: what the data plane offers the group and share services.

A `shoal node` process is one asyncio event loop (the gRPC aio server, the
replication fetchers, the share and group services, every timer) plus
pysyncobj's tick thread (the controller quorum) and prometheus-client's HTTP
thread. All node state is touched only on the event loop; the quorum's
`on_applied` callback hands metadata changes to the loop with
`loop.call_soon_threadsafe`, and blocking quorum proposals run in an executor.

The data plane (``node/replica_manager.py``) owns the partition logs and
replication. The coordinators (group coordinator on ``__consumer_offsets``,
share coordinator on ``__share_group_state``) and the share-partition leaders
(``node/share_manager.py``) use it only through the protocols below, so that
each side can be built and tested on its own.

Times: ``monotonic_ms()`` drives every timer (lock expiry, session timeouts,
long-poll waits) so that a wall-clock jump on one node changes no lock;
``wall_ms()`` stamps record timestamps and drives retention.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

# The controller creates the internal topics, so it owns their names; they are
# re-exported here for the node modules that address them.
from cluster.controller import CONSUMER_OFFSETS_TOPIC, SHARE_STATE_TOPIC  # noqa: F401


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class LeadershipChange:
    """This node became leader of a partition, or stopped being its leader."""

    topic: str
    partition: int
    is_leader: bool
    leader_epoch: int


@dataclass(frozen=True)
class AppendResult:
    base_offset: int
    last_offset: int
    #: The leader's append time on a LogAppendTime topic, -1 for CreateTime.
    log_append_time_ms: int = -1


class LocalPartitions(Protocol):
    """The partitions replicated on this node (data plane).

    Every method raises ``coordinator.errors.OperatingError`` with Kafka's codes:
    UNKNOWN_TOPIC_OR_PARTITION, NOT_LEADER_OR_FOLLOWER (this node does not lead
    it), FENCED_LEADER_EPOCH (``expected_leader_epoch`` is stale),
    NOT_ENOUGH_REPLICAS (ISR below min.insync.replicas), REQUEST_TIMED_OUT
    (acks=all not reached in time), OFFSET_OUT_OF_RANGE, ...
    """

    def is_leader(self, topic: str, partition: int) -> bool: ...

    def leader_epoch(self, topic: str, partition: int) -> int:
        """The current leader epoch this node knows for the partition (-1 unknown)."""
        ...

    async def append(
        self,
        topic: str,
        partition: int,
        batches: bytes,
        *,
        acks: int = -1,
        timeout_ms: int = 5000,
        expected_leader_epoch: int = -1,
    ) -> AppendResult:
        """Append record batches as leader; with acks=-1 wait for the high watermark.

        ``expected_leader_epoch`` (when >= 0) makes the append fail with
        FENCED_LEADER_EPOCH if leadership moved on since the caller loaded its
        state: a coordinator never writes into a term it did not load.
        """
        ...

    def read(
        self, topic: str, partition: int, start_offset: int, max_bytes: int
    ) -> bytes:
        """Whole batches from start_offset, below the high watermark (leader only)."""
        ...

    def read_all_committed(self, topic: str, partition: int, start_offset: int) -> bytes:
        """Every batch from start_offset up to the high watermark (coordinator loading)."""
        ...

    def high_watermark(self, topic: str, partition: int) -> int: ...

    def log_start_offset(self, topic: str, partition: int) -> int: ...

    def log_end_offset(self, topic: str, partition: int) -> int: ...

    async def offset_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The first offset with timestamp >= timestamp_ms; the high watermark if none."""
        ...

    async def delete_records_before(self, topic: str, partition: int, offset: int) -> int:
        """Advance the log start offset (coordinators prune their internal topics)."""
        ...

    async def wait_for_high_watermark(
        self, topic: str, partition: int, above: int, timeout_ms: int
    ) -> bool:
        """Wait until the high watermark is > above (or leadership is lost); False on timeout."""
        ...

    def add_leadership_listener(self, listener: Callable[[LeadershipChange], None]) -> None:
        """Called on the event loop when this node gains or loses a partition's leadership.

        A gain is reported only once the partition is ready to append as leader
        (after the leader epoch was recorded in the log's epoch cache).
        """
        ...

    def add_log_start_listener(self, listener: Callable[[str, int, int], None]) -> None:
        """Called with (topic, partition, new_log_start_offset) on retention/DeleteRecords."""
        ...


@dataclass(frozen=True)
class PartitionLeader:
    node_id: int  # -1: offline
    leader_epoch: int


class ClusterView(Protocol):
    """A read-only view of the replicated metadata, as this node last applied it."""

    node_id: int

    def partition_count(self, topic: str) -> int:
        """Partitions of the topic; raises UNKNOWN_TOPIC_OR_PARTITION."""
        ...

    def topic_partition_counts(self) -> dict[str, int]:
        """Every non-internal topic → partition count (for group assignment)."""
        ...

    def partition_leader(self, topic: str, partition: int) -> PartitionLeader: ...

    def broker_address(self, node_id: int) -> str | None:
        """'host:port' of a live broker's gRPC listener."""
        ...

    def add_metadata_listener(self, listener: Callable[[], None]) -> None:
        """Called on the event loop after each batch of applied metadata changes."""
        ...


class PeerClients(Protocol):
    """gRPC stubs to other nodes (cached channels; ``grpc.aio``)."""

    def internal(self, node_id: int):  # -> proto.shoal_pb2_grpc.InternalStub
        ...

    def broker(self, node_id: int):  # -> proto.shoal_pb2_grpc.BrokerStub
        ...


# A coordinator (group or share) is hosted for each internal-topic partition this
# node leads. The hosting shell loads the partition's records, then serves.
CoordinatorLoader = Callable[[str, int, int], Awaitable[None]]


#: Partition counts of the internal topics. Kafka defaults to 50 each; a local
#: Python cluster pays per partition (a log directory, a coordinator shard to
#: load, replication entries), while 8 still spreads coordinators over 3-5
#: nodes. Both are node settings (`offsets.topic.num.partitions`,
#: `share.coordinator.state.topic.num.partitions`) and must not change once
#: the cluster has data, exactly as in Kafka.
DEFAULT_INTERNAL_TOPIC_PARTITIONS = 8


def coordinator_partition(key: str, num_partitions: int) -> int:
    """The internal-topic partition whose leader coordinates ``key``.

    Group coordinator key: the group id. Share coordinator key:
    ``"<group id>:<topic>:<partition>"``. CRC32 is stable across processes and
    Python versions (``hash()`` is salted per process).
    """
    return zlib.crc32(key.encode("utf-8")) % num_partitions


def share_state_key(group_id: str, topic: str, partition: int) -> str:
    return f"{group_id}:{topic}:{partition}"
