"""The share coordinator: durable share-partition state on ``__share_group_state``.

Rules
-----
* A share partition (group, topic, partition) is coordinated by the leader of
  ``__share_group_state`` partition ``coordinator_partition("group:topic:p")``.
  The pure ``coordinator.share_state.ShareCoordinatorShard`` decides; this
  module hosts one shard per led partition with ``CoordinatorRuntime``: every
  Read (which may persist a newer leader epoch), Write, Initialize and Delete
  is computed, appended with acks=-1, replayed, and only then answered.
* One operation at a time per key (the runtime's ``conflict_keys``): a
  snapshot replaces a key's state wholesale, so it must be computed after the
  previous write to that key was replayed. Writes for different keys of one
  WriteShareGroupState request are computed together and go out in one append.
* Fencing comes from the shard: FENCED_LEADER_EPOCH for an older leader,
  FENCED_STATE_EPOCH for a write from before an Initialize (reset).
* Limits from the shard (RECORD_LIST_TOO_LARGE, POLICY_VIOLATION) are
  reported with gRPC status RESOURCE_EXHAUSTED when request-level.
* Maintenance, every ``share.coordinator.state.topic.prune.interval.ms``: keys
  whose latest snapshot is older than the previous tick's high watermark get a
  fresh snapshot ("cold" keys; Kafka's cold partition snapshot), then the log
  is pruned below ``prunable_before()`` so recovery replays a bounded tail.
  Cold keys are snapshotted only while the log holds redundant records above
  the prune point; otherwise a snapshot frees nothing, and an idle group's
  keys would be rewritten on every tick forever.

Settings (node settings, Kafka's names): ``share.coordinator.snapshot.update.
records.per.snapshot`` (500), ``share.coordinator.state.topic.prune.interval.ms``
(30000; Kafka 300000), ``share.coordinator.state.topic.num.partitions``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping, Sequence

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_state import (
    PersistedBatch,
    ReadResult,
    ShareCoordinatorShard,
    ShareKey,
    ShareStateSettings,
    ShareSummary,
    decode_record,
    encode_record,
    record_key_bytes,
)
from node.coordinator_runtime import CoordinatorRuntime
from node.interfaces import SHARE_STATE_TOPIC, LocalPartitions, monotonic_ms, share_state_key
from node.metrics import WRITE_BUCKETS_S, LatencyRecorder
from proto import shoal_pb2

log = logging.getLogger("node.share_coordinator")

PRUNE_INTERVAL_MS_DEFAULT = 30_000
#: Keys re-snapshotted per partition and maintenance tick (bounds the tick's work).
COLD_SNAPSHOTS_PER_TICK_MAX = 1000


def _setting_int(settings: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = settings.get(name, default)
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise OperatingError(ErrorCode.INVALID_CONFIG, f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise OperatingError(ErrorCode.INVALID_CONFIG, f"{name} must be between {low} and {high}, got {value}")
    return value


class _ShareShardAdapter:
    def __init__(self, settings: ShareStateSettings) -> None:
        self._settings = settings

    def new_shard(self, partition: int) -> ShareCoordinatorShard:
        return ShareCoordinatorShard(self._settings)

    def replay(self, shard: ShareCoordinatorShard, offset: int, key: bytes | None, value: bytes | None) -> None:
        assert value is not None, f"share state record at offset {offset} has no value"
        shard.replay(decode_record(value), offset)

    def encode(self, record: Any) -> tuple[bytes | None, bytes | None]:
        return record_key_bytes(record.key), encode_record(record)

    def commit(self, shard: ShareCoordinatorShard, records: Sequence[Any], first_offset: int) -> None:
        for index, record in enumerate(records):
            shard.replay(record, first_offset + index)


def _key_text(key: ShareKey) -> str:
    return share_state_key(key.group_id, key.topic, key.partition)


def batches_from_proto(batches: Sequence[shoal_pb2.PersistedStateBatch]) -> list[PersistedBatch]:
    return [PersistedBatch(b.first_offset, b.last_offset, b.state, b.delivery_count) for b in batches]


def batches_to_proto(batches: Sequence[PersistedBatch]) -> list[shoal_pb2.PersistedStateBatch]:
    return [
        shoal_pb2.PersistedStateBatch(
            first_offset=b.first_offset, last_offset=b.last_offset, state=b.state, delivery_count=b.delivery_count
        )
        for b in batches
    ]


class ShareCoordinator:
    """Hosts the share coordinator shards of the ``__share_group_state`` partitions led here."""

    def __init__(self, local: LocalPartitions, settings: Mapping[str, Any]) -> None:
        self._local = local
        num_partitions = _setting_int(settings, "share.coordinator.state.topic.num.partitions", 8, 1, 1000)
        per_snapshot = _setting_int(
            settings, "share.coordinator.snapshot.update.records.per.snapshot", 500, 0, 1_000_000
        )
        self.prune_interval_ms = _setting_int(
            settings, "share.coordinator.state.topic.prune.interval.ms", PRUNE_INTERVAL_MS_DEFAULT, 100, 86_400_000
        )
        self.runtime: CoordinatorRuntime[ShareCoordinatorShard] = CoordinatorRuntime(
            "share coordinator",
            local,
            SHARE_STATE_TOPIC,
            num_partitions,
            _ShareShardAdapter(ShareStateSettings(snapshot_update_records_per_snapshot=per_snapshot)),
        )
        self._maintenance_task: asyncio.Task | None = None
        #: partition → high watermark at the previous maintenance tick.
        self._cold_marks: dict[int, int] = {}
        # Counters for metrics.
        self.writes_total = 0
        self.write_failures_total = 0
        #: Successful writes, from scheduling until durable (acks=-1 on the state partition).
        self.write_latency = LatencyRecorder(WRITE_BUCKETS_S)
        self.cold_snapshots_total = 0
        self.last_pruned_offset: dict[int, int] = {}

    def start(self) -> None:
        self.runtime.start()
        self._maintenance_task = asyncio.get_running_loop().create_task(self._maintain())

    async def stop(self) -> None:
        if self._maintenance_task is not None:
            self._maintenance_task.cancel()
        await self.runtime.stop()

    # ------------------------------------------------------------------ operations

    def _partition(self, key: ShareKey) -> int:
        return self.runtime.partition_for(_key_text(key))

    async def read(self, key: ShareKey, leader_epoch: int) -> ReadResult:
        def op(shard: ShareCoordinatorShard) -> tuple[list, ReadResult]:
            result, records = shard.read(key, leader_epoch)
            return records, result

        return await self.runtime.schedule(self._partition(key), op, frozenset({key}))

    async def write(
        self,
        key: ShareKey,
        state_epoch: int,
        leader_epoch: int,
        start_offset: int,
        delivery_complete_count: int,
        batches: Sequence[PersistedBatch],
    ) -> None:
        def op(shard: ShareCoordinatorShard) -> tuple[list, None]:
            return shard.write(key, state_epoch, leader_epoch, start_offset, delivery_complete_count, batches), None

        self.writes_total += 1
        started_ms = monotonic_ms()
        try:
            await self.runtime.schedule(self._partition(key), op, frozenset({key}))
        except OperatingError:
            self.write_failures_total += 1
            raise
        self.write_latency.observe_ms(monotonic_ms() - started_ms)

    async def initialize(self, key: ShareKey, state_epoch: int, start_offset: int) -> None:
        def op(shard: ShareCoordinatorShard) -> tuple[list, None]:
            return shard.initialize(key, state_epoch, start_offset), None

        await self.runtime.schedule(self._partition(key), op, frozenset({key}))

    async def delete(self, key: ShareKey) -> None:
        def op(shard: ShareCoordinatorShard) -> tuple[list, None]:
            return shard.delete(key), None

        await self.runtime.schedule(self._partition(key), op, frozenset({key}))

    def summary(self, key: ShareKey) -> ShareSummary:
        """A pure query on the loaded shard (state changes only between operations)."""
        return self.runtime.shard(self._partition(key)).read_summary(key)

    # ------------------------------------------------------------------ RPCs

    async def ReadShareGroupState(self, request: shoal_pb2.ReadShareGroupStateRequest, context) -> Any:
        key = ShareKey(request.group_id, request.topic, request.partition)
        result = await self.read(key, request.leader_epoch)
        return shoal_pb2.ReadShareGroupStateResponse(
            state_epoch=result.state_epoch,
            start_offset=result.start_offset,
            delivery_complete_count=result.delivery_complete_count,
            batches=batches_to_proto(result.batches),
            leader_epoch=result.leader_epoch,
        )

    async def WriteShareGroupState(self, request: shoal_pb2.WriteShareGroupStateRequest, context) -> Any:
        async def one(write: shoal_pb2.ShareStateWrite) -> shoal_pb2.ShareStateResult:
            result = shoal_pb2.ShareStateResult(group_id=write.group_id, topic=write.topic, partition=write.partition)
            try:
                await self.write(
                    ShareKey(write.group_id, write.topic, write.partition),
                    write.state_epoch,
                    write.leader_epoch,
                    write.start_offset,
                    write.delivery_complete_count,
                    batches_from_proto(write.batches),
                )
            except OperatingError as error:
                result.error_code = int(error.code)
                result.error_message = error.message
            return result

        results = await asyncio.gather(*(one(write) for write in request.writes))
        return shoal_pb2.WriteShareGroupStateResponse(results=results)

    async def InitializeShareGroupState(self, request: shoal_pb2.InitializeShareGroupStateRequest, context) -> Any:
        await self.initialize(
            ShareKey(request.group_id, request.topic, request.partition), request.state_epoch, request.start_offset
        )
        return shoal_pb2.ShareStateResult(group_id=request.group_id, topic=request.topic, partition=request.partition)

    async def DeleteShareGroupState(self, request: shoal_pb2.DeleteShareGroupStateRequest, context) -> Any:
        await self.delete(ShareKey(request.group_id, request.topic, request.partition))
        return shoal_pb2.ShareStateResult(group_id=request.group_id, topic=request.topic, partition=request.partition)

    async def ReadShareGroupStateSummary(self, request: shoal_pb2.ReadShareGroupStateSummaryRequest, context) -> Any:
        summaries = []
        for entry in request.keys:
            out = shoal_pb2.ShareStateSummary(group_id=entry.group_id, topic=entry.topic, partition=entry.partition)
            try:
                summary = self.summary(ShareKey(entry.group_id, entry.topic, entry.partition))
                out.start_offset = summary.start_offset
                out.state_epoch = summary.state_epoch
                out.leader_epoch = summary.leader_epoch
                out.delivery_complete_count = summary.delivery_complete_count
            except OperatingError as error:
                out.error_code = int(error.code)
                out.error_message = error.message
            summaries.append(out)
        return shoal_pb2.ReadShareGroupStateSummaryResponse(summaries=summaries)

    # ------------------------------------------------------------------ maintenance

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.prune_interval_ms / 1000)
            for partition in self.runtime.loaded_partitions():
                try:
                    await self.maintain_partition(partition)
                except OperatingError as error:
                    log.info("share state maintenance of partition %s skipped: %s", partition, error)

    async def maintain_partition(self, partition: int) -> None:
        """Snapshot cold keys, then prune the log below what recovery needs."""
        shard = self.runtime.shard(partition)
        mark = self._cold_marks.get(partition)
        if mark is not None and shard.has_redundant_records():
            cold = shard.keys_with_snapshot_before(mark, COLD_SNAPSHOTS_PER_TICK_MAX)

            async def snapshot(key: ShareKey) -> None:
                def op(current: ShareCoordinatorShard) -> tuple[list, None]:
                    return current.snapshot(key), None

                await self.runtime.schedule(partition, op, frozenset({key}))

            await asyncio.gather(*(snapshot(key) for key in cold))
            self.cold_snapshots_total += len(cold)
        shard = self.runtime.shard(partition)
        prune_before = shard.prunable_before()
        await self.runtime.delete_records_before(partition, prune_before)
        self.last_pruned_offset[partition] = prune_before
        self._cold_marks[partition] = self._local.high_watermark(SHARE_STATE_TOPIC, partition)
