"""The share-partition state machine of KIP-932: one per (share group, topic partition).

A share partition hands the records of one topic partition to the members of one
share group, tracks what happened to each delivery, and tells its shell what to
persist. It is pure: no clocks, no I/O; time arrives as ``now_ms`` and every
operation returns what changed (:class:`Change`) for the shell to write to the
share coordinator before it answers the consumer.

Rules
=====

Record states and transitions (kip932-facts.md §1)::

    AVAILABLE --acquire--> ACQUIRED --ACCEPT----------------------> ACKNOWLEDGED (terminal)
        ^                     |  |---REJECT / GAP------------------> ARCHIVED     (terminal)
        |                     |  '---RENEW: lock restarted, stays ACQUIRED
        '--RELEASE / lock expiry / member leaves (count < limit)--'
                              '--same, with count >= limit, or offset below the start offset --> ARCHIVED

* Acquiring increments the delivery count (a record never delivered has count 0).
  The delivery-count limit is checked when an attempt *completes* (release, lock
  expiry, member leaving), as in Kafka, so a lowered limit (KIP-1240) lets an
  in-flight attempt finish. Available records already at a lowered limit are
  archived at once by :meth:`SharePartition.update_settings`, exactly as a reload
  would archive them, so live and recovered partitions agree.
* Poison isolation (Kafka 4.2): with a limit above 2, an offset on its last attempt
  (delivery count limit-1 before acquisition) is delivered alone, so one bad record
  does not archive a whole batch with it.
* An acknowledgement is atomic per partition: if any offset in any batch is not
  ACQUIRED by the acknowledging member under a valid lock, nothing changes and
  ``INVALID_RECORD_STATE`` is raised. Acknowledgements entirely below the start
  offset are ignored (§2.5).
* A lock is valid while ``now_ms < deadline_ms``. An acknowledgement that arrives
  after the deadline is refused even if :meth:`expire` has not run yet, so the
  answer does not depend on when the shell's timer fires.
* The start offset (SPSO) advances only over a contiguous prefix of terminal
  records and never moves backwards; everything below it is delivery-complete.
  Moving the log start offset forward (retention, DeleteRecords) archives the
  available records below it and moves the start offset to it; records acquired
  below it stay acquired until acknowledged, released or expired, then archive.
* The in-flight window is ``[start_offset, end_offset)``. New offsets are acquired
  only while they stay below ``start_offset + partition_max_record_locks``;
  records already inside the window can always be redelivered.

The persistence model (a deliberate deviation from Kafka)
=========================================================

Kafka never persists ACQUIRED: after a leader failover the increment of every
in-flight delivery is lost, so a delivery count can go backwards and a record can
be delivered more often than the limit allows. shoal guarantees that a delivery
count never exceeds the limit and never goes backwards, so **an acquisition is
persisted too**: acquiring offsets emits ``StateBatch(first, last, AVAILABLE, n)``,
read as "delivered n times; if you reload me, I am available with that count".

Persisted states are therefore only AVAILABLE (0), ACKNOWLEDGED (2) and ARCHIVED
(4), and for every offset the persisted pair (delivery_count, state) only grows in
lexicographic order:

* acquire: ``(c, AVAILABLE) -> (c + 1, AVAILABLE)``;
* accept: ``(c, AVAILABLE) -> (c, ACKNOWLEDGED)``; reject, gap, limit, log
  absence: ``(c, AVAILABLE) -> (c, ARCHIVED)``;
* release or lock expiry below the limit: persisted state unchanged, nothing to
  write (the record is AVAILABLE with count c, which is what is already stored).

So the share coordinator may merge writes with a per-offset maximum, which is
Kafka's combiner rule (higher delivery count wins, on a tie the higher state id),
and writes are idempotent and commutative (:func:`merge_state_batches`). The
price is one write per acquisition; Kafka's shell writes per acknowledgement anyway.

For the same reason releasing a member's records does **not** decrement the
delivery count (Kafka 4.2 does, because those records were "fetched but not
delivered"): the acquisition has already been persisted with the higher count, and
a decrement would make the persisted count go backwards.

On load, an AVAILABLE offset with delivery count >= limit becomes ARCHIVED (it was
handed out ``limit`` times and the last attempt never completed); a terminal prefix
collapses so the start offset moves past it; offsets inside ``[start_offset,
end_offset)`` that no batch covers are available with count 0 (Kafka's "gap
window"). What loading changed is in :attr:`SharePartition.load_change`.

If a write fails, the shell must not answer the request as if it succeeded; the
safe recovery is to drop this object and load the partition again from the share
coordinator (the persisted state is always a consistent past of this one).

Theory of operation
===================

State is a sorted list of *runs*: maximal ranges of offsets that share (state,
delivery count, member id, lock deadline). A run is split only where an operation
touches part of it and merged back with a neighbour as soon as they become equal,
so cost grows with the number of runs, not with the number of records: accepting
a million records acquired in big batches keeps a handful of runs.

The runs at or above the start offset cover ``[start_offset, end_offset)`` without
holes. Below the start offset only ACQUIRED runs exist (stranded there by a log
start move); no run straddles the start offset. Counters (acquired records,
delivery-complete records, records per lock deadline) are adjusted whenever a run
changes, and a lazy heap of deadlines answers :meth:`SharePartition.next_deadline_ms`
so the shell needs one timer per partition, not one per record.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import islice

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_state import DELIVERY_COUNT_MAX, OFFSET_MAX, PersistedBatch, merge_batches


class RecordState(IntEnum):
    AVAILABLE = 0
    ACQUIRED = 1
    ACKNOWLEDGED = 2
    ARCHIVED = 4


class AcknowledgeType(IntEnum):
    GAP = 0
    ACCEPT = 1
    RELEASE = 2
    REJECT = 3
    RENEW = 4


class AcquireMode(IntEnum):
    BATCH_OPTIMIZED = 0
    RECORD_LIMIT = 1


#: States that may appear in persisted state batches (never ACQUIRED).
PERSISTED_STATES: frozenset[RecordState] = frozenset(
    {RecordState.AVAILABLE, RecordState.ACKNOWLEDGED, RecordState.ARCHIVED}
)
#: States from which no transition exists; they let the start offset advance.
TERMINAL_STATES: frozenset[RecordState] = frozenset({RecordState.ACKNOWLEDGED, RecordState.ARCHIVED})

# Bounds of the settings. Kafka's bounds where they exist (group.share.delivery.count.limit
# is 2..10, group.share.partition.max.record.locks at most 10,000); the lock duration and
# the window cap go lower than Kafka's minimum so that tests can run on short clocks.
RECORD_LOCK_DURATION_MS_MIN = 1
RECORD_LOCK_DURATION_MS_MAX = 3_600_000
DELIVERY_COUNT_LIMIT_MIN = 2
DELIVERY_COUNT_LIMIT_MAX = 10
PARTITION_MAX_RECORD_LOCKS_MIN = 1
PARTITION_MAX_RECORD_LOCKS_MAX = 10_000


@dataclass(frozen=True)
class StateBatch:
    """A persisted range of offsets sharing a state and a delivery count."""

    first_offset: int
    last_offset: int
    state: RecordState
    delivery_count: int


@dataclass(frozen=True)
class AcquiredRange:
    """Offsets handed to a member by one acquisition, all with the same delivery count."""

    first_offset: int
    last_offset: int
    delivery_count: int


@dataclass(frozen=True)
class AcknowledgementBatch:
    """An acknowledgement: one type for the whole range, or one type per offset."""

    first_offset: int
    last_offset: int
    types: tuple[AcknowledgeType, ...]


@dataclass(frozen=True)
class SharePartitionSettings:
    """Group configuration a share partition obeys (Kafka's names without the prefix).

    * ``record_lock_duration_ms`` (``share.record.lock.duration.ms``): how long an
      acquisition lock lasts before the records become available again. Longer
      means slow consumers keep their records; shorter means a crashed consumer's
      records come back sooner.
    * ``delivery_count_limit`` (``share.delivery.count.limit``): how many times a
      record is delivered before it is archived instead of made available again.
    * ``partition_max_record_locks`` (``share.partition.max.record.locks``): the
      widest in-flight window; bounds memory and how far past a stuck record at
      the start offset consumers can run.
    * ``renew_acknowledge_enable``: whether RENEW acknowledgements (KIP-1222) are
      accepted.
    """

    record_lock_duration_ms: int = 30_000
    delivery_count_limit: int = 5
    partition_max_record_locks: int = 2000
    renew_acknowledge_enable: bool = True

    def __post_init__(self) -> None:
        bounds = (
            ("record_lock_duration_ms", self.record_lock_duration_ms,
             RECORD_LOCK_DURATION_MS_MIN, RECORD_LOCK_DURATION_MS_MAX),
            ("delivery_count_limit", self.delivery_count_limit,
             DELIVERY_COUNT_LIMIT_MIN, DELIVERY_COUNT_LIMIT_MAX),
            ("partition_max_record_locks", self.partition_max_record_locks,
             PARTITION_MAX_RECORD_LOCKS_MIN, PARTITION_MAX_RECORD_LOCKS_MAX),
        )
        for name, value, low, high in bounds:
            if not low <= value <= high:
                raise OperatingError(
                    ErrorCode.INVALID_CONFIG, f"{name} must be between {low} and {high}, got {value}"
                )


@dataclass(frozen=True)
class StateWrite:
    """What the shell must persist: changed batches plus the current start offset.

    ``delivery_complete_count`` (KIP-1226) is the number of offsets at or above the
    start offset that are already terminal. Unlike the batches it is not monotone
    (it drops when the start offset moves past terminal records), so a coordinator
    merging writes out of order should recompute it from the merged batches.
    """

    start_offset: int
    delivery_complete_count: int
    batches: tuple[StateBatch, ...]


@dataclass
class Change:
    """The result of an operation: what to persist (or None) and event counts for metrics.

    Count keys (offsets, only non-zero ones present): ``acquired``, ``accept``,
    ``release``, ``reject``, ``renew``, ``gap``, ``lock_expired``,
    ``archived_delivery_limit``, ``released_member``, ``archived_log_start``
    (available records archived because the log start offset passed them) and
    ``archived_absent`` (offsets archived because the log no longer holds them,
    e.g. whole batches removed by compaction).
    """

    write: StateWrite | None
    counts: dict[str, int] = field(default_factory=dict)


def merge_state_batches(batches: Iterable[StateBatch], start_offset: int = 0) -> tuple[StateBatch, ...]:
    """Merge possibly overlapping state batches with Kafka's combiner rule.

    Per offset the batch with the higher delivery count wins, on a tie the higher
    state id; offsets below ``start_offset`` are dropped and adjacent equal batches
    are joined. This is the share coordinator's rule, so the work is done by
    :func:`coordinator.share_state.merge_batches` (one implementation for both);
    this function only converts to and from :class:`StateBatch`.
    """
    merged = merge_batches(
        (),
        (PersistedBatch(b.first_offset, b.last_offset, int(b.state), b.delivery_count) for b in batches),
        start_offset,
    )
    return tuple(StateBatch(b.first_offset, b.last_offset, RecordState(b.state), b.delivery_count) for b in merged)


class _Run:
    """Offsets [first, last] sharing state, delivery count, holder and lock deadline."""

    __slots__ = ("first", "last", "state", "delivery_count", "member_id", "deadline_ms")

    def __init__(
        self,
        first: int,
        last: int,
        state: RecordState,
        delivery_count: int,
        member_id: str | None = None,
        deadline_ms: int | None = None,
    ) -> None:
        self.first = first
        self.last = last
        self.state = state
        self.delivery_count = delivery_count
        self.member_id = member_id
        self.deadline_ms = deadline_ms

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def key(self) -> tuple[RecordState, int, str | None, int | None]:
        return (self.state, self.delivery_count, self.member_id, self.deadline_ms)


def _run_first(run: _Run) -> int:
    return run.first


def _increment(counts: dict[str, int], key: str, amount: int) -> None:
    if amount:
        counts[key] = counts.get(key, 0) + amount


class SharePartition:
    """The in-flight state of one share partition; see the module docstring."""

    def __init__(
        self,
        settings: SharePartitionSettings,
        start_offset: int,
        batches: Sequence[StateBatch] = (),
    ) -> None:
        """Build from persisted state (start offset and state batches) or a fresh start offset.

        Overlapping batches are merged with :func:`merge_state_batches` and parts below
        the start offset are dropped, so the raw sequence of writes is a valid input.
        """
        if start_offset < 0:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"start offset must be >= 0, got {start_offset}")
        for batch in batches:
            if not (
                0 <= batch.first_offset <= batch.last_offset <= OFFSET_MAX
                and 0 <= batch.delivery_count <= DELIVERY_COUNT_MAX
            ):
                raise OperatingError(ErrorCode.INVALID_REQUEST, f"malformed persisted state batch {batch}")
            if batch.state not in PERSISTED_STATES:
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST,
                    f"persisted state batch {batch} has state {RecordState(batch.state).name}, "
                    "which is never persisted; the share-state log is corrupt",
                )
        self._settings = settings
        self._start_offset = start_offset
        self._end_offset = start_offset
        self._runs: list[_Run] = []
        self._acquired_record_count = 0
        self._delivery_complete_count = 0
        # Acquired offsets per lock deadline, plus a lazy min-heap of those deadlines.
        self._deadline_offsets: dict[int, int] = {}
        self._deadline_heap: list[int] = []

        counts: dict[str, int] = {}
        archived: list[StateBatch] = []
        limit = settings.delivery_count_limit
        for batch in merge_state_batches(batches, start_offset):
            if batch.first_offset > self._end_offset:
                # Kafka's gap window: offsets no batch covers were never delivered.
                self._append(_Run(self._end_offset, batch.first_offset - 1, RecordState.AVAILABLE, 0))
            state = batch.state
            if state == RecordState.AVAILABLE and batch.delivery_count >= limit:
                # Handed out `limit` times and the last attempt never completed.
                state = RecordState.ARCHIVED
                archived.append(StateBatch(batch.first_offset, batch.last_offset, state, batch.delivery_count))
                _increment(counts, "archived_delivery_limit", batch.last_offset - batch.first_offset + 1)
            self._append(_Run(batch.first_offset, batch.last_offset, state, batch.delivery_count))
        self._coalesce(0, len(self._runs))
        moved = self._advance_start_offset()
        #: What loading changed and the shell should persist (archived at the limit,
        #: collapsed start offset); ``write`` is None when loading changed nothing.
        self.load_change = self._change(archived, moved, counts)

    # ------------------------------------------------------------------ queries

    @property
    def settings(self) -> SharePartitionSettings:
        return self._settings

    @property
    def start_offset(self) -> int:
        """The share-partition start offset (SPSO): everything below is delivery-complete."""
        return self._start_offset

    @property
    def end_offset(self) -> int:
        """One past the last offset of the in-flight window (== start_offset when empty)."""
        return self._end_offset

    @property
    def delivery_complete_count(self) -> int:
        """Offsets at or above the start offset that are already terminal (KIP-1226)."""
        return self._delivery_complete_count

    @property
    def acquired_record_count(self) -> int:
        """Offsets currently ACQUIRED (held under a lock), including any below the start offset."""
        return self._acquired_record_count

    @property
    def in_flight_record_count(self) -> int:
        """Offsets in the window plus acquired offsets stranded below the start offset."""
        return sum(run.size for run in self._runs)

    def lag(self, partition_end_offset: int) -> int:
        """Records not yet delivery-complete up to ``partition_end_offset`` (KIP-1226)."""
        return max(0, partition_end_offset - self._start_offset - self._delivery_complete_count)

    def next_fetch_offset(self) -> int:
        """Where the shell should read the log from: first AVAILABLE offset, else end_offset."""
        for run in islice(self._runs, self._window_index(), None):
            if run.state == RecordState.AVAILABLE:
                return run.first
        return self._end_offset

    def can_acquire(self) -> bool:
        """Whether an acquisition could hand anything out (§2.1).

        Records inside the window can always be redelivered; new records only while
        the window is narrower than ``partition_max_record_locks``.
        """
        if self.next_fetch_offset() < self._end_offset:
            return True
        return self._end_offset - self._start_offset < self._settings.partition_max_record_locks

    def next_deadline_ms(self) -> int | None:
        """The earliest acquisition-lock deadline, or None when nothing is acquired."""
        while self._deadline_heap and self._deadline_heap[0] not in self._deadline_offsets:
            heapq.heappop(self._deadline_heap)
        return self._deadline_heap[0] if self._deadline_heap else None

    def runs(self) -> list[tuple[int, int, RecordState, int, str | None, int | None]]:
        """(first, last, state, delivery_count, member_id, lock_deadline_ms) per run, in order."""
        return [
            (run.first, run.last, run.state, run.delivery_count, run.member_id, run.deadline_ms)
            for run in self._runs
        ]

    # --------------------------------------------------------------- operations

    def update_settings(self, settings: SharePartitionSettings) -> Change:
        """Apply a group-config change (KIP-1240).

        A new lock duration applies to the next acquisition or renewal, a new window
        cap to the next acquisition. A lowered delivery-count limit archives the
        AVAILABLE records already at it, which is what a reload would do; ACQUIRED
        records finish their attempt and meet the new limit when it completes.
        """
        self._settings = settings
        limit = settings.delivery_count_limit
        archived: list[StateBatch] = []
        for run in self._runs[self._window_index():]:
            if run.state == RecordState.AVAILABLE and run.delivery_count >= limit:
                self._assign(run, RecordState.ARCHIVED, run.delivery_count, None, None)
                archived.append(StateBatch(run.first, run.last, RecordState.ARCHIVED, run.delivery_count))
        counts: dict[str, int] = {}
        _increment(counts, "archived_delivery_limit", sum(b.last_offset - b.first_offset + 1 for b in archived))
        self._coalesce(0, len(self._runs))
        moved = self._advance_start_offset()
        return self._change(archived, moved, counts)

    def acquire(
        self,
        member_id: str,
        log_batches: Sequence[tuple[int, int]],
        max_records: int,
        mode: AcquireMode,
        now_ms: int,
    ) -> tuple[list[AcquiredRange], Change]:
        """Acquire records for ``member_id`` from the log batches the shell read.

        ``log_batches`` are the (base_offset, last_offset) of whole log batches read
        starting at :meth:`next_fetch_offset`, below the high watermark, in order.
        Offsets inside a batch without a record (compaction holes, control records)
        are acquired; the client acknowledges them as GAP. Offsets the read skipped
        (before the first batch or between batches) are no longer in the log and are
        archived without being delivered, so the start offset can pass them.

        In BATCH_OPTIMIZED mode ``max_records`` is soft: the acquisition extends to
        the end of the log batch that holds the last counted record. In RECORD_LIMIT
        mode at most ``max_records`` offsets are acquired. New offsets never reach
        ``start_offset + partition_max_record_locks``.
        """
        if not member_id:
            raise OperatingError(ErrorCode.INVALID_REQUEST, "member id must not be empty")
        if max_records < 1:
            raise OperatingError(ErrorCode.INVALID_REQUEST, f"max records must be >= 1, got {max_records}")
        previous_last = -1
        for base_offset, last_offset in log_batches:
            assert 0 <= base_offset <= last_offset and base_offset > previous_last, log_batches
            previous_last = last_offset
        fetch_offset = self.next_fetch_offset()
        if not log_batches or log_batches[-1][1] < fetch_offset or not self.can_acquire():
            return [], Change(None, {})

        pieces = self._split_by_log(
            self._available_segments(fetch_offset, log_batches[-1][1]), log_batches
        )
        taken, absent = self._select(pieces, log_batches, max_records, mode)

        counts: dict[str, int] = {}
        writes: list[StateBatch] = []
        deadline_ms = now_ms + self._settings.record_lock_duration_ms
        acquired: list[AcquiredRange] = []
        # In offset order, because new offsets must extend the window contiguously.
        steps = sorted([(f, l, c, True) for f, l, c in taken] + [(f, l, c, False) for f, l, c in absent])
        for first, last, count, is_taken in steps:
            if not is_taken:
                self._set_range(first, last, lambda run: (RecordState.ARCHIVED, run.delivery_count, None, None))
                writes.append(StateBatch(first, last, RecordState.ARCHIVED, count))
                _increment(counts, "archived_absent", last - first + 1)
                continue
            new_count = count + 1
            self._set_range(first, last, lambda run: (RecordState.ACQUIRED, new_count, member_id, deadline_ms))
            # Persisted as AVAILABLE with the new count: see "The persistence model".
            writes.append(StateBatch(first, last, RecordState.AVAILABLE, new_count))
            _increment(counts, "acquired", last - first + 1)
            if acquired and acquired[-1].last_offset + 1 == first and acquired[-1].delivery_count == new_count:
                acquired[-1] = AcquiredRange(acquired[-1].first_offset, last, new_count)
            else:
                acquired.append(AcquiredRange(first, last, new_count))
        moved = self._advance_start_offset()
        return acquired, self._change(writes, moved, counts)

    def acknowledge(self, member_id: str, batches: Sequence[AcknowledgementBatch], now_ms: int) -> Change:
        """Apply acknowledgements atomically: all batches succeed, or nothing changes.

        ACCEPT -> ACKNOWLEDGED, RELEASE -> AVAILABLE (ARCHIVED at the limit),
        REJECT and GAP -> ARCHIVED, RENEW -> lock restarted. Every offset at or above
        the start offset must be ACQUIRED by ``member_id`` under a valid lock
        (INVALID_RECORD_STATE otherwise); a range reaching ``end_offset`` or a types
        tuple of the wrong length is INVALID_REQUEST.
        """
        segments = self._validate_acknowledgements(member_id, batches, now_ms)
        counts: dict[str, int] = {}
        writes: list[StateBatch] = []
        renewed_deadline_ms = now_ms + self._settings.record_lock_duration_ms
        for first, last, ack_type in segments:
            if first < self._start_offset:
                # Below the start offset only records this member still holds can be
                # acknowledged (validated above): they were stranded by a log start
                # move, their attempt is over and they are archived, which needs no write.
                self._drop_acquired(first, min(last, self._start_offset - 1), member_id)
                if last < self._start_offset:
                    continue
                first = self._start_offset
            _increment(counts, ack_type.name.lower(), last - first + 1)
            if ack_type == AcknowledgeType.RENEW:
                self._set_range(
                    first, last, lambda run: (run.state, run.delivery_count, member_id, renewed_deadline_ms)
                )
                continue
            touched = self._set_range(first, last, lambda run: self._completed_state(run, ack_type))
            for run_first, run_last, state, count in touched:
                if ack_type == AcknowledgeType.RELEASE and state == RecordState.ARCHIVED:
                    _increment(counts, "archived_delivery_limit", run_last - run_first + 1)
                if state != RecordState.AVAILABLE:
                    writes.append(StateBatch(run_first, run_last, state, count))
        moved = self._advance_start_offset()
        return self._change(writes, moved, counts)

    def release_member(self, member_id: str, now_ms: int) -> Change:
        """End every attempt held by ``member_id`` (left, closed its session, timed out).

        Its ACQUIRED records become AVAILABLE, or ARCHIVED at the delivery-count limit
        or below the start offset. The delivery count is kept (see the module
        docstring). ``now_ms`` is accepted for a uniform shell interface; releasing
        does not depend on the time.
        """
        del now_ms
        return self._end_attempts(lambda run: run.member_id == member_id, "released_member")

    def expire(self, now_ms: int) -> Change:
        """End every attempt whose lock deadline is at or before ``now_ms``."""
        next_deadline_ms = self.next_deadline_ms()
        if next_deadline_ms is None or next_deadline_ms > now_ms:
            return Change(None, {})
        return self._end_attempts(
            lambda run: run.deadline_ms is not None and run.deadline_ms <= now_ms, "lock_expired"
        )

    def update_log_start_offset(self, log_start_offset: int) -> Change:
        """The log start offset moved forward (retention, DeleteRecords; §2.5).

        Ignored unless it passes the start offset. AVAILABLE records below it are
        archived, terminal ones forgotten, ACQUIRED ones stay acquired until their
        attempt ends; the start offset moves to it (and the end offset with it if the
        window is empty). The new start offset is written at once.
        """
        if log_start_offset <= self._start_offset:
            return Change(None, {})
        counts: dict[str, int] = {}
        self._split_at(log_start_offset)
        low = self._window_index()
        high = bisect_left(self._runs, log_start_offset, key=_run_first)
        kept: list[_Run] = []
        for run in self._runs[low:high]:
            if run.state == RecordState.ACQUIRED:
                kept.append(run)
                continue
            if run.state == RecordState.AVAILABLE:
                _increment(counts, "archived_log_start", run.size)
            self._account(run, -1)
        self._runs[low:high] = kept
        self._start_offset = log_start_offset
        self._end_offset = max(self._end_offset, log_start_offset)
        self._advance_start_offset()
        return self._change([], True, counts)

    # ------------------------------------------------------------ invariants

    def assert_invariants(self) -> None:
        """Check the structural invariants (for tests; cost O(runs))."""
        acquired = complete = 0
        deadline_offsets: dict[int, int] = {}
        previous: _Run | None = None
        for run in self._runs:
            assert run.first <= run.last, "empty run"
            assert previous is None or previous.last < run.first, "runs overlap or are unsorted"
            assert run.first >= self._start_offset or run.last < self._start_offset, "run straddles start"
            if run.first < self._start_offset:
                assert run.state == RecordState.ACQUIRED, "only acquired runs stay below the start offset"
            else:
                expected_first = self._start_offset if previous is None or previous.last < self._start_offset \
                    else previous.last + 1
                assert run.first == expected_first, "hole in the window"
                if previous is not None and previous.last + 1 == run.first and run.first != self._start_offset:
                    assert previous.key() != run.key(), "equal neighbours not merged"
            assert (run.state == RecordState.ACQUIRED) == (run.member_id is not None), "holder iff acquired"
            assert (run.state == RecordState.ACQUIRED) == (run.deadline_ms is not None), "deadline iff acquired"
            assert 0 <= run.delivery_count, "negative delivery count"
            if run.state == RecordState.ACQUIRED:
                assert run.delivery_count >= 1, "acquired record never delivered"
                acquired += run.size
                assert run.deadline_ms is not None
                deadline_offsets[run.deadline_ms] = deadline_offsets.get(run.deadline_ms, 0) + run.size
            elif run.state in TERMINAL_STATES:
                complete += run.size
            previous = run
        window = [run for run in self._runs if run.first >= self._start_offset]
        expected_end = window[-1].last + 1 if window else self._start_offset
        assert self._end_offset == expected_end, "end offset does not match the window"
        assert not window or window[0].state not in TERMINAL_STATES, "terminal prefix not collapsed"
        assert acquired == self._acquired_record_count, "acquired counter drifted"
        assert complete == self._delivery_complete_count, "delivery-complete counter drifted"
        assert deadline_offsets == self._deadline_offsets, "deadline index drifted"
        assert len(self._deadline_heap) <= 2 * len(self._deadline_offsets) + 16, "deadline heap unbounded"

    # --------------------------------------------------------------- internals

    def _window_index(self) -> int:
        """Index of the first run at or above the start offset."""
        return bisect_left(self._runs, self._start_offset, key=_run_first)

    def _account(self, run: _Run, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) a run's contribution to the counters."""
        amount = sign * run.size
        if run.state == RecordState.ACQUIRED:
            assert run.deadline_ms is not None
            self._acquired_record_count += amount
            remaining = self._deadline_offsets.get(run.deadline_ms, 0) + amount
            if remaining:
                if run.deadline_ms not in self._deadline_offsets:
                    heapq.heappush(self._deadline_heap, run.deadline_ms)
                self._deadline_offsets[run.deadline_ms] = remaining
            else:
                del self._deadline_offsets[run.deadline_ms]
                # Stale heap entries are popped lazily; rebuild before they pile up.
                if len(self._deadline_heap) > 2 * len(self._deadline_offsets) + 16:
                    self._deadline_heap = sorted(self._deadline_offsets)
        elif run.state in TERMINAL_STATES:
            self._delivery_complete_count += amount

    def _assign(
        self, run: _Run, state: RecordState, delivery_count: int, member_id: str | None, deadline_ms: int | None
    ) -> None:
        self._account(run, -1)
        run.state, run.delivery_count, run.member_id, run.deadline_ms = state, delivery_count, member_id, deadline_ms
        self._account(run, +1)

    def _append(self, run: _Run) -> None:
        assert run.first == self._end_offset, "the window must stay contiguous"
        self._runs.append(run)
        self._account(run, +1)
        self._end_offset = run.last + 1

    def _split_at(self, offset: int) -> None:
        """Make ``offset`` the first offset of a run if a run contains it."""
        index = bisect_right(self._runs, offset, key=_run_first) - 1
        if index < 0:
            return
        run = self._runs[index]
        if run.first < offset <= run.last:
            tail = _Run(offset, run.last, run.state, run.delivery_count, run.member_id, run.deadline_ms)
            run.last = offset - 1
            self._runs.insert(index + 1, tail)

    def _coalesce(self, low: int, high: int) -> None:
        """Merge equal adjacent runs among indexes [low-1, high] (never across the start offset)."""
        low, high = max(low - 1, 0), min(high + 1, len(self._runs))
        index = high - 1
        while index > low:
            left, right = self._runs[index - 1], self._runs[index]
            if left.last + 1 == right.first and right.first != self._start_offset and left.key() == right.key():
                left.last = right.last
                del self._runs[index]
            index -= 1

    def _set_range(
        self,
        first: int,
        last: int,
        transition: Callable[[_Run], tuple[RecordState, int, str | None, int | None]],
    ) -> list[tuple[int, int, RecordState, int]]:
        """Apply ``transition`` to every run in [first, last], appending past the end.

        Returns (first, last, new state, new delivery count) per run touched.
        """
        if first >= self._end_offset:
            assert first == self._end_offset, "the window must stay contiguous"
            self._append(_Run(first, last, RecordState.AVAILABLE, 0))
        else:
            assert last < self._end_offset, "a range must not straddle the end offset"
        self._split_at(first)
        self._split_at(last + 1)
        low = bisect_left(self._runs, first, key=_run_first)
        high = bisect_right(self._runs, last, key=_run_first)
        touched = []
        for run in self._runs[low:high]:
            state, count, member_id, deadline_ms = transition(run)
            self._assign(run, state, count, member_id, deadline_ms)
            touched.append((run.first, run.last, state, count))
        self._coalesce(low, high)
        return touched

    def _completed_state(
        self, run: _Run, ack_type: AcknowledgeType
    ) -> tuple[RecordState, int, str | None, int | None]:
        """The state a run takes when its attempt ends with ``ack_type``."""
        if ack_type == AcknowledgeType.ACCEPT:
            return (RecordState.ACKNOWLEDGED, run.delivery_count, None, None)
        if ack_type == AcknowledgeType.RELEASE and run.delivery_count < self._settings.delivery_count_limit:
            return (RecordState.AVAILABLE, run.delivery_count, None, None)
        return (RecordState.ARCHIVED, run.delivery_count, None, None)

    def _drop_acquired(self, first: int, last: int, member_id: str) -> None:
        """Forget the stranded offsets in [first, last] below the start offset ``member_id`` holds."""
        assert last < self._start_offset
        self._split_at(first)
        self._split_at(last + 1)
        low = bisect_left(self._runs, first, key=_run_first)
        high = bisect_right(self._runs, last, key=_run_first)
        kept = []
        for run in self._runs[low:high]:
            if run.member_id == member_id:
                self._account(run, -1)
            else:
                kept.append(run)
        self._runs[low:high] = kept
        self._coalesce(low, low + len(kept))

    def _end_attempts(self, selected: Callable[[_Run], bool], count_key: str) -> Change:
        """End the attempts of the ACQUIRED runs ``selected`` picks (release semantics)."""
        counts: dict[str, int] = {}
        writes: list[StateBatch] = []
        limit = self._settings.delivery_count_limit
        kept: list[_Run] = []
        for run in self._runs:
            if run.state != RecordState.ACQUIRED or not selected(run):
                kept.append(run)
                continue
            _increment(counts, count_key, run.size)
            if run.first < self._start_offset:
                self._account(run, -1)
                continue
            if run.delivery_count >= limit:
                self._assign(run, RecordState.ARCHIVED, run.delivery_count, None, None)
                writes.append(StateBatch(run.first, run.last, RecordState.ARCHIVED, run.delivery_count))
                _increment(counts, "archived_delivery_limit", run.size)
            else:
                # Persisted state is already (count, AVAILABLE): nothing to write.
                self._assign(run, RecordState.AVAILABLE, run.delivery_count, None, None)
            kept.append(run)
        self._runs = kept
        self._coalesce(0, len(self._runs))
        moved = self._advance_start_offset()
        return self._change(writes, moved, counts)

    def _advance_start_offset(self) -> bool:
        """Move the start offset past a contiguous terminal prefix; return whether it moved."""
        low = self._window_index()
        high = low
        while (
            high < len(self._runs)
            and self._runs[high].first == self._start_offset
            and self._runs[high].state in TERMINAL_STATES
        ):
            self._start_offset = self._runs[high].last + 1
            self._account(self._runs[high], -1)
            high += 1
        del self._runs[low:high]
        return high > low

    def _change(self, batches: list[StateBatch], start_moved: bool, counts: dict[str, int]) -> Change:
        """Package persisted changes: batches clipped to the start offset, sorted, joined."""
        clipped = sorted(
            (
                StateBatch(max(b.first_offset, self._start_offset), b.last_offset, b.state, b.delivery_count)
                for b in batches
                if b.last_offset >= self._start_offset
            ),
            key=lambda batch: batch.first_offset,
        )
        joined: list[StateBatch] = []
        for batch in clipped:
            previous = joined[-1] if joined else None
            if (
                previous is not None
                and previous.last_offset + 1 == batch.first_offset
                and (previous.state, previous.delivery_count) == (batch.state, batch.delivery_count)
            ):
                joined[-1] = StateBatch(previous.first_offset, batch.last_offset, batch.state, batch.delivery_count)
            else:
                joined.append(batch)
        if not joined and not start_moved:
            return Change(None, counts)
        return Change(StateWrite(self._start_offset, self._delivery_complete_count, tuple(joined)), counts)

    def _available_segments(self, fetch_offset: int, scan_last: int) -> list[tuple[int, int, int]]:
        """(first, last, delivery_count) of acquirable offsets in [fetch_offset, scan_last].

        AVAILABLE runs of the window, then new offsets from the end offset up to the
        window cap, which have delivery count 0.
        """
        segments: list[tuple[int, int, int]] = []
        index = bisect_right(self._runs, fetch_offset, key=_run_first) - 1
        for run in self._runs[max(index, self._window_index()):]:
            if run.first > scan_last:
                break
            if run.state == RecordState.AVAILABLE and run.last >= fetch_offset:
                segments.append((max(run.first, fetch_offset), min(run.last, scan_last), run.delivery_count))
        new_last = min(scan_last, self._start_offset + self._settings.partition_max_record_locks - 1)
        if self._end_offset <= new_last:
            segments.append((self._end_offset, new_last, 0))
        return segments

    @staticmethod
    def _split_by_log(
        segments: list[tuple[int, int, int]], log_batches: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int, int, bool]]:
        """Cut segments into pieces that lie inside a log batch (True) or outside all (False)."""
        pieces: list[tuple[int, int, int, bool]] = []
        batch_index = 0
        for first, last, count in segments:
            cursor = first
            while cursor <= last:
                while batch_index < len(log_batches) and log_batches[batch_index][1] < cursor:
                    batch_index += 1
                if batch_index == len(log_batches):
                    pieces.append((cursor, last, count, False))
                    break
                base_offset, batch_last = log_batches[batch_index]
                if cursor < base_offset:
                    end = min(last, base_offset - 1)
                    pieces.append((cursor, end, count, False))
                else:
                    end = min(last, batch_last)
                    pieces.append((cursor, end, count, True))
                cursor = end + 1
        return pieces

    def _validate_acknowledgements(
        self, member_id: str, batches: Sequence[AcknowledgementBatch], now_ms: int
    ) -> list[tuple[int, int, AcknowledgeType]]:
        """Check a whole acknowledgement against the current state, changing nothing.

        Returns (first, last, type) segments in offset order, one per stretch of equal
        types, so that applying them cannot fail.
        """
        segments: list[tuple[int, int, AcknowledgeType]] = []
        for batch in batches:
            first, last = batch.first_offset, batch.last_offset
            if first < 0 or first > last:
                raise OperatingError(ErrorCode.INVALID_REQUEST, f"acknowledgement range {first}-{last} is malformed")
            size = last - first + 1
            if len(batch.types) not in (1, size):
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST,
                    f"acknowledgement {first}-{last} carries {len(batch.types)} types; "
                    f"send 1 for the whole range or {size}, one per offset",
                )
            try:
                types = [AcknowledgeType(ack_type) for ack_type in batch.types]
            except ValueError as error:
                raise OperatingError(ErrorCode.INVALID_REQUEST, f"invalid acknowledge type: {error}") from error
            if last >= self._end_offset and last >= self._start_offset:
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST,
                    f"acknowledgement {first}-{last} reaches past the in-flight window, "
                    f"which ends before offset {self._end_offset}",
                )
            if AcknowledgeType.RENEW in types and not self._settings.renew_acknowledge_enable:
                raise OperatingError(
                    ErrorCode.INVALID_RECORD_STATE, "RENEW acknowledgements are disabled for this share group"
                )
            if len(types) == 1:
                segments.append((first, last, types[0]))
                continue
            segment_first = first
            for offset in range(first + 1, last + 2):
                if offset > last or types[offset - first] != types[segment_first - first]:
                    segments.append((segment_first, offset - 1, types[segment_first - first]))
                    segment_first = offset
        segments.sort(key=lambda segment: segment[0])
        for previous, segment in zip(segments, segments[1:]):
            if segment[0] <= previous[1]:
                raise OperatingError(
                    ErrorCode.INVALID_REQUEST, f"acknowledgement batches overlap at offset {segment[0]}"
                )
        for first, last, _ in segments:
            if first < self._start_offset:
                self._check_held_below_start(member_id, first, min(last, self._start_offset - 1), now_ms)
            self._check_held(member_id, max(first, self._start_offset), last, now_ms)
        return segments

    def _check_held_below_start(self, member_id: str, first: int, last: int, now_ms: int) -> None:
        """Refuse an acknowledgement below the start offset unless the member still holds it.

        Kafka silently ignores acknowledgements below the start offset (§2.5). shoal
        answers them as a user would expect instead: the only records kept below the
        start offset are acquisitions stranded by a log-start move, and only their
        holder, under a valid lock, may acknowledge them. Anything else there was
        already settled, usually by another member after this one's lock expired, and
        reporting success would tell a consumer that its stale RELEASE or ACCEPT took
        effect when it did not (reliability-plan.md I11; found by the chaos suite).
        """
        self._check_held(member_id, first, last, now_ms)
        low = bisect_right(self._runs, first, key=_run_first) - 1
        covered = 0
        for run in self._runs[max(low, 0):]:
            if run.first > last:
                break
            covered += max(0, min(run.last, last) - max(run.first, first) + 1)
        if covered < last - first + 1:
            raise OperatingError(
                ErrorCode.INVALID_RECORD_STATE,
                f"offsets {first}-{last} are below the share-partition start offset {self._start_offset} and "
                f"not held by {member_id}: they were already acknowledged or archived",
            )

    def _check_held(self, member_id: str, first: int, last: int, now_ms: int) -> None:
        """Raise INVALID_RECORD_STATE unless ``member_id`` holds [first, last] under a valid lock."""
        if first > last:
            return
        # max(): with no run starting at or before ``first``, -1 would wrap to the last run.
        index = max(bisect_right(self._runs, first, key=_run_first) - 1, 0)
        while index < len(self._runs) and self._runs[index].first <= last:
            run = self._runs[index]
            offset = max(run.first, first)
            if run.state != RecordState.ACQUIRED:
                raise OperatingError(
                    ErrorCode.INVALID_RECORD_STATE,
                    f"offset {offset} is {run.state.name}, not acquired; its lock may have expired "
                    "or it was already acknowledged",
                )
            if run.member_id != member_id:
                raise OperatingError(
                    ErrorCode.INVALID_RECORD_STATE, f"offset {offset} is held by another member, not {member_id}"
                )
            assert run.deadline_ms is not None
            if run.deadline_ms <= now_ms:
                raise OperatingError(
                    ErrorCode.INVALID_RECORD_STATE,
                    f"the acquisition lock of offset {offset} expired at {run.deadline_ms} ms; "
                    "the record will be delivered again",
                )
            index += 1

    def _select(
        self,
        pieces: list[tuple[int, int, int, bool]],
        log_batches: Sequence[tuple[int, int]],
        max_records: int,
        mode: AcquireMode,
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Choose what to acquire and what to archive as absent; returns (taken, absent)."""
        limit = self._settings.delivery_count_limit
        isolate_last_attempt = limit > 2
        taken: list[tuple[int, int, int]] = []
        absent: list[tuple[int, int, int]] = []
        remaining = max_records
        extend_to: int | None = None  # inclusive end of the log batch, once the budget is spent
        for first, last, count, present in pieces:
            if extend_to is not None:
                if first > extend_to:
                    break
                last = min(last, extend_to)
            elif remaining == 0:
                break
            if not present:
                absent.append((first, last, count))
                continue
            if isolate_last_attempt and count >= limit - 1:
                # Poison isolation: the last attempt of an offset goes out alone.
                if not taken:
                    taken.append((first, first, count))
                break
            take_last = last
            if extend_to is None:
                take_last = min(last, first + remaining - 1)
                remaining -= take_last - first + 1
                if remaining == 0 and mode == AcquireMode.BATCH_OPTIMIZED:
                    # The budget is soft: finish the log batch holding the last record.
                    batch_index = bisect_right(log_batches, take_last, key=lambda batch: batch[0]) - 1
                    extend_to = log_batches[batch_index][1]
                    take_last = min(last, extend_to)
            taken.append((first, take_last, count))
        return taken, absent
