"""Consumer: reads partitions by offset, alone (``assign``) or in a consumer group (``subscribe``).

Use::

    with Consumer({"bootstrap.servers": "127.0.0.1:19092", "group.id": "billing",
                   "auto.offset.reset": "earliest"}) as consumer:
        consumer.subscribe(["orders"])
        while True:
            for record in consumer.poll(1.0):
                handle(record)

Theory of operation

* **Fetching.** ``poll`` sends one Fetch per leader node for the partitions it
  owns (in parallel), each from the partition's *position* (the next offset to
  return). Batches are decoded here (CRC checked when ``check.crcs``); records
  below the position are skipped (a batch may start before it) and what
  exceeds ``max.poll.records`` stays buffered for the next poll. Leader moves
  (NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH, an unreachable node) drop the
  cached leader; the next poll fetches from the new one.
* **Positions.** A partition without a position gets one from its committed
  offset (group mode) or else from ``auto.offset.reset`` (ListOffsets
  earliest/latest; ``none`` raises OffsetOutOfRangeError). OFFSET_OUT_OF_RANGE
  on fetch resets the same way.
* **Groups (KIP-848).** A background thread heartbeats the group coordinator
  (ConsumerGroupHeartbeat; the client chooses its member id, epoch 0 joins,
  -1 leaves) and records the target assignment it is given. ``poll`` — on the
  application's thread, where callbacks belong — reconciles: for partitions
  being taken away it commits their positions (if ``enable.auto.commit``),
  calls ``on_revoke`` and drops them; then it adds the new ones and calls
  ``on_assign``. The next heartbeat reports the partitions now owned, which is
  how the coordinator learns that a revoked partition is free for another
  member. UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH mean the member was removed:
  its partitions are lost (no commit) and it joins again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from client._net import COORDINATOR_MOVED_CODES, LEADER_MOVED_CODES, Backoff, Connections, now_ms
from client.config import consumer_config, default_deserializer
from client.errors import (
    CorruptRecordError,
    IllegalStateError,
    OffsetOutOfRangeError,
    RecordDeserializationError,
    ShoalError,
    WakeupError,
    error_for_code,
)
from client.types import ConsumerRecord, OffsetAndMetadata, TopicPartition
from proto import batch as batch_codec
from proto import shoal_pb2

RebalanceCallback = Callable[[list[TopicPartition]], None]


def decode_batches(records: bytes, *, check_crcs: bool) -> list[tuple[batch_codec.BatchHeader, list[batch_codec.Record] | None]]:
    """Split fetched bytes into (header, records); records is None for a batch failing its CRC.

    A batch whose *shape* is broken (truncated, bad magic) raises
    CorruptRecordError: nothing after it can be located.
    """
    out: list[tuple[batch_codec.BatchHeader, list[batch_codec.Record] | None]] = []
    view = memoryview(records)
    try:
        for pos, header in batch_codec.iter_batches(view):
            chunk = view[pos : pos + header.size_bytes]
            if check_crcs and not batch_codec.crc_matches(view, pos, header):
                out.append((header, None))
                continue
            out.append((header, batch_codec.decode_records(chunk, verify_crc=False)))
    except batch_codec.CorruptBatchError as exc:
        raise CorruptRecordError(str(exc.message)) from None
    return out


def deserialize(
    fn: Callable[[bytes | None], Any], data: bytes | None, tp: TopicPartition, offset: int, what: str
) -> Any:
    try:
        return fn(data)
    except Exception as exc:  # a user deserializer may raise anything
        raise RecordDeserializationError(
            f"error deserializing {what} at offset {offset} of {tp}: {exc!r}",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            cause=exc,
        ) from exc


class Consumer:
    """A Kafka-style consumer. Not thread-safe, except ``wakeup()``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._cfg = consumer_config(config)
        cfg = self._cfg
        self._conn = Connections(cfg)
        self._group_id: str | None = cfg["group.id"] or None
        self._key_deserializer = cfg["key.deserializer"] or default_deserializer
        self._value_deserializer = cfg["value.deserializer"] or default_deserializer
        self._assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._pending_reset: dict[TopicPartition, int] = {}  # -2 earliest, -1 latest
        self._buffer: dict[TopicPartition, deque[ConsumerRecord]] = {}
        self._paused_error: ShoalError | None = None
        self._subscription: list[str] = []
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._woken = threading.Event()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shoal-consumer-fetch")
        self._last_auto_commit_ms = now_ms()
        # Group membership, shared with the heartbeat thread under _group_lock.
        self._group_lock = threading.Lock()
        self._member_id = str(uuid.uuid4())
        self._member_epoch = 0
        self._target: list[TopicPartition] | None = None
        self._lost = False
        self._heartbeat_interval_ms = cfg["heartbeat.interval.ms"]
        self._heartbeat_now = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._heartbeat_error: ShoalError | None = None

    # ------------------------------------------------------------ manual assignment

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (no group membership)."""
        if self._subscription:
            raise IllegalStateError("subscribe() and assign() cannot be mixed; call unsubscribe() first")
        tps = [TopicPartition(*tp) for tp in partitions]
        for tp in tps:
            self._check_partition(tp)
        self._set_assignment(tps)

    def assignment(self) -> list[TopicPartition]:
        return list(self._assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        tp = self._owned(partition)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._positions[tp] = offset
        self._pending_reset.pop(tp, None)
        self._buffer.pop(tp, None)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        for tp in self._targets(partitions):
            self._pending_reset[tp] = -2
            self._positions.pop(tp, None)
            self._buffer.pop(tp, None)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        for tp in self._targets(partitions):
            self._pending_reset[tp] = -1
            self._positions.pop(tp, None)
            self._buffer.pop(tp, None)

    def partitions_for(self, topic: str) -> list[int]:
        """The partition ids of a topic (from metadata)."""
        return sorted(self._conn.topic(topic).partitions)

    def position(self, partition: TopicPartition) -> int:
        """The offset of the next record poll will return for this partition."""
        tp = self._owned(partition)
        self._resolve_positions([tp])
        return self._positions[tp]

    # ------------------------------------------------------------ groups

    def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        """Join ``group.id`` and consume the partitions the coordinator assigns."""
        if not self._group_id:
            raise IllegalStateError("subscribe() needs group.id in the consumer config")
        topics = sorted(set(topics))
        if not topics:
            self.unsubscribe()
            return
        if self._assigned and not self._subscription:
            raise IllegalStateError("subscribe() and assign() cannot be mixed; call unsubscribe() first")
        for topic in topics:
            if not isinstance(topic, str) or not topic:
                raise ValueError("topic names must be non-empty strings")
        self._subscription = topics
        self._on_assign, self._on_revoke = on_assign, on_revoke
        if self._heartbeat_thread is None:
            self._heartbeat_stop.clear()
            self._heartbeat_thread = threading.Thread(target=self._run_heartbeat, name="shoal-consumer-heartbeat", daemon=True)
            self._heartbeat_thread.start()
        self._heartbeat_now.set()

    def subscription(self) -> list[str]:
        return list(self._subscription)

    def unsubscribe(self) -> None:
        """Leave the group (committing positions first if auto commit is on)."""
        if self._subscription:
            self._leave_group()
        self._set_assignment([])

    def commit_sync(self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None, timeout: float | None = None) -> None:
        """Commit ``offsets`` (default: the current positions of owned partitions)."""
        if not self._group_id:
            raise IllegalStateError("commit_sync() needs group.id in the consumer config")
        if offsets is None:
            offsets = {tp: self._positions[tp] for tp in self._assigned if tp in self._positions}
        if not offsets:
            return
        partitions = []
        for tp, value in offsets.items():
            meta = value if isinstance(value, OffsetAndMetadata) else OffsetAndMetadata(int(value))
            partitions.append(
                shoal_pb2.OffsetCommitPartition(
                    topic=tp[0], partition=tp[1], committed_offset=meta.offset, metadata=meta.metadata
                )
            )
        with self._group_lock:
            member_id = self._member_id if self._subscription else ""
            epoch = self._member_epoch if self._subscription else -1
        request = shoal_pb2.OffsetCommitRequest(
            group_id=self._group_id, member_id=member_id, member_epoch=epoch, partitions=partitions
        )
        timeout_ms = int(timeout * 1000) if timeout is not None else self._cfg["request.timeout.ms"]
        response = self._conn.call_coordinator(self._group_id, "OffsetCommit", request, timeout_ms=timeout_ms)
        if response.error_code:
            raise error_for_code(response.error_code, response.error_message)
        for result in response.results:
            if result.error_code:
                raise error_for_code(
                    result.error_code, result.error_message or f"commit for {result.topic}-{result.partition} failed"
                )

    def committed(self, partitions: Iterable[TopicPartition], timeout: float | None = None) -> dict[TopicPartition, int | None]:
        """The committed offset of each partition (None when nothing is committed)."""
        if not self._group_id:
            raise IllegalStateError("committed() needs group.id in the consumer config")
        tps = [TopicPartition(*tp) for tp in partitions]
        request = shoal_pb2.OffsetFetchRequest(
            group_id=self._group_id,
            partitions=[shoal_pb2.TopicPartition(topic=tp.topic, partition=tp.partition) for tp in tps],
        )
        timeout_ms = int(timeout * 1000) if timeout is not None else self._cfg["request.timeout.ms"]
        response = self._conn.call_coordinator(self._group_id, "OffsetFetch", request, timeout_ms=timeout_ms)
        if response.error_code and response.error_code != 69:  # GROUP_ID_NOT_FOUND: nothing committed yet
            raise error_for_code(response.error_code, response.error_message)
        result: dict[TopicPartition, int | None] = {tp: None for tp in tps}
        for entry in response.offsets:
            tp = TopicPartition(entry.topic, entry.partition)
            if entry.error_code == 0 and entry.committed_offset >= 0:
                result[tp] = entry.committed_offset
        return result

    # ------------------------------------------------------------ polling

    def poll(self, timeout: float = 1.0) -> list[ConsumerRecord]:
        """Return records from owned partitions, waiting up to ``timeout`` seconds for some."""
        if self._closed:
            raise IllegalStateError("the consumer is closed")
        if not self._assigned and not self._subscription:
            raise IllegalStateError("poll() needs assign() or subscribe() first")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self._woken.is_set():
                self._woken.clear()
                raise WakeupError("poll() was interrupted by wakeup()")
            if self._heartbeat_error is not None:
                error, self._heartbeat_error = self._heartbeat_error, None
                raise error
            self._reconcile()
            self._maybe_auto_commit()
            records = self._drain_buffer()
            if records:
                return records
            remaining = deadline - time.monotonic()
            if self._assigned:
                self._fetch_once(max_wait_ms=int(max(0.0, min(remaining, self._cfg["fetch.max.wait.ms"] / 1000.0)) * 1000))
                records = self._drain_buffer()
                if records:
                    return records
            elif remaining > 0:
                # Waiting for the coordinator to give this member partitions.
                time.sleep(min(remaining, 0.05))
            if time.monotonic() >= deadline:
                return []

    def wakeup(self) -> None:
        """Make a blocking poll() raise WakeupError (safe from any thread)."""
        self._woken.set()

    def close(self, timeout: float | None = None) -> None:
        """Commit (auto commit), leave the group and release resources."""
        if self._closed:
            return
        try:
            if self._subscription:
                self._leave_group()
        finally:
            self._closed = True
            self._heartbeat_stop.set()
            self._heartbeat_now.set()
            if self._heartbeat_thread is not None:
                self._heartbeat_thread.join(timeout=5)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._conn.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _check_partition(self, tp: TopicPartition) -> None:
        info = self._conn.topic(tp.topic)
        if tp.partition not in info.partitions:
            raise error_for_code(
                3, f"partition {tp.partition} of topic {tp.topic!r} does not exist (it has {len(info.partitions)})"
            )

    def _owned(self, partition: TopicPartition) -> TopicPartition:
        tp = TopicPartition(*partition)
        if tp not in self._assigned:
            raise IllegalStateError(f"{tp} is not assigned to this consumer")
        return tp

    def _targets(self, partitions: Iterable[TopicPartition] | None) -> list[TopicPartition]:
        return list(self._assigned) if partitions is None else [self._owned(tp) for tp in partitions]

    def _set_assignment(self, tps: list[TopicPartition]) -> None:
        keep = set(tps)
        for tp in list(self._positions):
            if tp not in keep:
                self._positions.pop(tp, None)
        for tp in list(self._buffer):
            if tp not in keep:
                self._buffer.pop(tp, None)
        for tp in list(self._pending_reset):
            if tp not in keep:
                self._pending_reset.pop(tp, None)
        self._assigned = sorted(keep)

    def _reset_spec(self) -> int | None:
        return {"earliest": -2, "latest": -1, "none": None}[self._cfg["auto.offset.reset"]]

    def _resolve_positions(self, tps: Iterable[TopicPartition]) -> None:
        """Give every partition in ``tps`` a position (committed offset or reset policy)."""
        missing = [tp for tp in tps if tp not in self._positions]
        if not missing:
            return
        if self._group_id:
            need_committed = [tp for tp in missing if tp not in self._pending_reset]
            if need_committed:
                for tp, offset in self.committed(need_committed).items():
                    if offset is not None:
                        self._positions[tp] = offset
        lookups: dict[TopicPartition, int] = {}
        for tp in missing:
            if tp in self._positions:
                continue
            spec = self._pending_reset.get(tp, self._reset_spec())
            if spec is None:
                raise OffsetOutOfRangeError(
                    f"no committed offset for {tp} and auto.offset.reset is none; seek() to a position first"
                )
            lookups[tp] = spec
        for tp, offset in self._list_offsets(lookups).items():
            self._positions[tp] = offset
            self._pending_reset.pop(tp, None)

    def _list_offsets(self, specs: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        by_leader: dict[str, list[TopicPartition]] = {}
        for tp in specs:
            _, address, _ = self._conn.leader(tp)
            by_leader.setdefault(address, []).append(tp)
        for address, tps in by_leader.items():
            request = shoal_pb2.ListOffsetsRequest(
                partitions=[
                    shoal_pb2.ListOffsetsPartition(topic=tp.topic, partition=tp.partition, timestamp=specs[tp]) for tp in tps
                ]
            )
            try:
                response = self._conn.call(address, "ListOffsets", request)
            except ShoalError as exc:
                if exc.retriable:
                    self._conn.invalidate()
                raise
            for result in response.results:
                tp = TopicPartition(result.topic, result.partition)
                if result.error_code:
                    if result.error_code in LEADER_MOVED_CODES:
                        self._conn.invalidate(tp.topic)
                    raise error_for_code(result.error_code, result.error_message or f"ListOffsets for {tp} failed")
                out[tp] = result.offset
        return out

    def _drain_buffer(self) -> list[ConsumerRecord]:
        limit = self._cfg["max.poll.records"]
        out: list[ConsumerRecord] = []
        for tp in self._assigned:
            queue = self._buffer.get(tp)
            while queue and len(out) < limit:
                record = queue.popleft()
                out.append(record)
                self._positions[tp] = record.offset + 1
            if len(out) >= limit:
                break
        if self._paused_error is not None and not out:
            error, self._paused_error = self._paused_error, None
            raise error
        return out

    def _fetch_once(self, max_wait_ms: int) -> None:
        wanted = [tp for tp in self._assigned if not self._buffer.get(tp)]
        if not wanted:
            return
        try:
            self._resolve_positions(wanted)
        except ShoalError as exc:
            if not exc.retriable:
                raise
            time.sleep(self._cfg["retry.backoff.ms"] / 1000.0)
            return
        by_leader: dict[str, list[TopicPartition]] = {}
        for tp in wanted:
            try:
                _, address, _ = self._conn.leader(tp)
            except ShoalError as exc:
                if not exc.retriable:
                    raise
                continue
            by_leader.setdefault(address, []).append(tp)
        if not by_leader:
            time.sleep(self._cfg["retry.backoff.ms"] / 1000.0)
            return
        futures = [self._pool.submit(self._fetch_from, address, tps, max_wait_ms) for address, tps in by_leader.items()]
        for future in futures:
            future.result()

    def _fetch_from(self, address: str, tps: list[TopicPartition], max_wait_ms: int) -> None:
        request = shoal_pb2.FetchRequest(
            max_wait_ms=max_wait_ms,
            min_bytes=self._cfg["fetch.min.bytes"],
            max_bytes=self._cfg["fetch.max.bytes"],
            partitions=[
                shoal_pb2.FetchPartition(
                    topic=tp.topic,
                    partition=tp.partition,
                    fetch_offset=self._positions[tp],
                    partition_max_bytes=self._cfg["max.partition.fetch.bytes"],
                    current_leader_epoch=-1,
                )
                for tp in tps
                if tp in self._positions
            ],
        )
        try:
            response = self._conn.call(address, "Fetch", request, self._cfg["request.timeout.ms"] + max_wait_ms)
        except ShoalError as exc:
            if not exc.retriable:
                raise
            self._conn.invalidate()
            return
        for data in response.partitions:
            tp = TopicPartition(data.topic, data.partition)
            if tp not in self._positions:
                continue
            if data.error_code == 1:  # OFFSET_OUT_OF_RANGE
                spec = self._reset_spec()
                if spec is None:
                    self._paused_error = OffsetOutOfRangeError(
                        f"fetch offset {self._positions[tp]} is out of range for {tp} and auto.offset.reset is none"
                    )
                    continue
                self._positions.pop(tp, None)
                self._pending_reset[tp] = spec
                continue
            if data.error_code:
                if data.error_code in LEADER_MOVED_CODES:
                    if data.HasField("current_leader") and data.current_leader.leader_id >= 0:
                        self._conn.note_leader(tp, data.current_leader.leader_id, data.current_leader.leader_epoch)
                    else:
                        self._conn.invalidate(tp.topic)
                    continue
                error = error_for_code(data.error_code, data.error_message or f"fetch from {tp} failed")
                if error.retriable:
                    continue
                self._paused_error = error
                continue
            self._buffer_records(tp, data.records)

    def _buffer_records(self, tp: TopicPartition, records: bytes) -> None:
        if not records:
            return
        position = self._positions[tp]
        queue = self._buffer.setdefault(tp, deque())
        # The default deserializers return the bytes as they are: skip the per-record calls then.
        key_deserializer = None if self._key_deserializer is default_deserializer else self._key_deserializer
        value_deserializer = None if self._value_deserializer is default_deserializer else self._value_deserializer
        topic, partition = tp
        for header, decoded in decode_batches(records, check_crcs=self._cfg["check.crcs"]):
            if header.last_offset < position:
                continue
            if decoded is None:
                self._paused_error = CorruptRecordError(
                    f"record batch at offset {header.base_offset} of {tp} fails its CRC check"
                )
                return
            leader_epoch, timestamp_type = header.leader_epoch, header.timestamp_type
            for record in decoded:
                if record.offset < position:
                    continue
                key, value = record.key, record.value
                try:
                    if key_deserializer is not None:
                        key = deserialize(key_deserializer, key, tp, record.offset, "key")
                    if value_deserializer is not None:
                        value = deserialize(value_deserializer, value, tp, record.offset, "value")
                except RecordDeserializationError as exc:
                    # Records before the bad one are returned first; the error
                    # comes on the next poll and the position stays on the bad
                    # record, so the application may seek past it.
                    self._paused_error = exc
                    return
                queue.append(
                    ConsumerRecord._decoded(
                        topic, partition, record.offset, record.timestamp_ms, key, value,
                        list(record.headers), None, leader_epoch, None, timestamp_type,
                    )
                )

    # ------------------------------------------------------------ group internals

    def _maybe_auto_commit(self) -> None:
        if not (self._group_id and self._subscription and self._cfg["enable.auto.commit"]):
            return
        if now_ms() - self._last_auto_commit_ms < self._cfg["auto.commit.interval.ms"]:
            return
        self._last_auto_commit_ms = now_ms()
        try:
            self.commit_sync()
        except ShoalError as exc:
            if not exc.retriable and exc.code not in (22, 25, 110, 113):
                raise

    def _reconcile(self) -> None:
        """Apply the coordinator's target assignment on the application thread."""
        with self._group_lock:
            target, lost = self._target, self._lost
            self._target, self._lost = None, False
        if lost and self._assigned:
            dropped = list(self._assigned)
            self._set_assignment([])
            if self._on_revoke:
                self._on_revoke(dropped)
        if target is None:
            return
        current, wanted = set(self._assigned), set(target)
        revoked = sorted(current - wanted)
        added = sorted(wanted - current)
        if revoked:
            if self._cfg["enable.auto.commit"]:
                offsets = {tp: self._positions[tp] for tp in revoked if tp in self._positions}
                if offsets:
                    try:
                        self.commit_sync(offsets)
                    except ShoalError:
                        pass  # KIP-848: a failed commit on revocation does not block the rebalance
            if self._on_revoke:
                self._on_revoke(revoked)
            self._set_assignment(sorted(current - set(revoked)))
        if added:
            self._assigned = sorted(set(self._assigned) | set(added))
            if self._on_assign:
                self._on_assign(added)
        if revoked or added:
            self._heartbeat_now.set()

    def _leave_group(self) -> None:
        if self._cfg["enable.auto.commit"] and self._assigned:
            try:
                self.commit_sync()
            except ShoalError:
                pass
        self._heartbeat_stop.set()
        self._heartbeat_now.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
            self._heartbeat_thread = None
        with self._group_lock:
            epoch = self._member_epoch
        if epoch > 0 and self._group_id:
            request = shoal_pb2.ConsumerGroupHeartbeatRequest(
                group_id=self._group_id, member_id=self._member_id, member_epoch=-1, client_id=self._cfg["client.id"]
            )
            try:
                self._conn.call_coordinator(self._group_id, "ConsumerGroupHeartbeat", request, timeout_ms=5000)
            except ShoalError:
                pass  # the coordinator drops us after the session timeout anyway
        with self._group_lock:
            self._member_epoch = 0
            self._member_id = str(uuid.uuid4())
        if self._on_revoke and self._assigned:
            self._on_revoke(list(self._assigned))
        self._subscription = []
        self._set_assignment([])

    def _run_heartbeat(self) -> None:
        backoff = Backoff(self._cfg["retry.backoff.ms"], self._cfg["retry.backoff.max.ms"])
        while not self._heartbeat_stop.is_set():
            with self._group_lock:
                epoch = self._member_epoch
                member_id = self._member_id
            owned = self._assigned
            by_topic: dict[str, list[int]] = {}
            for tp in owned:
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            request = shoal_pb2.ConsumerGroupHeartbeatRequest(
                group_id=self._group_id or "",
                member_id=member_id,
                member_epoch=epoch,
                subscribed_topics=shoal_pb2.SubscribedTopics(names=self._subscription),
                owned_partitions=shoal_pb2.Assignment(
                    topic_partitions=[shoal_pb2.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]
                ),
                client_id=self._cfg["client.id"],
            )
            wait_ms: float = self._heartbeat_interval_ms
            try:
                response = self._conn.call_coordinator(
                    self._group_id or "", "ConsumerGroupHeartbeat", request, timeout_ms=self._cfg["request.timeout.ms"]
                )
                if response.error_code in (25, 110):  # UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH
                    with self._group_lock:
                        self._member_epoch = 0
                        self._lost = True
                    wait_ms = 0
                elif response.error_code:
                    error = error_for_code(response.error_code, response.error_message)
                    if not error.retriable:
                        self._heartbeat_error = error
                    wait_ms = backoff.next_ms()
                else:
                    backoff.reset()
                    with self._group_lock:
                        self._member_epoch = response.member_epoch
                        if response.member_id:
                            self._member_id = response.member_id
                        if response.HasField("assignment"):
                            self._target = [
                                TopicPartition(t.topic, p)
                                for t in response.assignment.topic_partitions
                                for p in t.partitions
                            ]
                    if response.heartbeat_interval_ms > 0:
                        self._heartbeat_interval_ms = response.heartbeat_interval_ms
                        wait_ms = response.heartbeat_interval_ms
            except ShoalError as exc:
                if exc.code in COORDINATOR_MOVED_CODES:
                    self._conn.forget_coordinator(0, self._group_id or "")
                if not exc.retriable:
                    self._heartbeat_error = exc
                wait_ms = backoff.next_ms()
            self._heartbeat_now.wait(wait_ms / 1000.0)
            self._heartbeat_now.clear()
