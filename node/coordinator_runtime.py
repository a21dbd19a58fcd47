"""Hosting coordinator shards on internal-topic partitions (Kafka's CoordinatorRuntime, small).

A coordinator (group coordinator on ``__consumer_offsets``, share coordinator on
``__share_group_state``) keeps one pure shard per internal-topic partition that
this node leads. This module is the shell around those shards.

Rules
-----
1. **Leadership decides.** A shard exists only while this node leads its
   partition. A key whose partition is led elsewhere gets NOT_COORDINATOR; a
   partition led here whose shard is still loading gets
   COORDINATOR_LOAD_IN_PROGRESS. Both are retriable.
2. **Load before serving.** On becoming leader (epoch E) the runtime waits
   until the high watermark covers the log end offset (so that it loads only
   committed records, and all of them), reads every batch from the log start
   offset, decodes the records and hands them to the adapter's ``replay``.
3. **Compute, append, commit, answer.** An operation is a synchronous function
   ``op(shard) -> (records, result)``. The runtime appends the records with
   acks=-1 and ``expected_leader_epoch=E``; only after the append succeeded
   does it call the adapter's ``commit`` (the share shard replays its records
   there; the group shard already applied them) and complete the caller.
4. **One round at a time per shard, with group commit.** Operations queued
   together are computed one after the other and their records go out in one
   append. An operation whose ``conflict_keys`` intersect those of an earlier
   operation in the round waits for the next round: the share shard computes
   records from state that only changes on commit, so two writes to one key
   must not be computed before the first is committed.
5. **A failed append poisons the shard.** The log may or may not hold the
   records, so the in-memory shard may differ from the log: every operation of
   the round fails (NOT_COORDINATOR when leadership moved, else the append's
   own retriable code), the shard is unloaded, and it is loaded again from the
   log if this node still leads the partition.
6. **Bounds.** At most ``queue_max`` operations wait per shard (beyond it:
   COORDINATOR_NOT_AVAILABLE, retriable), at most ``round_operations_max``
   operations and about ``round_bytes_max`` bytes of records per append.
7. On leadership loss the shard is unloaded and pending operations fail with
   NOT_COORDINATOR, including those of a round whose append is in flight:
   that append's outcome is unknown, and the callers retry at the new
   coordinator (see ``_fail_queue``).

Theory of operation
-------------------
Each loaded partition has a ``_Hosted`` record with the shard, its leader
epoch, a deque of pending operations and one worker task. ``schedule`` puts an
operation with a future on the deque and wakes the worker. Leadership changes
arrive on the event loop from the data plane's listener; a gain starts a load
task, a loss cancels the worker and fails every waiting future. Everything runs
on the event loop, so no locks are needed: the only suspension points are the
append and the load's read/wait.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from coordinator.errors import ErrorCode, OperatingError
from node.interfaces import LeadershipChange, LocalPartitions, monotonic_ms, wall_ms
from proto import batch as batch_codec

log = logging.getLogger("node.coordinator_runtime")

S = TypeVar("S")
R = TypeVar("R")

#: Codes of an append failure that mean this node no longer leads the partition.
_LEADERSHIP_LOST_CODES = frozenset(
    {ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
)


class ShardAdapter(Protocol[S]):
    """How the runtime builds, loads and commits one kind of shard."""

    def new_shard(self, partition: int) -> S: ...

    def replay(self, shard: S, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one record read from the log while loading."""
        ...

    def encode(self, record: Any) -> tuple[bytes | None, bytes | None]:
        """A record an operation returned → (key, value) of a log record."""
        ...

    def commit(self, shard: S, records: Sequence[Any], first_offset: int) -> None:
        """Records of one operation are durable at offsets first_offset, first_offset+1, ..."""
        ...


@dataclass
class _Operation:
    op: Callable[[Any], tuple[list[Any], Any]]
    conflict_keys: frozenset
    future: asyncio.Future


