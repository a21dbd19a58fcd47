"""The partition replicas on this node: leader and follower data plane.

Implements `node.interfaces.LocalPartitions`.

Rules (Kafka's ISR replication; see ARCHITECTURE.md "Data plane")
1. A replica is leader or follower as the applied metadata says, and nothing
   else decides it. `apply_metadata` reconciles every local replica with one
   `MetadataImage`; it opens logs for new assignments and deletes the logs of
   deleted topics or moved replicas (only after the node has caught up with
   the quorum, so that a stale image never deletes data).
2. Becoming leader records ``(leader_epoch, log end offset)`` in the log's
   leader-epoch cache *before* the first append and before leadership
   listeners hear of it. Followers use that entry to find where their log
   diverges (KIP-101/279): they send ``last_fetched_epoch`` and the leader
   answers ``diverging_epoch`` when the follower's tail is not in its log.
3. The high watermark is the minimum log end offset over the committed ISR
   (leader included). It never moves backwards on a leader. A leader that has
   not yet heard from an ISR follower in its current epoch does not know that
   follower's log end offset and treats it as the current high watermark, so
   the HW waits for that follower's first fetch.
4. ``acks=-1`` completes when the high watermark passes the batch's last
   offset; it is refused up front with NOT_ENOUGH_REPLICAS when the ISR is
   smaller than ``min.insync.replicas``. Consumers read only below the high
   watermark; followers read up to the log end offset.
5. ISR changes are requested by the leader as ``AlterPartition`` through the
   quorum, with the leader epoch and partition epoch (compare-and-set), one
   request in flight per partition. A follower leaves the ISR when it has not
   caught up to the leader's log end offset for ``replica.lag.time.max.ms``;
   it joins when its fetch offset reaches the high watermark (and the start of
   the current leader epoch, so that it holds every record of this epoch).
6. Every produce and fetch that carries a leader epoch is checked: older →
   FENCED_LEADER_EPOCH, newer → UNKNOWN_LEADER_EPOCH, not the leader →
   NOT_LEADER_OR_FOLLOWER with a hint of the leader the metadata names.
7. Bad input never changes stored data: batches are validated completely
   (shape, CRC, size) before the log sees them.

Theory of operation
All state is owned by the event loop. Long polls (consumer fetch, replica
fetch, acks=-1, `wait_for_high_watermark`) park on `_Waiters`: each replica
keeps a list of futures that are completed when its log end offset or high
watermark moves, or when it loses leadership; a multi-partition long poll
registers one future with every partition it reads. Disk writes are
synchronous calls into the page cache; fsync runs from the flush timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Iterable

from cluster.metadata import (
    AlterPartition,
    MetadataImage,
    PartitionRegistration,
    Rejected,
    TopicRegistration,
)
from cluster.topic_config import TopicConfig
from coordinator.errors import ErrorCode, OperatingError
from node.interfaces import AppendResult, LeadershipChange, monotonic_ms, wall_ms
from node.log import LogConfig, PartitionLog
from proto import batch as batch_codec

log = logging.getLogger("node.replicas")

#: Test-only switch for the chaos suite's mutation gate (tests/chaos/test_mutations.py):
#: a deliberate bug that answers acks=all before the high watermark passes the
#: batch, so the checker must find acknowledged records lost after a failover.
#: Never set it outside that test.
BUG_ACK_BEFORE_REPLICATION = bool(os.environ.get("SHOAL_BUG_ACK_BEFORE_REPLICATION"))

PARTITION_METADATA_FILE = "partition.metadata"
#: How often the leader checks for lagging followers, retention and flush.
HOUSEKEEPING_INTERVAL_MS = 250
#: Bound on concurrently parked long-poll waiters per partition (each is one
#: future): beyond it a fetch answers at once instead of parking.
MAX_WAITERS_PER_PARTITION = 10_000


class Role:
    LEADER = "leader"
    FOLLOWER = "follower"
    #: Assigned here, but the partition has no leader (offline) or this node
    #: is fenced out: serve nothing, fetch nothing.
    NONE = "none"


@dataclass
class FollowerState:
    """What the leader knows of one follower, from its replica fetches."""

    log_end_offset: int = -1  # -1: not heard from in this leader epoch
    last_caught_up_ms: int = 0
    last_fetch_ms: int = 0
    leader_end_at_last_fetch: int = 0
    last_sent_high_watermark: int = -1


@dataclass
class Replica:
    topic: str
    partition: int
    topic_id: str
    log: PartitionLog
    config: TopicConfig
    registration: PartitionRegistration
    role: str = Role.NONE
    leader_epoch: int = -1
    high_watermark: int = 0
    #: Follower only: the leader's high watermark in its last fetch response (-1 before one).
    leader_high_watermark: int = -1
    followers: dict[int, FollowerState] = field(default_factory=dict)
    waiters: list[asyncio.Future] = field(default_factory=list)
    isr_change_in_flight: bool = False
    last_isr_change_ms: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


def log_config_for(config: TopicConfig) -> LogConfig:
    """Topic configs (Kafka names) → the log's settings."""
    return LogConfig(
        segment_bytes=config.segment_bytes,
        segment_ms=config.segment_ms,
        retention_ms=config.retention_ms,
        retention_bytes=config.retention_bytes,
        cleanup_policy=config.cleanup_policy,
        delete_retention_ms=config.delete_retention_ms,
        index_interval_bytes=config.index_interval_bytes,
        flush_messages=None if config.flush_messages >= 2**62 else config.flush_messages,
        flush_ms=None if config.flush_ms >= 2**62 else config.flush_ms,
        max_message_bytes=config.max_message_bytes,
        message_timestamp_type=config.message_timestamp_type,
    )


