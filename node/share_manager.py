"""Share-partition leaders: ShareFetch and ShareAcknowledge on the topic-partition leader.

For every (share group, topic partition) that this node leads and that a
member fetched, the manager drives one pure ``coordinator.share_partition.
SharePartition`` and persists what it returns through the share coordinator.

Rules
-----
1. **Load before serving.** A share partition is created on the first
   ShareFetch. It reads its state from the share coordinator with the topic
   partition's leader epoch (which fences older leaders). Never-initialized
   state (start offset -1) starts at the group's ``share.auto.offset.reset``
   (latest = high watermark, earliest = log start offset, by_duration = first
   offset at or after now - duration) and is written with
   InitializeShareGroupState. Meanwhile requests for it wait for the load.
2. **Durable before visible.** Every change the state machine reports is
   written to the share coordinator (acks=-1 on the state partition) *before*
   the reply that depends on it: acquired records are returned only after the
   acquisition (persisted as AVAILABLE with the new delivery count) is durable,
   an acknowledgement succeeds only after its write is durable. So a delivery
   count never exceeds the limit nor goes backwards across failovers, and an
   ACCEPT that returned success is never redelivered.
3. **Writes are serialized and coalesced per share partition.** One write is
   in flight per share partition; changes that arrive meanwhile are merged
   (per-offset maximum, the coordinator's own rule, so merging is exact) and
   go out as one write. The persister also puts writes for many share
   partitions with the same coordinator node into one RPC.
4. **A failed write drops the share partition.** A write that is fenced
   (FENCED_STATE_EPOCH, FENCED_LEADER_EPOCH), finds no leader, or cannot
   complete within ``write_timeout_ms`` leaves the in-memory state ahead of
   the durable one; the share partition is dropped, every request waiting on
   it fails with a retriable error, and the next fetch loads it again. The
   durable state is always a consistent past of the dropped one.
5. **Locks expire on time, even if the write fails**: one timer per share
   partition at ``next_deadline_ms()`` (monotonic clock); expiry changes the
   state at once and then persists it (rule 4 if that fails).
6. **Share sessions** per (group, member) on this node (kip932-facts §5.2):
   epoch 0 opens (no acknowledgements allowed: INVALID_REQUEST), -1 closes and
   releases the member's records, any other epoch must match
   (SHARE_SESSION_NOT_FOUND / INVALID_SHARE_SESSION_EPOCH) and then advances.
   At most ``group.share.max.share.sessions`` sessions
   (SHARE_SESSION_LIMIT_REACHED). A session idle longer than the group's
   ``share.session.timeout.ms`` is closed and its member's records released.
7. **Leadership follows the topic partition.** Losing leadership (or a new
   leader epoch) drops the group's share partitions for it and fails waiting
   acknowledgements with NOT_LEADER_OR_FOLLOWER. A moved log start offset is
   passed to ``update_log_start_offset``.

Theory of operation
-------------------
A ShareFetch (1) validates the session and resolves (loads if needed) every
share partition it names, all at once; (2) applies piggybacked
acknowledgements in memory, per partition, each atomic, keeping the future of
each one's write; (3) acquires, in memory too: for each partition of the
session it reads whole batches from ``next_fetch_offset()`` below the high
watermark and calls ``acquire``, keeping that write's future; (4) if nothing
was acquired it parks until the high watermark of one of its partitions moves,
records of one of them become available again (release, expiry, reload), or
``max_wait_ms`` passes, then tries once more; (5) only then awaits every
future it collected, together, and answers (rule 2 holds for the answer: an
acknowledgement whose write failed reports the error, records whose
acquisition write failed are withheld and their partition gets the error).

Why (5) waits once instead of after each step: all the changes of one request
to one share partition are queued before its writer runs, so rule 3 merges
them into one state write, and the persister puts the writes of all its
partitions for one coordinator node into one RPC. A fetch that acknowledges
and acquires costs one durable round trip, not one for the acknowledgements
plus one per partition. Applying in memory first is safe because nothing is
visible before (5), a failed write drops the share partition with every
change queued behind it (rule 4), and per-offset-maximum merging makes the
combined write exactly the sum of its parts. ShareAcknowledge does the same
for several partitions.

Test-only switches
------------------
Planted bugs for the chaos suite's mutation gate (tests/chaos/test_mutations.py),
read once at import from the environment (any value but empty or "0" turns
one on); never set them outside that gate:

* ``SHOAL_BUG_NO_DURABLE_SHARE_STATE``: acknowledgements are answered without
  issuing their state write.
* ``SHOAL_BUG_STALE_ACKS``: acknowledgements are applied as if sent by the
  records' current holder under a valid lock (no holder or lock check).
* ``SHOAL_BUG_START_OFFSET_NOT_PERSISTED``: a load ignores the persisted start
  offset and starts at the log start offset.
* ``SHOAL_BUG_DELIVERY_COUNT_NOT_RAISED_AFTER_FAILOVER``: a load lowers every
  persisted non-terminal delivery count by one.

A subtle race, and why acquisition waits for its write::

    1. Member A fetches; offsets 10..19 are acquired in memory (count 3).
    2. The write "10..19 AVAILABLE count 3" is in flight.
    3. The leader crashes before the write is durable.
    4. If A had already received the records, the new leader would load
       count 2 and deliver them again with count 3: a count repeated, and with
       limit 3 one delivery too many. Waiting for the write before answering
       makes step 4 load count 3, so the next delivery carries count 4 or the
       records are archived at the limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

from coordinator.config import EffectiveShareSettings
from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_partition import (
    AcknowledgementBatch,
    AcknowledgeType,
    AcquiredRange,
    AcquireMode,
    Change,
    RecordState,
    SharePartition,
    SharePartitionSettings,
    StateBatch,
    StateWrite,
)
from coordinator.share_state import UNINITIALIZED_START_OFFSET, PersistedBatch, ShareKey, merge_batches
from node.interfaces import ClusterView, LeadershipChange, LocalPartitions, monotonic_ms, wall_ms
from node.metrics import LOAD_BUCKETS_S, LatencyRecorder
from node.share_persister import SharePersister
from proto import batch as batch_codec
from proto import shoal_pb2

log = logging.getLogger("node.share_manager")

TopicPartition = tuple[str, int]

#: Sessions' idle check period.
SESSION_SWEEP_INTERVAL_MS = 1000
#: Bytes read from one partition's log per acquisition at most.
PARTITION_READ_BYTES_MAX = 1 << 20
#: How often a used share partition compares its state epoch with the coordinator's.
STATE_EPOCH_CHECK_INTERVAL_MS = 2000
#: How long a describe waits for the share coordinator to say whether a partition it names is initialized.
DESCRIBE_LOAD_TIMEOUT_MS = 2000
#: Int32 wrap for share session epochs (Kafka's nextEpoch skips 0).
_EPOCH_MAX = 2**31 - 1
#: Codes that mean this node's view of the share partition is stale.
_FENCED_CODES = frozenset(
    {ErrorCode.FENCED_STATE_EPOCH, ErrorCode.FENCED_LEADER_EPOCH, ErrorCode.NOT_LEADER_OR_FOLLOWER}
)



def _switch(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


# Test-only switches (module docstring): deliberate bugs for the mutation gate.
BUG_NO_DURABLE_SHARE_STATE = _switch("SHOAL_BUG_NO_DURABLE_SHARE_STATE")
BUG_STALE_ACKS = _switch("SHOAL_BUG_STALE_ACKS")
BUG_START_OFFSET_NOT_PERSISTED = _switch("SHOAL_BUG_START_OFFSET_NOT_PERSISTED")
BUG_DELIVERY_COUNT_NOT_RAISED_AFTER_FAILOVER = _switch("SHOAL_BUG_DELIVERY_COUNT_NOT_RAISED_AFTER_FAILOVER")


def partition_settings(settings: EffectiveShareSettings) -> SharePartitionSettings:
    return SharePartitionSettings(
        record_lock_duration_ms=settings.record_lock_duration_ms,
        delivery_count_limit=settings.delivery_count_limit,
        partition_max_record_locks=settings.partition_max_record_locks,
        renew_acknowledge_enable=settings.renew_acknowledge_enable,
    )


def _next_epoch(epoch: int) -> int:
    return 1 if epoch >= _EPOCH_MAX else epoch + 1


@dataclass
class _PendingWrite:
    write: StateWrite
    future: asyncio.Future


class _Holder:
    """One share partition led here: the state machine plus its shell state."""

    def __init__(self, key: ShareKey, leader_epoch: int) -> None:
        self.key = key
        self.leader_epoch = leader_epoch
        self.state_epoch = 0
        self.partition: SharePartition | None = None
        self.settings: EffectiveShareSettings | None = None
        self.load_task: asyncio.Task | None = None
        self.dropped = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_deadline_ms: int | None = None
        self.pending: list[_PendingWrite] = []
        self.writer: asyncio.Task | None = None
        self.epoch_check_due_ms = monotonic_ms() + STATE_EPOCH_CHECK_INTERVAL_MS
        self.epoch_check: asyncio.Task | None = None
        #: Set (and replaced) whenever records may have become acquirable.
        self.available = asyncio.Event()
        #: Record counts of this share partition's changes (``Change.counts`` keys),
        #: read by node/metrics.py for the per-partition counters.
        self.counts: dict[str, int] = {}
        #: The start offset of the last durable state (loaded or written); the
        #: partition's own start offset runs ahead of it while a write is in flight.
        self.durable_start_offset = -1

    @property
    def topic_partition(self) -> TopicPartition:
        return (self.key.topic, self.key.partition)

    def notify(self) -> None:
        self.available.set()
        self.available = asyncio.Event()


@dataclass
class _Session:
    group_id: str
    member_id: str
    epoch: int
    partitions: set[TopicPartition] = field(default_factory=set)
    last_used_ms: int = 0


@dataclass
class _Acquired:
    records: bytes
    ranges: list[AcquiredRange]
    write: asyncio.Future | None


@dataclass
class _AckResult:
    """One partition's acknowledgements: applied in memory, answered once ``write`` is durable."""

    code: int = 0
    message: str = ""
    write: asyncio.Future | None = None