@dataclass
class _Hosted(Generic[S]):
    partition: int
    leader_epoch: int
    shard: S | None = None
    loaded: bool = False
    queue: collections.deque = field(default_factory=collections.deque)
    #: Operations of the round whose append is in flight (out of the queue, not yet answered).
    in_flight: list[_Operation] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class CoordinatorRuntime(Generic[S]):
    """The shards of one internal topic that this node leads. See the module docstring."""

    def __init__(
        self,
        name: str,
        local: LocalPartitions,
        topic: str,
        num_partitions: int,
        adapter: ShardAdapter[S],
        *,
        queue_max: int = 4096,
        round_operations_max: int = 512,
        round_bytes_max: int = 512 * 1024,
        append_timeout_ms: int = 5000,
        load_wait_ms: int = 30_000,
        on_loaded: Callable[[int, S], None] | None = None,
        on_unloaded: Callable[[int], None] | None = None,
        on_committed: Callable[[int, S], None] | None = None,
    ) -> None:
        self.name = name
        self._local = local
        self.topic = topic
        self.num_partitions = num_partitions
        self._adapter = adapter
        self._queue_max = queue_max
        self._round_operations_max = round_operations_max
        self._round_bytes_max = round_bytes_max
        self._append_timeout_ms = append_timeout_ms
        self._load_wait_ms = load_wait_ms
        self._on_loaded = on_loaded
        self._on_unloaded = on_unloaded
        self._on_committed = on_committed
        self._hosted: dict[int, _Hosted[S]] = {}
        self._closed = False
        # Plain counters for the metrics module.
        #: partition → milliseconds the last load took.
        self.load_time_ms: dict[int, int] = {}
        self.loads_total = 0
        self.operations_total = 0
        self.operations_failed_total = 0
        self.appends_total = 0
        self.append_failures_total = 0
        self.records_appended_total = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Listen for leadership and load the partitions this node already leads."""
        self._local.add_leadership_listener(self._on_leadership)
        for partition in range(self.num_partitions):
            try:
                if self._local.is_leader(self.topic, partition):
                    self._begin_load(partition, self._local.leader_epoch(self.topic, partition))
            except OperatingError:
                continue

    async def stop(self) -> None:
        self._closed = True
        for partition in list(self._hosted):
            self._unload(partition, "the node is shutting down")

    def _on_leadership(self, change: LeadershipChange) -> None:
        if self._closed or change.topic != self.topic:
            return
        hosted = self._hosted.get(change.partition)
        if change.is_leader:
            if hosted is not None and hosted.leader_epoch == change.leader_epoch:
                return
            if hosted is not None:
                self._unload(change.partition, f"leader epoch moved to {change.leader_epoch}")
            self._begin_load(change.partition, change.leader_epoch)
        elif hosted is not None:
            self._unload(change.partition, "this node no longer leads the partition")

    # ------------------------------------------------------------------ queries

    def partition_for(self, key: str) -> int:
        from node.interfaces import coordinator_partition

        return coordinator_partition(key, self.num_partitions)

    def loaded_partitions(self) -> list[int]:
        return sorted(p for p, h in self._hosted.items() if h.loaded)

    def shard(self, partition: int) -> S:
        """The loaded shard of ``partition`` (read-only use between operations)."""
        return self._require(partition).shard  # type: ignore[return-value]

    def leader_epoch(self, partition: int) -> int:
        return self._require(partition).leader_epoch

    def is_loaded(self, partition: int) -> bool:
        hosted = self._hosted.get(partition)
        return hosted is not None and hosted.loaded

    def _require(self, partition: int) -> _Hosted[S]:
        hosted = self._hosted.get(partition)
        if hosted is None:
            raise OperatingError(
                ErrorCode.NOT_COORDINATOR,
                f"this node does not lead {self.topic}-{partition}; find the coordinator again and retry",
            )
        if not hosted.loaded:
            raise OperatingError(
                ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                f"the {self.name} for {self.topic}-{partition} is still loading; retry shortly",
            )
        return hosted

    # ------------------------------------------------------------------ operations

    async def schedule(
        self,
        partition: int,
        op: Callable[[S], tuple[list[Any], R]],
        conflict_keys: frozenset = frozenset(),
    ) -> R:
        """Run ``op`` on the shard of ``partition``; answer once its records are durable."""
        hosted = self._require(partition)
        if len(hosted.queue) >= self._queue_max:
            raise OperatingError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE,
                f"the {self.name} for {self.topic}-{partition} has {self._queue_max} operations queued; "
                "retry with backoff",
            )
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        hosted.queue.append(_Operation(op, conflict_keys, future))
        hosted.wakeup.set()
        return await future

    async def _serve(self, hosted: _Hosted[S]) -> None:
        while self._hosted.get(hosted.partition) is hosted:
            if not hosted.queue:
                await hosted.wakeup.wait()
                hosted.wakeup.clear()
                continue
            await self._round(hosted)

    async def _round(self, hosted: _Hosted[S]) -> None:
        taken: list[tuple[_Operation, list[Any], Any]] = []
        seen_keys: set = set()
        encoded: list[tuple[bytes | None, bytes | None, tuple, int]] = []
        size_bytes = 0
        now_wall_ms = wall_ms()
        while hosted.queue and len(taken) < self._round_operations_max and size_bytes < self._round_bytes_max:
            operation = hosted.queue[0]
            if operation.conflict_keys & seen_keys:
                break
            hosted.queue.popleft()
            if operation.future.done():  # the caller gave up (cancelled)
                continue
            try:
                records, result = operation.op(hosted.shard)
            except OperatingError as error:
                self.operations_failed_total += 1
                operation.future.set_exception(error)
                continue
            except BaseException as error:  # a programmer error: report it to the caller, keep serving
                log.exception("%s operation crashed on %s-%s", self.name, self.topic, hosted.partition)
                operation.future.set_exception(error)
                continue
            seen_keys |= operation.conflict_keys
            for record in records:
                key, value = self._adapter.encode(record)
                encoded.append((key, value, (), now_wall_ms))
                size_bytes += len(key or b"") + len(value or b"") + 32
            taken.append((operation, records, result))
        if not taken:
            return
        first_offset = -1
        if encoded:
            batches = self._build_batches(encoded)
            self.appends_total += 1
            # Rule 7: an unload while the append is in flight cancels this task;
            # the unload then fails these operations (they left the queue).
            hosted.in_flight = [operation for operation, _, _ in taken]
            try:
                appended = await self._local.append(
                    self.topic,
                    hosted.partition,
                    batches,
                    acks=-1,
                    timeout_ms=self._append_timeout_ms,
                    expected_leader_epoch=hosted.leader_epoch,
                )
            except OperatingError as error:
                hosted.in_flight = []
                self.append_failures_total += 1
                code = ErrorCode.NOT_COORDINATOR if error.code in _LEADERSHIP_LOST_CODES else error.code
                failure = OperatingError(
                    code if OperatingError(code, "").retriable else ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    f"the {self.name} could not write to {self.topic}-{hosted.partition}: {error.message}",
                )
                for operation, _, _ in taken:
                    if not operation.future.done():
                        operation.future.set_exception(failure)
                # Rule 5: the log may hold the records or not; reload from it.
                self._reload(hosted, f"an append failed ({error.code.name})")
                return
            hosted.in_flight = []
            first_offset = appended.base_offset
            assert appended.last_offset - appended.base_offset + 1 == len(encoded), (appended, len(encoded))
            self.records_appended_total += len(encoded)
        offset = first_offset
        for operation, records, result in taken:
            if records:
                self._adapter.commit(hosted.shard, records, offset)
                offset += len(records)
            self.operations_total += 1
            if not operation.future.done():
                operation.future.set_result(result)
        if self._on_committed is not None:
            self._on_committed(hosted.partition, hosted.shard)  # type: ignore[arg-type]

    def _build_batches(self, encoded: list[tuple[bytes | None, bytes | None, tuple, int]]) -> bytes:
        """One or more batches, each well below max.message.bytes (1 MiB by default)."""
        parts: list[bytes] = []
        chunk: list = []
        chunk_bytes = 0
        for item in encoded:
            item_bytes = len(item[0] or b"") + len(item[1] or b"") + 32
            if chunk and chunk_bytes + item_bytes > 256 * 1024:
                parts.append(batch_codec.build_batch(chunk))
                chunk, chunk_bytes = [], 0
            chunk.append(item)
            chunk_bytes += item_bytes
        if chunk:
            parts.append(batch_codec.build_batch(chunk))
        return b"".join(parts)

    # ------------------------------------------------------------------ load / unload

    def _begin_load(self, partition: int, leader_epoch: int) -> None:
        hosted: _Hosted[S] = _Hosted(partition=partition, leader_epoch=leader_epoch)
        self._hosted[partition] = hosted
        hosted.task = asyncio.get_running_loop().create_task(self._load_and_serve(hosted))

    async def _load_and_serve(self, hosted: _Hosted[S]) -> None:
        started_ms = monotonic_ms()
        try:
            shard = await self._load(hosted)
        except asyncio.CancelledError:
            raise
        except OperatingError as error:
            log.warning("%s: loading %s-%s failed: %s", self.name, self.topic, hosted.partition, error)
            if self._hosted.get(hosted.partition) is hosted:
                self._hosted.pop(hosted.partition, None)
                self._fail_queue(hosted, error.message)
                self._retry_load_later(hosted)
            return
        if self._hosted.get(hosted.partition) is not hosted:
            return
        hosted.shard = shard
        hosted.loaded = True
        self.loads_total += 1
        self.load_time_ms[hosted.partition] = monotonic_ms() - started_ms
        log.info(
            "%s: loaded %s-%s at leader epoch %s in %s ms",
            self.name, self.topic, hosted.partition, hosted.leader_epoch, self.load_time_ms[hosted.partition],
        )
        if self._on_loaded is not None:
            self._on_loaded(hosted.partition, shard)
        await self._serve(hosted)

    async def _load(self, hosted: _Hosted[S]) -> S:
        topic, partition = self.topic, hosted.partition
        deadline_ms = monotonic_ms() + self._load_wait_ms
        # Rule 2: the new leader's high watermark may trail its log end offset
        # until the followers fetch in the new epoch; records below the log end
        # offset were written by earlier leaders and are committed once the high
        # watermark reaches them. Wait for that, so the shard holds them all.
        while True:
            end_offset = self._local.log_end_offset(topic, partition)
            if self._local.high_watermark(topic, partition) >= end_offset:
                break
            remaining_ms = deadline_ms - monotonic_ms()
            if remaining_ms <= 0 or not self._local.is_leader(topic, partition):
                raise OperatingError(
                    ErrorCode.COORDINATOR_LOAD_IN_PROGRESS,
                    f"{topic}-{partition}: high watermark did not reach the log end offset {end_offset}",
                )
            await self._local.wait_for_high_watermark(topic, partition, end_offset - 1, min(remaining_ms, 500))
        shard = self._adapter.new_shard(partition)
        data = self._local.read_all_committed(topic, partition, self._local.log_start_offset(topic, partition))
        view = memoryview(data)
        for position, header in batch_codec.iter_batches(view):
            for record in batch_codec.decode_records(view[position : position + header.size_bytes]):
                self._adapter.replay(shard, record.offset, record.key, record.value)
        return shard

    def _retry_load_later(self, hosted: _Hosted[S]) -> None:
        async def retry() -> None:
            await asyncio.sleep(0.5)
            if self._closed or hosted.partition in self._hosted:
                return
            try:
                if self._local.is_leader(self.topic, hosted.partition):
                    epoch = self._local.leader_epoch(self.topic, hosted.partition)
                    self._begin_load(hosted.partition, epoch)
            except OperatingError:
                return

        asyncio.get_running_loop().create_task(retry())

    def _reload(self, hosted: _Hosted[S], reason: str) -> None:
        partition = hosted.partition
        self._unload(partition, reason)
        if self._closed:
            return
        try:
            if self._local.is_leader(self.topic, partition):
                self._begin_load(partition, self._local.leader_epoch(self.topic, partition))
        except OperatingError:
            pass

    def _unload(self, partition: int, reason: str) -> None:
        hosted = self._hosted.pop(partition, None)
        if hosted is None:
            return
        log.info("%s: unloading %s-%s: %s", self.name, self.topic, partition, reason)
        if hosted.task is not None and hosted.task is not asyncio.current_task():
            hosted.task.cancel()
        self._fail_queue(hosted, reason)
        if hosted.loaded and self._on_unloaded is not None:
            self._on_unloaded(partition)

    def _fail_queue(self, hosted: _Hosted[S], reason: str) -> None:
        """Fail the queued operations and those whose append was in flight.

        A race this closes (rule 7)::

            1. A round takes operations off the queue and awaits their append.
            2. Leadership moves; ``_unload`` cancels the worker inside that await.
            3. The cancelled round completes nothing, and the operations are no
               longer in the queue: without this, their callers would wait
               forever (for the share coordinator, the share partition's single
               writer, and with it every later write of that share partition).
            4. Whether the append landed is unknown; NOT_COORDINATOR makes the
               callers retry at the new coordinator, which replays the log (share
               writes are idempotent per offset, see share_persister.py).
        """
        error = OperatingError(
            ErrorCode.NOT_COORDINATOR,
            f"the {self.name} for {self.topic}-{hosted.partition} moved ({reason}); find it again and retry",
        )
        in_flight, hosted.in_flight = hosted.in_flight, []
        for operation in in_flight:
            if not operation.future.done():
                operation.future.set_exception(error)
        while hosted.queue:
            operation = hosted.queue.popleft()
            if not operation.future.done():
                operation.future.set_exception(error)

    # ------------------------------------------------------------------ maintenance

    async def delete_records_before(self, partition: int, offset: int) -> None:
        """Prune the partition's log below ``offset`` (no-op when not ahead of the log start)."""
        hosted = self._require(partition)
        if offset > self._local.log_start_offset(self.topic, hosted.partition):
            await self._local.delete_records_before(self.topic, hosted.partition, offset)