def last_batch_epoch(partition_log: PartitionLog) -> int:
    """The epoch of the last batch in the log (-1 if empty).

    Not the epoch cache's latest entry: a replica that became leader and
    appended nothing has an entry starting at its log end offset. Sending that
    epoch as ``last_fetched_epoch`` would make the new leader report a
    divergence that truncation at the log end cannot resolve (Kafka clears
    such an entry in truncateTo; sending the last batch's epoch avoids it, and
    the next replicated batch's newer epoch replaces the entry).
    """
    end = partition_log.log_end_offset
    latest = -1
    for entry in partition_log.leader_epoch_entries:
        if entry.start_offset < end:
            latest = entry.epoch
    return latest


@dataclass(frozen=True)
class ReadResult:
    records: bytes
    high_watermark: int
    log_start_offset: int


async def wait_any(waiters: list[tuple[Replica, asyncio.Future]], timeout_ms: int) -> None:
    """Park until any of the futures completes or the timeout passes."""
    if not waiters or timeout_ms <= 0:
        return
    futures = [future for _, future in waiters]
    try:
        await asyncio.wait(futures, timeout=timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for replica, future in waiters:
            if not future.done():
                future.cancel()
            try:
                replica.waiters.remove(future)
            except ValueError:
                pass


class ReplicaManager:
    """Every partition replica this node hosts (implements LocalPartitions)."""

    def __init__(
        self,
        node_id: int,
        data_dir: Path,
        settings,
        propose: Callable[[object, float], Awaitable[object]],
    ) -> None:
        self.node_id = node_id
        self.logs_dir = Path(data_dir) / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._propose = propose
        self.replicas: dict[tuple[str, int], Replica] = {}
        self._image: MetadataImage | None = None
        self._leadership_listeners: list[Callable[[LeadershipChange], None]] = []
        self._log_start_listeners: list[Callable[[str, int, int], None]] = []
        #: Called with {(topic, partition): (leader_id, leader_epoch)} after each
        #: reconcile; the fetcher manager follows it.
        self.on_follow_changed: Callable[[dict[tuple[str, int], tuple[int, int]]], None] | None = None
        self._housekeeping_task: asyncio.Task | None = None
        self._closed = False
        # Plain counters for the metrics module (node/metrics.py reads them).
        self.produced_batches_total = 0
        self.produced_bytes_total = 0
        self.fetched_bytes_total = 0
        self.isr_shrinks_total = 0
        self.isr_expands_total = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._housekeeping_task = asyncio.get_running_loop().create_task(self._housekeeping())

    async def close(self) -> None:
        self._closed = True
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
            try:
                await self._housekeeping_task
            except (asyncio.CancelledError, Exception):
                pass
        for replica in list(self.replicas.values()):
            replica.wake()
            try:
                replica.log.flush()
            except OperatingError as error:
                log.error("flushing %s on shutdown failed: %s", replica.name, error)
            replica.log.close()
        self.replicas.clear()

    # ------------------------------------------------------------ listeners

    def add_leadership_listener(self, listener: Callable[[LeadershipChange], None]) -> None:
        self._leadership_listeners.append(listener)

    def add_log_start_listener(self, listener: Callable[[str, int, int], None]) -> None:
        self._log_start_listeners.append(listener)

    def _notify_leadership(self, change: LeadershipChange) -> None:
        for listener in list(self._leadership_listeners):
            try:
                listener(change)
            except Exception:  # a listener's bug must not stop replication
                log.exception("leadership listener failed for %s-%s", change.topic, change.partition)

    def _notify_log_start(self, replica: Replica) -> None:
        for listener in list(self._log_start_listeners):
            try:
                listener(replica.topic, replica.partition, replica.log.log_start_offset)
            except Exception:
                log.exception("log start listener failed for %s", replica.name)

    # ------------------------------------------------------------ metadata

    def apply_metadata(self, image: MetadataImage, caught_up: bool) -> None:
        """Reconcile every local replica with ``image`` (rule 1)."""
        self._image = image
        assigned: dict[tuple[str, int], tuple[TopicRegistration, PartitionRegistration]] = {}
        for topic in image.topics():
            for registration in topic.partitions:
                if self.node_id in registration.replicas:
                    assigned[(topic.name, registration.partition)] = (topic, registration)
        gained: list[LeadershipChange] = []
        lost: list[LeadershipChange] = []
        for key, replica in list(self.replicas.items()):
            entry = assigned.get(key)
            if entry is None or entry[0].topic_id != replica.topic_id:
                if entry is None and not caught_up:
                    continue
                self._remove_replica(replica, lost)
        follow: dict[tuple[str, int], tuple[int, int]] = {}
        for key, (topic, registration) in assigned.items():
            replica = self.replicas.get(key)
            if replica is None:
                replica = self._open_replica(topic, registration, caught_up)
                if replica is None:
                    continue
            elif replica.config != topic.config:
                replica.config = topic.config
                # The log reads its config on every call; swapping it applies
                # new retention/segment/flush settings from the next call on.
                replica.log.config = log_config_for(topic.config)
            if not caught_up:
                # While the journal replays, the image is the past: acting on
                # it would make this node lead partitions at epochs long gone
                # (and record those epochs in the log's epoch cache).
                continue
            self._reconcile_role(replica, registration, gained, lost)
            if replica.role == Role.FOLLOWER:
                follow[key] = (registration.leader, registration.leader_epoch)
        if self.on_follow_changed is not None:
            self.on_follow_changed(follow)
        for change in lost + gained:
            self._notify_leadership(change)

    def _open_replica(
        self, topic: TopicRegistration, registration: PartitionRegistration, caught_up: bool
    ) -> Replica | None:
        directory = self.logs_dir / f"{topic.name}-{registration.partition}"
        # Kafka's partition.metadata: the topic id the directory belongs to. A
        # directory left by a deleted topic of the same name (deleted while
        # this node was down) must not be served as the new topic's data.
        marker = directory / PARTITION_METADATA_FILE
        try:
            stored_id = marker.read_text().strip().removeprefix("topic_id: ") if marker.exists() else None
        except OSError as error:
            log.error("cannot read %s: %s", marker, error)
            return None
        if stored_id is not None and stored_id != topic.topic_id:
            if not caught_up:
                return None  # decide once the metadata is current
            log.warning(
                "%s holds data of an older topic %s (id %s); deleting it for topic id %s",
                directory,
                topic.name,
                stored_id,
                topic.topic_id,
            )
            shutil.rmtree(directory, ignore_errors=True)
            stored_id = None
        if stored_id is None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                temporary = directory / (PARTITION_METADATA_FILE + ".writing")
                temporary.write_text(f"topic_id: {topic.topic_id}\n")
                os.replace(temporary, marker)
            except OSError as error:
                log.error("cannot write %s: %s", marker, error)
                return None
        try:
            partition_log = PartitionLog(directory, log_config_for(topic.config), now_ms=wall_ms())
        except OperatingError as error:
            log.error("cannot open the log of %s-%s: %s", topic.name, registration.partition, error)
            return None
        replica = Replica(
            topic=topic.name,
            partition=registration.partition,
            topic_id=topic.topic_id,
            log=partition_log,
            config=topic.config,
            registration=registration,
        )
        # The high watermark is not checkpointed: a follower learns it from
        # the leader's next fetch response, a leader recomputes it from the
        # ISR's fetch offsets (rule 3). Starting from the log start offset
        # hides nothing committed for longer than one replica fetch.
        replica.high_watermark = partition_log.log_start_offset
        self.replicas[replica.key] = replica
        return replica

    def _remove_replica(self, replica: Replica, lost: list[LeadershipChange]) -> None:
        if replica.role == Role.LEADER:
            lost.append(LeadershipChange(replica.topic, replica.partition, False, replica.leader_epoch))
        replica.role = Role.NONE
        replica.wake()
        del self.replicas[replica.key]
        directory = replica.log.directory
        replica.log.close()
        shutil.rmtree(directory, ignore_errors=True)
        log.info("deleted the local replica of %s (topic deleted or replica moved)", replica.name)

    def _reconcile_role(
        self,
        replica: Replica,
        registration: PartitionRegistration,
        gained: list[LeadershipChange],
        lost: list[LeadershipChange],
    ) -> None:
        previous = replica.registration
        replica.registration = registration
        if registration.partition_epoch != previous.partition_epoch:
            replica.isr_change_in_flight = False
        if registration.leader == self.node_id:
            if replica.role != Role.LEADER or replica.leader_epoch != registration.leader_epoch:
                if replica.role == Role.LEADER:
                    lost.append(LeadershipChange(replica.topic, replica.partition, False, replica.leader_epoch))
                if self._become_leader(replica, registration):
                    gained.append(LeadershipChange(replica.topic, replica.partition, True, replica.leader_epoch))
            else:
                # Same term, new ISR: the HW may move (a follower left the ISR).
                self._maybe_advance_high_watermark(replica)
        else:
            if replica.role == Role.LEADER:
                lost.append(LeadershipChange(replica.topic, replica.partition, False, replica.leader_epoch))
            replica.role = Role.FOLLOWER if registration.leader >= 0 else Role.NONE
            replica.leader_epoch = registration.leader_epoch
            replica.followers.clear()
            replica.wake()

    def _become_leader(self, replica: Replica, registration: PartitionRegistration) -> bool:
        if registration.leader_epoch < replica.log.latest_epoch:
            # The log holds batches of a newer epoch than the metadata names:
            # this image is stale. Serve nothing until a newer one applies.
            log.warning(
                "%s: metadata names this node leader at epoch %d but the log has seen epoch %d; waiting",
                replica.name,
                registration.leader_epoch,
                replica.log.latest_epoch,
            )
            replica.role = Role.NONE
            replica.wake()
            return False
        # Rule 2: the epoch starts at our log end offset, recorded before any
        # append in this epoch and before listeners are told.
        replica.log.assign_epoch(registration.leader_epoch, replica.log.log_end_offset)
        replica.role = Role.LEADER
        replica.leader_epoch = registration.leader_epoch
        now = monotonic_ms()
        replica.followers = {
            broker_id: FollowerState(last_caught_up_ms=now, last_fetch_ms=now)
            for broker_id in registration.replicas
            if broker_id != self.node_id
        }
        replica.isr_change_in_flight = False
        self._maybe_advance_high_watermark(replica)
        replica.wake()
        log.info(
            "leader of %s at epoch %d (LEO %d, HW %d, ISR %s)",
            replica.name,
            replica.leader_epoch,
            replica.log.log_end_offset,
            replica.high_watermark,
            list(registration.isr),
        )
        return True

    # ------------------------------------------------------------ lookups

    def _replica(self, topic: str, partition: int) -> Replica:
        replica = self.replicas.get((topic, partition))
        if replica is not None:
            return replica
        image = self._image
        if image is None:
            raise OperatingError(ErrorCode.NOT_LEADER_OR_FOLLOWER, "this node has not loaded the cluster metadata yet")
        image.partition(topic, partition)  # raises UNKNOWN_TOPIC_OR_PARTITION
        raise OperatingError(
            ErrorCode.NOT_LEADER_OR_FOLLOWER, f"this node (id {self.node_id}) holds no replica of {topic}-{partition}"
        )

    def leader_hint(self, topic: str, partition: int) -> tuple[int, int]:
        """(leader id, leader epoch) as the applied metadata says; (-1, -1) unknown."""
        if self._image is None:
            return (-1, -1)
        try:
            registration = self._image.partition(topic, partition)
        except OperatingError:
            return (-1, -1)
        return (registration.leader, registration.leader_epoch)

    def _leader(self, topic: str, partition: int, expected_leader_epoch: int = -1) -> Replica:
        replica = self._replica(topic, partition)
        if replica.role != Role.LEADER:
            leader, epoch = self.leader_hint(topic, partition)
            raise OperatingError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"node {self.node_id} is not the leader of {topic}-{partition}; the leader is node {leader} at epoch {epoch}",
            )
        self._check_epoch(replica, expected_leader_epoch)
        return replica

    def _check_epoch(self, replica: Replica, expected_leader_epoch: int) -> None:
        if expected_leader_epoch < 0 or expected_leader_epoch == replica.leader_epoch:
            return
        if expected_leader_epoch < replica.leader_epoch:
            raise OperatingError(
                ErrorCode.FENCED_LEADER_EPOCH,
                f"leader epoch {expected_leader_epoch} of {replica.name} is stale; the current epoch is "
                f"{replica.leader_epoch} (refresh metadata)",
            )
        raise OperatingError(
            ErrorCode.UNKNOWN_LEADER_EPOCH,
            f"leader epoch {expected_leader_epoch} of {replica.name} is newer than this node knows "
            f"({replica.leader_epoch}); it has not applied the latest metadata yet, retry",
        )

    def min_insync_replicas(self, replica: Replica) -> int:
        return replica.config.min_insync_replicas

    # ------------------------------------------------------------ LocalPartitions

    def is_leader(self, topic: str, partition: int) -> bool:
        replica = self.replicas.get((topic, partition))
        return replica is not None and replica.role == Role.LEADER

    def leader_epoch(self, topic: str, partition: int) -> int:
        replica = self.replicas.get((topic, partition))
        if replica is None:
            return self.leader_hint(topic, partition)[1]
        return replica.leader_epoch

    def high_watermark(self, topic: str, partition: int) -> int:
        return self._replica(topic, partition).high_watermark

    def log_start_offset(self, topic: str, partition: int) -> int:
        return self._replica(topic, partition).log.log_start_offset

    def log_end_offset(self, topic: str, partition: int) -> int:
        return self._replica(topic, partition).log.log_end_offset

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
        if acks not in (-1, 0, 1):
            raise OperatingError(ErrorCode.INVALID_REQUIRED_ACKS, f"acks must be -1 (all), 0 or 1, got {acks}")
        replica = self._leader(topic, partition, expected_leader_epoch)
        # Rule 7: append_as_leader validates every batch (shape, CRC, size,
        # producer sequence) before it writes a byte; not repeated here, as
        # the CRC pass is the largest per-byte cost of a produce.
        if acks == -1:
            isr_size = len(replica.registration.isr)
            min_isr = self.min_insync_replicas(replica)
            if isr_size < min_isr:
                raise OperatingError(
                    ErrorCode.NOT_ENOUGH_REPLICAS,
                    f"{replica.name} has {isr_size} in-sync replica(s) {list(replica.registration.isr)}, below "
                    f"min.insync.replicas={min_isr}; acks=all is refused until replicas catch up",
                )
        info = replica.log.append_as_leader(batches, replica.leader_epoch, now_ms=wall_ms())
        self.produced_batches_total += 1
        self.produced_bytes_total += len(batches)
        epoch_at_append = replica.leader_epoch
        self._maybe_advance_high_watermark(replica)
        replica.wake()  # followers parked in a replica fetch
        result = AppendResult(info.first_offset, info.last_offset, info.log_append_time_ms)
        if acks != -1 or BUG_ACK_BEFORE_REPLICATION:
            return result
        deadline_ms = monotonic_ms() + max(0, timeout_ms)
        while replica.high_watermark <= info.last_offset:
            if replica.role != Role.LEADER or replica.leader_epoch != epoch_at_append or self._closed:
                raise OperatingError(
                    ErrorCode.NOT_LEADER_OR_FOLLOWER,
                    f"leadership of {replica.name} moved while waiting for acks=all; the write at offset "
                    f"{info.first_offset} may or may not be committed, retry (idempotent producers deduplicate)",
                )
            remaining_ms = deadline_ms - monotonic_ms()
            if remaining_ms <= 0:
                raise OperatingError(
                    ErrorCode.REQUEST_TIMED_OUT,
                    f"acks=all for {replica.name} offsets {info.first_offset}..{info.last_offset} not reached in "
                    f"{timeout_ms} ms (high watermark {replica.high_watermark}, ISR {list(replica.registration.isr)})",
                )
            future = asyncio.get_running_loop().create_future()
            replica.waiters.append(future)
            await wait_any([(replica, future)], remaining_ms)
        # Kafka's rule at completion: the HW may have passed the batch only
        # because the ISR shrank below min.insync.replicas meanwhile; then the
        # records are on fewer replicas than the producer asked for.
        isr_size = len(replica.registration.isr)
        min_isr = self.min_insync_replicas(replica)
        if isr_size < min_isr:
            raise OperatingError(
                ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
                f"{replica.name} offsets {info.first_offset}..{info.last_offset} were written, but the ISR shrank to "
                f"{isr_size} replica(s), below min.insync.replicas={min_isr}; they are not durable as requested",
            )
        return result

    def read(self, topic: str, partition: int, start_offset: int, max_bytes: int) -> bytes:
        replica = self._leader(topic, partition)
        return self._read_committed(replica, start_offset, max_bytes)

    def _read_committed(self, replica: Replica, start_offset: int, max_bytes: int) -> bytes:
        log_start = replica.log.log_start_offset
        end = replica.log.log_end_offset
        if start_offset < log_start or start_offset > end:
            raise OperatingError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"offset {start_offset} is outside {replica.name}'s log [{log_start}, {end}]",
            )
        if start_offset >= replica.high_watermark:
            return b""
        return replica.log.read(start_offset, max_bytes, max_offset=replica.high_watermark)

    def read_all_committed(self, topic: str, partition: int, start_offset: int) -> bytes:
        replica = self._leader(topic, partition)
        parts: list[bytes] = []
        offset = max(start_offset, replica.log.log_start_offset)
        while offset < replica.high_watermark:
            chunk = replica.log.read(offset, 1 << 20, max_offset=replica.high_watermark)
            if not chunk:
                break
            parts.append(chunk)
            last = None
            for _, header in batch_codec.iter_batches(chunk):
                last = header
            assert last is not None
            offset = last.next_offset
        return b"".join(parts)

    async def offset_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> int:
        found = await self.record_for_timestamp(topic, partition, timestamp_ms)
        return found[0] if found is not None else self._leader(topic, partition).high_watermark

    async def record_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first committed record at or after ``timestamp_ms``; None past the HW."""
        replica = self._leader(topic, partition)
        found = replica.log.record_for_timestamp(timestamp_ms)
        if found is None or found[0] >= replica.high_watermark:
            return None
        return found

    async def delete_records_before(self, topic: str, partition: int, offset: int) -> int:
        replica = self._leader(topic, partition)
        if offset == -1:
            offset = replica.high_watermark
        if offset < 0 or offset > replica.high_watermark:
            raise OperatingError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"cannot delete {replica.name} records below {offset}: it must be in "
                f"[0, high watermark {replica.high_watermark}] (-1 means the high watermark)",
            )
        if offset > replica.log.log_start_offset:
            replica.log.delete_records_before(offset)
            self._notify_log_start(replica)
            # Followers learn the new log start offset from the next fetch.
            replica.wake()
        return replica.log.log_start_offset

    async def wait_for_high_watermark(self, topic: str, partition: int, above: int, timeout_ms: int) -> bool:
        replica = self._replica(topic, partition)
        deadline_ms = monotonic_ms() + timeout_ms
        while replica.high_watermark <= above:
            if replica.role != Role.LEADER or self._closed:
                return False
            remaining_ms = deadline_ms - monotonic_ms()
            if remaining_ms <= 0:
                return False
            future = asyncio.get_running_loop().create_future()
            replica.waiters.append(future)
            await wait_any([(replica, future)], remaining_ms)
        return True

    # ------------------------------------------------------------ consumer fetch

    def fetch_partition(self, topic: str, partition: int, fetch_offset: int, max_bytes: int, leader_epoch: int) -> ReadResult:
        replica = self._leader(topic, partition, leader_epoch)
        records = self._read_committed(replica, fetch_offset, max_bytes)
        self.fetched_bytes_total += len(records)
        return ReadResult(records, replica.high_watermark, replica.log.log_start_offset)

    def park_on(self, keys: Iterable[tuple[str, int]]) -> list[tuple[Replica, asyncio.Future]]:
        """Register one future per partition; completed when it changes."""
        loop = asyncio.get_running_loop()
        parked = []
        for key in keys:
            replica = self.replicas.get(key)
            if replica is None or len(replica.waiters) >= MAX_WAITERS_PER_PARTITION:
                continue
            future = loop.create_future()
            replica.waiters.append(future)
            parked.append((replica, future))
        return parked

    # ------------------------------------------------------------ replica fetch (leader side)

    def replica_fetch_partition(
        self,
        follower_id: int,
        topic: str,
        partition: int,
        fetch_offset: int,
        current_leader_epoch: int,
        last_fetched_epoch: int,
        max_bytes: int,
    ) -> tuple[bytes, int, int, tuple[int, int] | None]:
        """Serve one partition of a follower's fetch.

        Returns (records, high watermark, log start offset, diverging epoch
        (epoch, end offset) or None). Updates the follower's state first, so
        that the HW and the ISR react to its progress.
        """
        replica = self._leader(topic, partition, current_leader_epoch)
        follower = replica.followers.get(follower_id)
        if follower is None:
            raise OperatingError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"node {follower_id} is not a replica of {replica.name} (replicas {list(replica.registration.replicas)})",
            )
        partition_log = replica.log
        leader_end = partition_log.log_end_offset
        # KIP-320: a follower whose last fetched epoch ends earlier here than
        # its fetch offset has a divergent tail; tell it where to truncate.
        if last_fetched_epoch >= 0:
            epoch, end_offset = partition_log.end_offset_for_epoch(last_fetched_epoch)
            if epoch < 0:
                # The follower claims an epoch newer than any we know: it cannot
                # be ahead of a legitimate leader, so it truncates to our end.
                epoch, end_offset = partition_log.latest_epoch, leader_end
            if epoch != last_fetched_epoch or end_offset < fetch_offset:
                return b"", replica.high_watermark, partition_log.log_start_offset, (epoch, end_offset)
        if fetch_offset > leader_end:
            return b"", replica.high_watermark, partition_log.log_start_offset, (partition_log.latest_epoch, leader_end)
        if fetch_offset < partition_log.log_start_offset:
            raise OperatingError(
                ErrorCode.OFFSET_OUT_OF_RANGE,
                f"fetch offset {fetch_offset} is below {replica.name}'s log start offset {partition_log.log_start_offset}",
            )
        now = monotonic_ms()
        # Kafka's lastCaughtUpTime: caught up now if at the end; caught up as of
        # the previous fetch if this fetch reached where the end was then.
        if fetch_offset >= leader_end:
            follower.last_caught_up_ms = now
        elif fetch_offset >= follower.leader_end_at_last_fetch:
            follower.last_caught_up_ms = max(follower.last_caught_up_ms, follower.last_fetch_ms)
        follower.log_end_offset = fetch_offset
        follower.last_fetch_ms = now
        follower.leader_end_at_last_fetch = leader_end
        self._maybe_advance_high_watermark(replica)
        self._maybe_expand_isr(replica, follower_id, follower)
        records = b""
        if fetch_offset < leader_end and max_bytes > 0:
            records = partition_log.read(fetch_offset, max_bytes, max_offset=leader_end)
        return records, replica.high_watermark, partition_log.log_start_offset, None

    def note_high_watermark_sent(self, follower_id: int, key: tuple[str, int], high_watermark: int) -> None:
        """The follower's response carried ``high_watermark`` (so a parked fetch
        need not return just to tell it again)."""
        replica = self.replicas.get(key)
        if replica is None or replica.role != Role.LEADER:
            return
        follower = replica.followers.get(follower_id)
        if follower is not None:
            follower.last_sent_high_watermark = max(follower.last_sent_high_watermark, high_watermark)

    def follower_needs_answer(self, follower_id: int, key: tuple[str, int], fetch_offset: int) -> bool:
        """True if a parked replica fetch should return now for this partition."""
        replica = self.replicas.get(key)
        if replica is None or replica.role != Role.LEADER:
            return True
        follower = replica.followers.get(follower_id)
        if follower is None:
            return True
        return fetch_offset < replica.log.log_end_offset or follower.last_sent_high_watermark < replica.high_watermark

    # ------------------------------------------------------------ follower side

    def follower_fetch_state(self, key: tuple[str, int]) -> tuple[int, int, int, int] | None:
        """(fetch offset, current leader epoch, last fetched epoch, log start) of a followed partition."""
        replica = self.replicas.get(key)
        if replica is None or replica.role != Role.FOLLOWER:
            return None
        return (
            replica.log.log_end_offset,
            replica.leader_epoch,
            last_batch_epoch(replica.log),
            replica.log.log_start_offset,
        )

    def append_as_follower(
        self, key: tuple[str, int], leader_epoch: int, records: bytes, high_watermark: int, log_start_offset: int
    ) -> None:
        replica = self.replicas.get(key)
        if replica is None or replica.role != Role.FOLLOWER or replica.leader_epoch != leader_epoch:
            return  # leadership moved while the fetch was in flight; drop it
        partition_log = replica.log
        if records:
            partition_log.append_as_follower(records, now_ms=wall_ms())
        if log_start_offset > partition_log.log_start_offset and log_start_offset <= partition_log.log_end_offset:
            partition_log.delete_records_before(log_start_offset)
            self._notify_log_start(replica)
        # A follower's HW only follows the leader's; it may move back after
        # a truncation, never beyond our own log end.
        replica.high_watermark = min(high_watermark, partition_log.log_end_offset)
        replica.leader_high_watermark = high_watermark
        replica.wake()

    def truncate_follower(self, key: tuple[str, int], leader_epoch: int, diverging_epoch: int, end_offset: int) -> None:
        """KIP-279: truncate to where our log and the leader's agree."""
        replica = self.replicas.get(key)
        if replica is None or replica.role != Role.FOLLOWER or replica.leader_epoch != leader_epoch:
            return
        partition_log = replica.log
        if diverging_epoch >= 0:
            local_epoch, local_end = partition_log.end_offset_for_epoch(diverging_epoch)
            target = min(end_offset, local_end) if local_epoch == diverging_epoch else min(end_offset, local_end)
        else:
            target = end_offset
        target = max(target, partition_log.log_start_offset)
        if target < partition_log.log_end_offset:
            log.info(
                "truncating %s from %d to %d (diverging epoch %d ends at %d on the leader)",
                replica.name,
                partition_log.log_end_offset,
                target,
                diverging_epoch,
                end_offset,
            )
            partition_log.truncate_to(target)
            replica.high_watermark = min(replica.high_watermark, target)

    def reset_follower_to(self, key: tuple[str, int], leader_epoch: int, offset: int) -> None:
        """Our fetch offset is below the leader's log start: start over at ``offset``."""
        replica = self.replicas.get(key)
        if replica is None or replica.role != Role.FOLLOWER or replica.leader_epoch != leader_epoch:
            return
        log.info("%s is behind the leader's log start; restarting the log at %d", replica.name, offset)
        replica.log.truncate_fully_and_start_at(offset)
        replica.high_watermark = offset

    # ------------------------------------------------------------ HW and ISR

    def _maybe_advance_high_watermark(self, replica: Replica) -> None:
        if replica.role != Role.LEADER:
            return
        end = replica.log.log_end_offset
        candidate = end
        for broker_id in replica.registration.isr:
            if broker_id == self.node_id:
                continue
            follower = replica.followers.get(broker_id)
            follower_end = follower.log_end_offset if follower is not None else -1
            if follower_end < 0:
                # Rule 3: unknown in this epoch → hold the HW where it is.
                follower_end = replica.high_watermark
            candidate = min(candidate, follower_end)
        if candidate > replica.high_watermark:
            replica.high_watermark = candidate
            replica.wake()

    def _maybe_expand_isr(self, replica: Replica, follower_id: int, follower: FollowerState) -> None:
        registration = replica.registration
        if follower_id in registration.isr or replica.isr_change_in_flight:
            return
        if self._image is not None and not self._image.is_live(follower_id):
            return
        epoch_start = next(
            (entry.start_offset for entry in replica.log.leader_epoch_entries if entry.epoch == replica.leader_epoch),
            replica.log.log_end_offset,
        )
        if follower.log_end_offset >= replica.high_watermark and follower.log_end_offset >= epoch_start:
            new_isr = tuple(b for b in registration.replicas if b in registration.isr or b == follower_id)
            self.isr_expands_total += 1
            log.info("%s: adding node %d to the ISR (caught up to %d)", replica.name, follower_id, follower.log_end_offset)
            self._request_isr_change(replica, new_isr)

    def _maybe_shrink_isr(self, replica: Replica, now: int) -> None:
        registration = replica.registration
        if replica.isr_change_in_flight:
            return
        lag_ms = self.settings["replica.lag.time.max.ms"]
        lagging = [
            broker_id
            for broker_id in registration.isr
            if broker_id != self.node_id
            and now - replica.followers.get(broker_id, FollowerState(last_caught_up_ms=now)).last_caught_up_ms > lag_ms
        ]
        if not lagging:
            return
        new_isr = tuple(b for b in registration.isr if b not in lagging)
        self.isr_shrinks_total += 1
        log.info("%s: removing lagging nodes %s from the ISR (lag above %d ms)", replica.name, lagging, lag_ms)
        self._request_isr_change(replica, new_isr)

    def _request_isr_change(self, replica: Replica, new_isr: tuple[int, ...]) -> None:
        registration = replica.registration
        command = AlterPartition(
            topic=replica.topic,
            partition=replica.partition,
            leader_id=self.node_id,
            leader_epoch=registration.leader_epoch,
            partition_epoch=registration.partition_epoch,
            new_isr=new_isr,
            topic_id=replica.topic_id,
        )
        replica.isr_change_in_flight = True
        replica.last_isr_change_ms = monotonic_ms()

        async def run() -> None:
            try:
                result = await self._propose(command, 5.0)
            except OperatingError as error:
                log.warning("AlterPartition for %s failed: %s", replica.name, error)
                result = None
            if isinstance(result, Rejected):
                log.info("AlterPartition for %s refused: %s", replica.name, result.message)
            # The applied metadata clears the flag when the partition epoch
            # changes; on failure clear it here so that the next check retries.
            if result is None or isinstance(result, Rejected):
                if replica.registration.partition_epoch == registration.partition_epoch:
                    replica.isr_change_in_flight = False

        asyncio.get_running_loop().create_task(run())

    # ------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        retention_interval_ms = self.settings["log.retention.check.interval.ms"]
        next_retention_ms = monotonic_ms() + retention_interval_ms
        while not self._closed:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_MS / 1000)
            now = monotonic_ms()
            do_retention = now >= next_retention_ms
            if do_retention:
                next_retention_ms = now + retention_interval_ms
            for replica in list(self.replicas.values()):
                try:
                    if replica.role == Role.LEADER:
                        self._maybe_shrink_isr(replica, now)
                        # An in-flight request that never came back (lost
                        # proposal) is retried after a while.
                        if replica.isr_change_in_flight and now - replica.last_isr_change_ms > 10_000:
                            replica.isr_change_in_flight = False
                    replica.log.maybe_flush(now_ms=wall_ms())
                    if do_retention:
                        before = replica.log.log_start_offset
                        replica.log.enforce_retention(now_ms=wall_ms(), max_offset=replica.high_watermark)
                        if replica.config.compacted:
                            replica.log.compact(now_ms=wall_ms())
                        if replica.log.log_start_offset != before:
                            self._notify_log_start(replica)
                except OperatingError as error:
                    log.error("housekeeping of %s failed: %s", replica.name, error)