#: A share partition resolved for a request, or why it could not be.
_Resolved = _Holder | OperatingError


class ShareManager:
    """The share-partition leaders of this node. See the module docstring."""

    def __init__(
        self,
        local: LocalPartitions,
        cluster: ClusterView,
        persister: SharePersister,
        settings_for: Callable[[str], Awaitable[EffectiveShareSettings]],
        *,
        max_share_sessions: int = 2000,
        write_timeout_ms: int = 10_000,
        load_timeout_ms: int = 15_000,
    ) -> None:
        self._local = local
        self._cluster = cluster
        self._persister = persister
        self._settings_for = settings_for
        self._max_share_sessions = max_share_sessions
        self._write_timeout_ms = write_timeout_ms
        self._load_timeout_ms = load_timeout_ms
        self._holders: dict[ShareKey, _Holder] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._session_timeouts_ms: dict[str, int] = {}
        self._sweeper: asyncio.Task | None = None
        # Plain counters for the metrics module.
        self.acquired_records_total = 0
        self.acknowledged_records_total: dict[str, int] = {}
        self.lock_expirations_total = 0
        self.delivery_limit_archives_total = 0
        self.released_member_records_total = 0
        self.fetch_requests_total = 0
        self.fetch_failures_total = 0
        self.acknowledge_requests_total = 0
        self.acknowledge_failures_total = 0
        self.loads_total = 0
        self.last_load_time_ms = 0
        self.load_time = LatencyRecorder(LOAD_BUCKETS_S)
        self.state_writes_total = 0
        self.state_write_failures_total = 0
        self.state_write_latency_ms_sum = 0
        self.last_state_write_latency_ms = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._local.add_leadership_listener(self._on_leadership)
        self._local.add_log_start_listener(self._on_log_start)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_sessions())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for holder in list(self._holders.values()):
            self._drop(holder, ErrorCode.NOT_LEADER_OR_FOLLOWER, "the node is shutting down")

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def share_partition_count(self) -> int:
        return sum(1 for h in self._holders.values() if h.partition is not None)

    # ------------------------------------------------------------------ listeners

    def _on_leadership(self, change: LeadershipChange) -> None:
        for holder in list(self._holders.values()):
            if holder.topic_partition != (change.topic, change.partition):
                continue
            if not change.is_leader or change.leader_epoch != holder.leader_epoch:
                self._drop(holder, ErrorCode.NOT_LEADER_OR_FOLLOWER, "leadership of the topic partition moved")

    def _on_log_start(self, topic: str, partition: int, log_start_offset: int) -> None:
        for holder in list(self._holders.values()):
            if holder.topic_partition == (topic, partition) and holder.partition is not None:
                change = holder.partition.update_log_start_offset(log_start_offset)
                self._count(change, holder)
                self._apply(holder, change)
                holder.notify()

    # ------------------------------------------------------------------ holders

    def _drop(self, holder: _Holder, code: ErrorCode, reason: str) -> None:
        if holder.dropped:
            return
        holder.dropped = True
        if self._holders.get(holder.key) is holder:
            del self._holders[holder.key]
        log.info("dropping share partition %s: %s", holder.key, reason)
        if holder.timer is not None:
            holder.timer.cancel()
        if holder.load_task is not None and not holder.load_task.done():
            holder.load_task.cancel()
        error = OperatingError(code, f"share partition {holder.key.topic}-{holder.key.partition} of group "
                                     f"{holder.key.group_id} was reset on this node ({reason}); retry")
        for pending in holder.pending:
            if not pending.future.done():
                pending.future.set_exception(error)
        holder.pending.clear()
        holder.notify()

    async def _holder(self, group_id: str, topic: str, partition: int) -> _Holder:
        """The loaded share partition, loading it first if needed (rule 1)."""
        if not self._local.is_leader(topic, partition):
            raise OperatingError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                f"this node does not lead {topic}-{partition}; refresh metadata and retry",
            )
        key = ShareKey(group_id, topic, partition)
        holder = self._holders.get(key)
        leader_epoch = self._local.leader_epoch(topic, partition)
        if holder is not None and holder.leader_epoch != leader_epoch:
            self._drop(holder, ErrorCode.NOT_LEADER_OR_FOLLOWER, "a new leader epoch")
            holder = None
        if holder is None:
            holder = _Holder(key, leader_epoch)
            self._holders[key] = holder
            holder.load_task = asyncio.get_running_loop().create_task(self._load(holder))
        if holder.partition is None:
            assert holder.load_task is not None
            try:
                await asyncio.shield(holder.load_task)
            except asyncio.CancelledError:
                if holder.dropped:
                    raise OperatingError(
                        ErrorCode.NOT_LEADER_OR_FOLLOWER,
                        f"share partition {topic}-{partition} was dropped while loading; retry",
                    ) from None
                raise
        if holder.dropped:
            raise OperatingError(ErrorCode.NOT_LEADER_OR_FOLLOWER, f"share partition {topic}-{partition} moved; retry")
        await self._refresh_settings(holder)
        self._maybe_check_state_epoch(holder)
        return holder

    def _maybe_check_state_epoch(self, holder: _Holder) -> None:
        """Notice an admin reset (AlterShareGroupOffsets / DeleteShareGroupOffsets).

        A reset starts a new state epoch at the share coordinator. A share
        partition that writes is fenced at once (FENCED_STATE_EPOCH); one that has
        nothing to write would serve its old window forever, so every
        ``STATE_EPOCH_CHECK_INTERVAL_MS`` while it is used it compares its state
        epoch with the coordinator's summary, in the background, and drops itself
        when a newer one exists (the next fetch loads the reset state).
        """
        now_ms = monotonic_ms()
        if holder.epoch_check_due_ms > now_ms or holder.epoch_check is not None:
            return
        holder.epoch_check_due_ms = now_ms + STATE_EPOCH_CHECK_INTERVAL_MS

        async def check() -> None:
            try:
                summary = await self._persister.summary(holder.key)
            except OperatingError:
                return
            finally:
                holder.epoch_check = None
            if summary.state_epoch > holder.state_epoch and not holder.dropped:
                self._drop(holder, ErrorCode.FENCED_STATE_EPOCH, f"state epoch {summary.state_epoch} started (reset)")

        holder.epoch_check = asyncio.get_running_loop().create_task(check())

    async def _load(self, holder: _Holder) -> None:
        key = holder.key
        started_ms = monotonic_ms()
        try:
            settings = await self._settings_for(key.group_id)
            state_epoch, start_offset, batches = await self._read_or_initialize(holder, settings)
            partition = SharePartition(partition_settings(settings), start_offset, batches)
            holder.durable_start_offset = start_offset
        except OperatingError as error:
            if self._holders.get(key) is holder:
                del self._holders[key]
            holder.dropped = True
            raise OperatingError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER if error.code in _FENCED_CODES else error.code,
                f"loading share partition {key.topic}-{key.partition} of group {key.group_id} failed: {error.message}",
            ) from None
        if holder.dropped:
            return
        if not self._local.is_leader(key.topic, key.partition) or (
            self._local.leader_epoch(key.topic, key.partition) != holder.leader_epoch
        ):
            self._drop(holder, ErrorCode.NOT_LEADER_OR_FOLLOWER, "leadership moved while loading")
            return
        holder.state_epoch = state_epoch
        holder.settings = settings
        holder.partition = partition
        self._count(partition.load_change, holder)
        self._apply(holder, partition.load_change)
        log_start = self._local.log_start_offset(key.topic, key.partition)
        change = partition.update_log_start_offset(log_start)
        self._count(change, holder)
        self._apply(holder, change)
        self.loads_total += 1
        self.last_load_time_ms = monotonic_ms() - started_ms
        self.load_time.observe_ms(self.last_load_time_ms)

    async def _read_or_initialize(
        self, holder: _Holder, settings: EffectiveShareSettings
    ) -> tuple[int, int, list[StateBatch]]:
        key = holder.key
        for _ in range(3):
            result = await self._persister.read(key, holder.leader_epoch, timeout_ms=self._load_timeout_ms)
            if result.start_offset >= 0:
                batches = [
                    StateBatch(b.first_offset, b.last_offset, RecordState(b.state), b.delivery_count)
                    for b in result.batches
                ]
                start_offset = result.start_offset
                if BUG_START_OFFSET_NOT_PERSISTED:
                    # Deliberate, test-only bug (mutation gate): forget the durable
                    # start offset, so settled records below it come back.
                    start_offset = self._local.log_start_offset(key.topic, key.partition)
                if BUG_DELIVERY_COUNT_NOT_RAISED_AFTER_FAILOVER:
                    # Deliberate, test-only bug (mutation gate): the failover loses the
                    # last delivery, so a count is handed out twice.
                    batches = [
                        StateBatch(b.first_offset, b.last_offset, b.state, b.delivery_count - 1)
                        if b.state == RecordState.AVAILABLE and b.delivery_count > 0 else b
                        for b in batches
                    ]
                return result.state_epoch, start_offset, batches
            start_offset = await self._reset_offset(key.topic, key.partition, settings)
            try:
                # share_state.py: a key never initialized accepts its recorded state epoch.
                await self._persister.initialize(key, result.state_epoch, start_offset, timeout_ms=self._load_timeout_ms)
            except OperatingError as error:
                if error.code == ErrorCode.FENCED_STATE_EPOCH:
                    continue  # someone (an admin reset) initialized it first: read again
                raise
        raise OperatingError(
            ErrorCode.COORDINATOR_NOT_AVAILABLE,
            f"share state of {key.topic}-{key.partition} for group {key.group_id} keeps changing while loading",
        )

    async def _reset_offset(self, topic: str, partition: int, settings: EffectiveShareSettings) -> int:
        kind, duration_ms = settings.auto_offset_reset
        if kind == "earliest":
            return self._local.log_start_offset(topic, partition)
        if kind == "by_duration":
            assert duration_ms is not None
            return await self._local.offset_for_timestamp(topic, partition, wall_ms() - duration_ms)
        return self._local.high_watermark(topic, partition)

    async def _refresh_settings(self, holder: _Holder) -> None:
        """Apply group config changes (alter_group_configs) to a loaded share partition."""
        try:
            settings = await self._settings_for(holder.key.group_id)
        except OperatingError:
            return  # keep the settings in force; the group coordinator may be moving
        self._session_timeouts_ms[holder.key.group_id] = settings.session_timeout_ms
        if holder.dropped or holder.partition is None or settings == holder.settings:
            return
        new_partition_settings = partition_settings(settings)
        holder.settings = settings
        if new_partition_settings != holder.partition.settings:
            change = holder.partition.update_settings(new_partition_settings)
            self._count(change, holder)
            self._apply(holder, change)

    # ------------------------------------------------------------------ changes, writes, timers

    def _count(self, change: Change, holder: _Holder) -> None:
        """Add the change's record counts to the node totals and to the share partition's."""
        counts = change.counts
        if counts:
            for name, amount in counts.items():
                holder.counts[name] = holder.counts.get(name, 0) + amount
        self.acquired_records_total += counts.get("acquired", 0)
        for name in ("accept", "release", "reject", "gap", "renew"):
            if counts.get(name):
                self.acknowledged_records_total[name] = self.acknowledged_records_total.get(name, 0) + counts[name]
        self.lock_expirations_total += counts.get("lock_expired", 0)
        self.delivery_limit_archives_total += counts.get("archived_delivery_limit", 0)
        self.released_member_records_total += counts.get("released_member", 0)

    def _apply(self, holder: _Holder, change: Change) -> asyncio.Future:
        """Queue the change's write (if any), re-arm the timer; the future completes when durable."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._arm_timer(holder)
        if change.write is None:
            future.set_result(None)
            return future
        holder.pending.append(_PendingWrite(change.write, future))
        if holder.writer is None or holder.writer.done():
            holder.writer = asyncio.get_running_loop().create_task(self._write_loop(holder))
        return future

    async def _write_loop(self, holder: _Holder) -> None:
        while holder.pending and not holder.dropped:
            pending, holder.pending = holder.pending, []
            # Coalesce the queued writes with the coordinator's own per-offset max;
            # nothing is dropped here, the coordinator prunes below the start offset.
            batches = merge_batches(
                (),
                (
                    PersistedBatch(b.first_offset, b.last_offset, int(b.state), b.delivery_count)
                    for p in pending
                    for b in p.write.batches
                ),
                UNINITIALIZED_START_OFFSET,
            )
            start_offset = max(p.write.start_offset for p in pending)
            delivery_complete_count = pending[-1].write.delivery_complete_count
            started_ms = monotonic_ms()
            self.state_writes_total += 1
            try:
                await self._persister.write(
                    holder.key,
                    holder.state_epoch,
                    holder.leader_epoch,
                    start_offset,
                    delivery_complete_count,
                    batches,
                    timeout_ms=self._write_timeout_ms,
                )
            except OperatingError as error:
                self.state_write_failures_total += 1
                code = ErrorCode.NOT_LEADER_OR_FOLLOWER if error.code in _FENCED_CODES else (
                    error.code if error.retriable else ErrorCode.COORDINATOR_NOT_AVAILABLE
                )
                failure = OperatingError(code, f"persisting share state failed: {error.message}")
                for item in pending:
                    if not item.future.done():
                        item.future.set_exception(failure)
                # Rule 4: memory is ahead of the durable state; reload from it.
                self._drop(holder, code, f"a state write failed: {error.code.name}")
                return
            holder.durable_start_offset = max(holder.durable_start_offset, start_offset)
            latency_ms = monotonic_ms() - started_ms
            self.state_write_latency_ms_sum += latency_ms
            self.last_state_write_latency_ms = latency_ms
            for item in pending:
                if not item.future.done():
                    item.future.set_result(None)

    def _arm_timer(self, holder: _Holder) -> None:
        if holder.partition is None or holder.dropped:
            return
        deadline_ms = holder.partition.next_deadline_ms()
        if deadline_ms == holder.timer_deadline_ms:
            return
        if holder.timer is not None:
            holder.timer.cancel()
            holder.timer = None
        holder.timer_deadline_ms = deadline_ms
        if deadline_ms is None:
            return
        delay_s = max(0.0, (deadline_ms - monotonic_ms()) / 1000)
        holder.timer = asyncio.get_running_loop().call_later(delay_s, self._on_timer, holder)

    def _on_timer(self, holder: _Holder) -> None:
        holder.timer = None
        holder.timer_deadline_ms = None
        if holder.dropped or holder.partition is None:
            return
        now_ms = monotonic_ms()
        deadline_ms = holder.partition.next_deadline_ms()
        if deadline_ms is not None and deadline_ms > now_ms:
            self._arm_timer(holder)  # the loop woke a little early
            return
        change = holder.partition.expire(now_ms)
        self._count(change, holder)
        future = self._apply(holder, change)
        # The expiry is in effect whether or not its write succeeds (rule 5);
        # a failed write drops the holder, which logs it.
        future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        holder.notify()

    def release_member(self, group_id: str, member_id: str) -> None:
        """End every attempt of ``member_id`` in the group's share partitions on this node."""
        now_ms = monotonic_ms()
        for holder in list(self._holders.values()):
            if holder.key.group_id != group_id or holder.partition is None or holder.dropped:
                continue
            change = holder.partition.release_member(member_id, now_ms)
            if change.counts:
                self._count(change, holder)
                future = self._apply(holder, change)
                future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
                holder.notify()

    # ------------------------------------------------------------------ sessions

    def _session_for_fetch(self, request: shoal_pb2.ShareFetchRequest, now_ms: int) -> _Session | None:
        key = (request.group_id, request.member_id)
        if not request.group_id or not request.member_id:
            raise OperatingError(ErrorCode.INVALID_REQUEST, "ShareFetch needs a group id and a member id")
        epoch = request.share_session_epoch
        has_acks = any(p.acknowledgement_batches for p in request.partitions)
        if epoch == 0:
            if has_acks:
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST,
                    "acknowledgements are not allowed when opening a share session (epoch 0); "
                    "send them with the next fetch or a ShareAcknowledge",
                )
            if key not in self._sessions and len(self._sessions) >= self._max_share_sessions:
                raise OperatingError(
                    ErrorCode.SHARE_SESSION_LIMIT_REACHED,
                    f"this node already holds {self._max_share_sessions} share sessions "
                    "(group.share.max.share.sessions); retry later or on fewer consumers",
                )
            session = _Session(request.group_id, request.member_id, 1)
            self._sessions[key] = session
        else:
            session = self._sessions.get(key)
            if session is None:
                raise OperatingError(
                    ErrorCode.SHARE_SESSION_NOT_FOUND,
                    f"no share session for member {request.member_id} of group {request.group_id} on this node; "
                    "open one with epoch 0",
                )
            if epoch == -1:
                del self._sessions[key]
                session.last_used_ms = now_ms
                return session
            if epoch != session.epoch:
                raise OperatingError(
                    ErrorCode.INVALID_SHARE_SESSION_EPOCH,
                    f"share session epoch {epoch} does not match the expected {session.epoch}; "
                    "reopen the session with epoch 0",
                )
            session.epoch = _next_epoch(session.epoch)
        session.last_used_ms = now_ms
        for part in request.partitions:
            session.partitions.add((part.topic, part.partition))
        for forgotten in request.forgotten:
            session.partitions.discard((forgotten.topic, forgotten.partition))
        return session

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(SESSION_SWEEP_INTERVAL_MS / 1000)
            now_ms = monotonic_ms()
            for key, session in list(self._sessions.items()):
                timeout_ms = self._session_timeouts_ms.get(session.group_id, 45_000)
                if now_ms - session.last_used_ms > timeout_ms:
                    del self._sessions[key]
                    log.info("share session of %s/%s expired after %s ms idle", key[0], key[1], timeout_ms)
                    self.release_member(session.group_id, session.member_id)

    # ------------------------------------------------------------------ resolve, settle

    async def _resolve(self, group_id: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, _Resolved]:
        """Every named share partition, loaded (concurrently), or the error that prevented it.

        Resolving all of them before changing any keeps the in-memory changes of
        one request together, so that they reach each writer in one batch.
        """
        wanted = sorted(set(partitions))
        found = await asyncio.gather(*(self._holder(group_id, t, p) for t, p in wanted), return_exceptions=True)
        out: dict[TopicPartition, _Resolved] = {}
        for tp, result in zip(wanted, found):
            if isinstance(result, (_Holder, OperatingError)):
                out[tp] = result
            else:  # cancellation or a programmer error: not a per-partition answer
                raise result
        return out

    @staticmethod
    def _usable(resolved: _Resolved | None, tp: TopicPartition) -> _Holder:
        """The holder, or raise why this partition cannot be served (it may have moved since resolving)."""
        if isinstance(resolved, OperatingError):
            raise resolved
        if resolved is None or resolved.dropped or resolved.partition is None:
            raise OperatingError(
                ErrorCode.NOT_LEADER_OR_FOLLOWER, f"share partition {tp[0]}-{tp[1]} moved; refresh metadata and retry"
            )
        return resolved

    @staticmethod
    async def _settle(futures: Iterable[asyncio.Future | None]) -> None:
        """Wait until every write completed (either way); callers read each outcome."""
        pending = [f for f in futures if f is not None and not f.done()]
        if pending:
            await asyncio.wait(pending)

    @staticmethod
    def _write_error(future: asyncio.Future | None) -> OperatingError | None:
        """Why a completed write failed, or None if it is durable."""
        if future is None:
            return None
        error = future.exception()
        if error is None:
            return None
        if isinstance(error, OperatingError):
            return error
        raise error

    # ------------------------------------------------------------------ acknowledge

    @staticmethod
    def _ack_batches(batches: Iterable[shoal_pb2.AcknowledgementBatch]) -> list[AcknowledgementBatch]:
        out = []
        for batch in batches:
            try:
                types = tuple(AcknowledgeType(t) for t in batch.acknowledge_types)
            except ValueError:
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST,
                    f"invalid acknowledge type in {list(batch.acknowledge_types)}: use 0 GAP, 1 ACCEPT, "
                    "2 RELEASE, 3 REJECT or 4 RENEW",
                ) from None
            if not types:
                raise OperatingError(ErrorCode.INVALID_REQUEST, "an acknowledgement batch needs acknowledge types")
            out.append(AcknowledgementBatch(batch.first_offset, batch.last_offset, types))
        return out

    def _acknowledge(
        self, resolved: _Resolved | None, member_id: str, tp: TopicPartition,
        batches: Iterable[shoal_pb2.AcknowledgementBatch],
    ) -> _AckResult:
        """Apply one partition's acknowledgements atomically in memory; the result's write makes them durable."""
        try:
            ack_batches = self._ack_batches(batches)
            holder = self._usable(resolved, tp)
            assert holder.partition is not None
            if BUG_STALE_ACKS:
                change = self._acknowledge_as_current_holder(holder.partition, member_id, ack_batches)
            else:
                change = holder.partition.acknowledge(member_id, ack_batches, monotonic_ms())
            self._count(change, holder)
            if BUG_NO_DURABLE_SHARE_STATE:
                # Deliberate, test-only bug (mutation gate): the acknowledgement
                # takes effect and is answered, but its state write is never issued.
                change = Change(None, change.counts)
            future = self._apply(holder, change)
            holder.notify()
        except OperatingError as error:
            return _AckResult(int(error.code), error.message)
        return _AckResult(write=future)

    @staticmethod
    def _acknowledge_as_current_holder(
        partition: SharePartition, member_id: str, batches: list[AcknowledgementBatch]
    ) -> Change:
        """Deliberate, test-only bug (SHOAL_BUG_STALE_ACKS): skip the holder and lock checks.

        The acknowledgement is applied in the name of whoever holds the first
        acknowledged acquired offset, at a time before that hold's lock deadline.
        """
        ranges = [(b.first_offset, b.last_offset) for b in batches]
        for first, last, state, _, holder_id, deadline_ms in partition.runs():
            if state != RecordState.ACQUIRED or holder_id is None or deadline_ms is None:
                continue
            if any(first <= high and low <= last for low, high in ranges):
                return partition.acknowledge(holder_id, batches, min(monotonic_ms(), deadline_ms - 1))
        return partition.acknowledge(member_id, batches, monotonic_ms())

    def _finish_acks(self, results: list[_AckResult]) -> None:
        """After ``_settle``: a failed write turns its acknowledgement into that error."""
        for result in results:
            error = self._write_error(result.write)
            if error is not None:
                result.code, result.message = int(error.code), error.message
            if result.code:
                self.acknowledge_failures_total += 1

    async def ShareAcknowledge(self, request: shoal_pb2.ShareAcknowledgeRequest) -> shoal_pb2.ShareAcknowledgeResponse:
        self.acknowledge_requests_total += 1
        key = (request.group_id, request.member_id)
        epoch = request.share_session_epoch
        if epoch == 0:
            raise OperatingError(
                ErrorCode.INVALID_SHARE_SESSION_EPOCH,
                "ShareAcknowledge cannot open a share session (epoch 0); fetch first",
            )
        session = self._sessions.get(key)
        if session is None:
            raise OperatingError(
                ErrorCode.SHARE_SESSION_NOT_FOUND,
                f"no share session for member {request.member_id} of group {request.group_id} on this node",
            )
        if epoch != -1 and epoch != session.epoch:
            raise OperatingError(
                ErrorCode.INVALID_SHARE_SESSION_EPOCH,
                f"share session epoch {epoch} does not match the expected {session.epoch}",
            )
        if epoch == -1:
            del self._sessions[key]
        else:
            session.epoch = _next_epoch(session.epoch)
        session.last_used_ms = monotonic_ms()
        resolved = await self._resolve(request.group_id, ((p.topic, p.partition) for p in request.partitions))
        # Apply every partition's acknowledgements, then wait for all their writes at once.
        results = [
            self._acknowledge(resolved.get((p.topic, p.partition)), request.member_id, (p.topic, p.partition),
                              p.acknowledgement_batches)
            for p in request.partitions
        ]
        if epoch == -1:
            self.release_member(request.group_id, request.member_id)
        await self._settle(r.write for r in results)
        self._finish_acks(results)
        response = shoal_pb2.ShareAcknowledgeResponse()
        lock_ms = 0
        for part, result in zip(request.partitions, results):
            out = response.partitions.add(topic=part.topic, partition=part.partition, error_code=result.code,
                                          error_message=result.message)
            if result.code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH):
                self._leader_hint(out.current_leader, part.topic, part.partition)
            holder = self._holders.get(ShareKey(request.group_id, part.topic, part.partition))
            if holder is not None and holder.settings is not None:
                lock_ms = holder.settings.record_lock_duration_ms
        response.acquisition_lock_timeout_ms = lock_ms
        return response

    def _leader_hint(self, hint: shoal_pb2.LeaderHint, topic: str, partition: int) -> None:
        try:
            leader = self._cluster.partition_leader(topic, partition)
            hint.leader_id = leader.node_id
            hint.leader_epoch = leader.leader_epoch
        except OperatingError:
            hint.leader_id = -1

    # ------------------------------------------------------------------ fetch

    def _acquire(
        self, holder: _Holder, member_id: str, max_records: int, max_bytes: int, mode: AcquireMode
    ) -> _Acquired:
        """Acquire in memory; the result's write (if any) must be durable before its records are returned."""
        partition = holder.partition
        assert partition is not None
        topic, index = holder.topic_partition
        writes: list[asyncio.Future] = []
        log_start = self._local.log_start_offset(topic, index)
        if partition.start_offset < log_start:
            change = partition.update_log_start_offset(log_start)
            self._count(change, holder)
            writes.append(self._apply(holder, change))
        fetch_offset = partition.next_fetch_offset()
        data = b""
        if fetch_offset < self._local.high_watermark(topic, index) and partition.can_acquire():
            data = self._local.read(topic, index, fetch_offset, max(1, min(max_bytes, PARTITION_READ_BYTES_MAX)))
        if not data:
            # Both writes of one partition go through its writer in order, so the
            # last one completing means both are durable.
            return _Acquired(b"", [], writes[-1] if writes else None)
        view = memoryview(data)
        batches = [(pos, header) for pos, header in batch_codec.iter_batches(view)]
        bounds = [(header.base_offset, header.last_offset) for _, header in batches]
        ranges, change = partition.acquire(member_id, bounds, max_records, mode, monotonic_ms())
        self._count(change, holder)
        future = self._apply(holder, change)
        if not ranges:
            return _Acquired(b"", [], future)
        parts = []
        for pos, header in batches:
            if any(r.first_offset <= header.last_offset and header.base_offset <= r.last_offset for r in ranges):
                parts.append(bytes(view[pos : pos + header.size_bytes]))
        return _Acquired(b"".join(parts), ranges, future)

    async def ShareFetch(self, request: shoal_pb2.ShareFetchRequest) -> shoal_pb2.ShareFetchResponse:
        self.fetch_requests_total += 1
        now_ms = monotonic_ms()
        try:
            session = self._session_for_fetch(request, now_ms)
        except OperatingError:
            self.fetch_failures_total += 1
            raise
        assert session is not None
        group_id, member_id = request.group_id, request.member_id
        response = shoal_pb2.ShareFetchResponse(node_id=self._cluster.node_id)
        out: dict[TopicPartition, shoal_pb2.ShareFetchPartitionData] = {}

        def entry(tp: TopicPartition) -> shoal_pb2.ShareFetchPartitionData:
            if tp not in out:
                out[tp] = shoal_pb2.ShareFetchPartitionData(topic=tp[0], partition=tp[1])
            return out[tp]

        # (1) Resolve every partition the request touches, (2) apply the
        # acknowledgements in memory, each partition atomic.
        acking = [p for p in request.partitions if p.acknowledgement_batches]
        closing = request.share_session_epoch == -1
        wanted = [(p.topic, p.partition) for p in acking]
        if not closing:
            wanted += list(session.partitions)
        resolved = await self._resolve(group_id, wanted)
        acks = [
            self._acknowledge(resolved.get((p.topic, p.partition)), member_id, (p.topic, p.partition),
                              p.acknowledgement_batches)
            for p in acking
        ]
        taken: list[tuple[TopicPartition, _Holder, _Acquired]] = []
        if closing:
            self.release_member(group_id, member_id)
        else:
            # (3) Acquire, (4) long-poll when nothing came back; the writes of
            # the acknowledgements go on meanwhile.
            max_records = request.max_records if request.max_records > 0 else 500
            max_bytes = request.max_bytes if request.max_bytes > 0 else 50 << 20
            mode = AcquireMode.RECORD_LIMIT if request.acquire_mode == 1 else AcquireMode.BATCH_OPTIMIZED
            deadline_ms = now_ms + max(0, request.max_wait_ms)
            while True:
                got_any = self._acquire_round(session, resolved, member_id, max_records, max_bytes, mode, entry, taken)
                if got_any or monotonic_ms() >= deadline_ms or any(d.error_code for d in out.values()):
                    break
                await self._wait_for_records(session, group_id, deadline_ms)
                if (group_id, member_id) not in self._sessions:
                    break
                resolved = await self._resolve(group_id, session.partitions)
        # (5) Durable before visible: one wait for every write this answer depends on.
        await self._settle([a.write for a in acks] + [acquired.write for _, _, acquired in taken])
        self._finish_acks(acks)
        for part, result in zip(acking, acks):
            data = entry((part.topic, part.partition))
            data.acknowledge_error_code = result.code
            data.acknowledge_error_message = result.message
        self._fill_records(taken, entry)
        return self._finish(response, out, group_id)

    def _partition_error(self, data: shoal_pb2.ShareFetchPartitionData, tp: TopicPartition, error: OperatingError) -> None:
        data.error_code = int(error.code)
        data.error_message = error.message
        if error.code in (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.FENCED_LEADER_EPOCH):
            self._leader_hint(data.current_leader, tp[0], tp[1])

    def _acquire_round(
        self, session: _Session, resolved: dict[TopicPartition, _Resolved], member_id: str, max_records: int,
        max_bytes: int, mode: AcquireMode, entry: Callable[[TopicPartition], shoal_pb2.ShareFetchPartitionData],
        taken: list[tuple[TopicPartition, _Holder, _Acquired]],
    ) -> bool:
        """Acquire in memory on each partition of the session (appended to ``taken``); whether any records came."""
        got_any = False
        records_left, bytes_left = max_records, max_bytes
        for tp in sorted(session.partitions):
            if records_left <= 0 or bytes_left <= 0:
                break
            try:
                holder = self._usable(resolved.get(tp), tp)
                acquired = self._acquire(holder, member_id, records_left, bytes_left, mode)
            except OperatingError as error:
                self._partition_error(entry(tp), tp, error)
                continue
            taken.append((tp, holder, acquired))
            if not acquired.ranges:
                continue
            got_any = True
            records_left -= sum(r.last_offset - r.first_offset + 1 for r in acquired.ranges)
            bytes_left -= len(acquired.records)
        return got_any

    def _fill_records(
        self, taken: list[tuple[TopicPartition, _Holder, _Acquired]],
        entry: Callable[[TopicPartition], shoal_pb2.ShareFetchPartitionData],
    ) -> None:
        """After ``_settle``: records of durable acquisitions into the answer; a failed write is the partition's error."""
        delivered: set[TopicPartition] = set()
        failed: dict[TopicPartition, OperatingError] = {}
        for tp, holder, acquired in taken:
            error = self._write_error(acquired.write)
            if error is not None:
                failed[tp] = error
                continue
            if not acquired.ranges:
                continue
            delivered.add(tp)
            data = entry(tp)
            data.records = acquired.records
            data.leader_epoch = holder.leader_epoch
            for r in acquired.ranges:
                data.acquired_records.add(
                    first_offset=r.first_offset, last_offset=r.last_offset, delivery_count=r.delivery_count
                )
        for tp, error in failed.items():
            # Records acquired in an earlier round whose write failed are withheld;
            # their share partition was dropped and reloads from the durable state.
            if tp not in delivered:
                self._partition_error(entry(tp), tp, error)

    async def _wait_for_records(self, session: _Session, group_id: str, deadline_ms: int) -> None:
        remaining_ms = deadline_ms - monotonic_ms()
        if remaining_ms <= 0:
            return
        waits: list[asyncio.Future] = []
        for topic, partition in session.partitions:
            holder = self._holders.get(ShareKey(group_id, topic, partition))
            if holder is not None:
                waits.append(asyncio.ensure_future(holder.available.wait()))
            try:
                if self._local.is_leader(topic, partition):
                    high_watermark = self._local.high_watermark(topic, partition)
                    waits.append(asyncio.ensure_future(
                        self._local.wait_for_high_watermark(topic, partition, high_watermark, remaining_ms)
                    ))
            except OperatingError:
                continue
        if not waits:
            await asyncio.sleep(min(remaining_ms, 100) / 1000)
            return
        try:
            await asyncio.wait(waits, timeout=remaining_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _finish(
        self, response: shoal_pb2.ShareFetchResponse, out: dict[TopicPartition, shoal_pb2.ShareFetchPartitionData],
        group_id: str,
    ) -> shoal_pb2.ShareFetchResponse:
        lock_ms = 0
        for tp, data in sorted(out.items()):
            response.partitions.append(data)
            holder = self._holders.get(ShareKey(group_id, tp[0], tp[1]))
            if holder is not None and holder.settings is not None:
                lock_ms = holder.settings.record_lock_duration_ms
            if data.error_code:
                self.fetch_failures_total += 1
        response.acquisition_lock_timeout_ms = lock_ms
        return response

    # ------------------------------------------------------------------ describe

    async def DescribeSharePartitions(
        self, request: shoal_pb2.DescribeSharePartitionsRequest
    ) -> shoal_pb2.DescribeSharePartitionsResponse:
        """The in-flight windows of the group's share partitions loaded on this node.

        A named partition this node leads but has not loaded yet (a new leader
        before any fetch) is loaded first if its durable state exists, so that
        a describe after a failover shows the state rather than nothing.
        Describing never initializes a share partition: that would fix its
        start offset at the time of the describe instead of the first fetch.
        """
        wanted = {(tp.topic, tp.partition) for tp in request.partitions}
        await asyncio.gather(*(self._load_if_initialized(request.group_id, t, p) for t, p in sorted(wanted)))
        return self._describe(request.group_id, wanted)

    async def _load_if_initialized(self, group_id: str, topic: str, partition: int) -> None:
        key = ShareKey(group_id, topic, partition)
        holder = self._holders.get(key)
        if not self._local.is_leader(topic, partition) or (holder is not None and not holder.dropped):
            return
        try:
            summary = await self._persister.summary(key, timeout_ms=DESCRIBE_LOAD_TIMEOUT_MS)
            if summary.start_offset >= 0:
                await self._holder(group_id, topic, partition)
        except OperatingError as error:
            log.info("describe: share partition %s not loaded: %s", key, error.message)

    def _describe(self, group_id: str, wanted: set[tuple[str, int]]) -> shoal_pb2.DescribeSharePartitionsResponse:
        response = shoal_pb2.DescribeSharePartitionsResponse()
        for key, holder in sorted(self._holders.items(), key=lambda item: (item[0].topic, item[0].partition)):
            if key.group_id != group_id or holder.partition is None or holder.dropped:
                continue
            if wanted and holder.topic_partition not in wanted:
                continue
            partition = holder.partition
            high_watermark = self._local.high_watermark(key.topic, key.partition)
            state = response.partitions.add(
                topic=key.topic, partition=key.partition, start_offset=partition.start_offset,
                end_offset=partition.end_offset, state_epoch=holder.state_epoch, leader_epoch=holder.leader_epoch,
                delivery_complete_count=partition.delivery_complete_count, lag=partition.lag(high_watermark),
                high_watermark=high_watermark, leader_id=self._cluster.node_id,
                durable_start_offset=holder.durable_start_offset,
            )
            for first, last, record_state, count, member, deadline_ms in partition.runs():
                state.runs.add(
                    first_offset=first, last_offset=last, state=int(record_state), delivery_count=count,
                    member_id=member or "", lock_deadline_ms=deadline_ms or 0,
                )
        return response
