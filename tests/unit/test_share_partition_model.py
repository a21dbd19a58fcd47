"""Model-based test of the share-partition state machine against a naive per-offset model.

The model keeps one entry per offset (state, delivery count, holder, lock deadline)
and the persisted share state as a per-offset maximum of every write emitted so far,
exactly as the share coordinator would merge them. Hypothesis drives a simulated shell:
several members acquire from a log with compacted-away batches, acknowledge with every
type (RENEW included), the clock advances and locks expire, members leave, the log start
offset moves, settings change, and the partition crashes and is rebuilt from the writes.

The model decides acknowledgement outcomes on its own. For acquisitions it checks that
what the partition chose is legal (available, present in the log, within the window cap,
poison isolated, bounded by max_records, progress when progress is possible), then
applies it; the exact selection algorithm is covered by the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_partition import (
    TERMINAL_STATES,
    AcknowledgeType,
    AcknowledgementBatch,
    AcquireMode,
    RecordState,
    SharePartition,
    SharePartitionSettings,
    StateBatch,
)

A, Q, K, X = RecordState.AVAILABLE, RecordState.ACQUIRED, RecordState.ACKNOWLEDGED, RecordState.ARCHIVED
MEMBERS = ("m0", "m1", "m2")
LOG_END = 80


@dataclass(frozen=True)
class Record:
    state: RecordState
    delivery_count: int
    member_id: str | None = None
    deadline_ms: int | None = None


def expand(partition: SharePartition) -> dict[int, Record]:
    records: dict[int, Record] = {}
    for first, last, state, count, member_id, deadline_ms in partition.runs():
        for offset in range(first, last + 1):
            assert offset not in records, f"offset {offset} appears in two runs"
            records[offset] = Record(state, count, member_id, deadline_ms)
    return records


class SharePartitionModel(RuleBasedStateMachine):
    @initialize(
        batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=30),
        present=st.lists(st.booleans(), min_size=30, max_size=30),
        limit=st.integers(2, 5),
        cap=st.integers(8, 40),
    )
    def setup(self, batch_sizes: list[int], present: list[bool], limit: int, cap: int) -> None:
        self.log_batches: list[tuple[int, int]] = []
        base = 0
        for index, size in enumerate(batch_sizes):
            if base >= LOG_END:
                break
            last = min(base + size - 1, LOG_END - 1)
            # Mostly present; a missing batch was removed whole by compaction.
            if present[index] or index % 4 != 0:
                self.log_batches.append((base, last))
            base = last + 1
        self.log_start_offset = 0
        self.settings = SharePartitionSettings(
            record_lock_duration_ms=100, delivery_count_limit=limit, partition_max_record_locks=cap
        )
        self.limit_ceiling = limit
        self.partition = SharePartition(self.settings, 0)
        self.now_ms = 0
        # The naive model.
        self.records: dict[int, Record] = {}
        self.start_offset = 0
        self.end_offset = 0
        # What the share coordinator holds: per-offset max of (delivery count, state id).
        self.persisted: dict[int, tuple[int, int]] = {}
        self.persisted_start_offset = 0
        # History across crashes.
        self.delivered_max: dict[int, int] = {}
        self.accepted: set[int] = set()
        self.start_offsets_seen = [0]

    # ------------------------------------------------------------ model helpers

    def persist(self, change) -> None:
        write = change.write
        if write is None:
            return
        assert write.start_offset >= self.persisted_start_offset, "persisted start offset went backwards"
        self.persisted_start_offset = write.start_offset
        for batch in write.batches:
            assert batch.state != Q, "ACQUIRED is never persisted"
            assert batch.first_offset >= write.start_offset
            for offset in range(batch.first_offset, batch.last_offset + 1):
                pair = (batch.delivery_count, int(batch.state))
                previous = self.persisted.get(offset, (0, int(A)))
                assert pair > previous, f"persisted (count, state) at {offset} not increasing: {previous} -> {pair}"
                self.persisted[offset] = pair
        assert write.delivery_complete_count == self.partition.delivery_complete_count

    def advance_start_offset(self) -> None:
        while self.start_offset < self.end_offset and self.records[self.start_offset].state in TERMINAL_STATES:
            del self.records[self.start_offset]
            self.start_offset += 1

    def end_attempt(self, offset: int) -> None:
        """Release semantics: AVAILABLE, or ARCHIVED at the limit; forgotten below the start."""
        record = self.records[offset]
        if offset < self.start_offset:
            del self.records[offset]
        elif record.delivery_count >= self.settings.delivery_count_limit:
            self.records[offset] = Record(X, record.delivery_count)
        else:
            self.records[offset] = Record(A, record.delivery_count)

    def held_by(self, member_id: str) -> list[int]:
        return sorted(o for o, r in self.records.items() if r.state == Q and r.member_id == member_id)

    # -------------------------------------------------------------------- rules

    @rule(
        member_id=st.sampled_from(MEMBERS),
        batch_count=st.integers(0, 4),
        max_records=st.integers(1, 12),
        mode=st.sampled_from(AcquireMode),
    )
    def acquire(self, member_id: str, batch_count: int, max_records: int, mode: AcquireMode) -> None:
        fetch_offset = self.partition.next_fetch_offset()
        read = [b for b in self.log_batches if b[1] >= fetch_offset][:batch_count]
        could_acquire = self.partition.can_acquire()
        window_cap_end = self.start_offset + self.settings.partition_max_record_locks
        limit = self.settings.delivery_count_limit
        ranges, change = self.partition.acquire(member_id, read, max_records, mode, self.now_ms)
        self.persist(change)

        def present(offset: int) -> bool:
            return any(first <= offset <= last for first, last in read)

        def acquirable(offset: int) -> bool:
            if offset >= self.end_offset:
                return offset < window_cap_end
            return self.records[offset].state == A

        acquired: list[int] = []
        for acquired_range in ranges:
            for offset in range(acquired_range.first_offset, acquired_range.last_offset + 1):
                assert offset >= fetch_offset and present(offset) and acquirable(offset), offset
                assert offset not in self.accepted, f"accepted offset {offset} acquired again"
                previous_count = self.records[offset].delivery_count if offset < self.end_offset else 0
                assert acquired_range.delivery_count == previous_count + 1
                assert acquired_range.delivery_count <= limit, "delivered beyond the limit"
                if limit > 2 and previous_count == limit - 1:
                    assert len(ranges) == 1 and acquired_range.first_offset == acquired_range.last_offset, \
                        "a last attempt must be delivered alone"
                acquired.append(offset)
        assert acquired == sorted(set(acquired))
        if mode == AcquireMode.RECORD_LIMIT:
            assert len(acquired) <= max_records
        else:
            largest_batch = max((last - first + 1 for first, last in read), default=0)
            assert len(acquired) <= max_records + largest_batch
        candidates = [
            o for o in range(fetch_offset, (read[-1][1] + 1) if read else fetch_offset)
            if present(o) and acquirable(o)
        ]
        if could_acquire and candidates:
            assert acquired, "nothing acquired although records were available"
        event("acquire: some" if acquired else "acquire: none")

        # Offsets the partition archived: they must be missing from the log.
        after = expand(self.partition)
        touched_last = max(acquired, default=-1)
        for offset in range(fetch_offset, self.partition.end_offset):
            record = after.get(offset)  # None: archived and already below the start offset
            if offset in acquired or not acquirable(offset) or (record is not None and record.state != X):
                continue
            assert not present(offset), f"offset {offset} is in the log but was archived"
            count = self.records[offset].delivery_count if offset < self.end_offset else 0
            self.records[offset] = Record(X, count)
            touched_last = max(touched_last, offset)
        for offset in acquired:
            count = self.records[offset].delivery_count + 1 if offset < self.end_offset else 1
            self.records[offset] = Record(Q, count, member_id, self.now_ms + self.settings.record_lock_duration_ms)
            self.delivered_max[offset] = count
        self.end_offset = max(self.end_offset, touched_last + 1)
        self.advance_start_offset()

    @rule(data=st.data(), member_id=st.sampled_from(MEMBERS))
    def acknowledge(self, data: st.DataObject, member_id: str) -> None:
        held = self.held_by(member_id)
        batches: list[AcknowledgementBatch] = []
        for _ in range(data.draw(st.integers(1, 3))):
            if held and data.draw(st.booleans()):
                first = data.draw(st.sampled_from(held))
                last = data.draw(st.integers(first, first + 4))
            else:
                first = data.draw(st.integers(0, self.end_offset + 2))
                last = data.draw(st.integers(first, first + 3))
            if data.draw(st.booleans()):
                types = (data.draw(st.sampled_from(AcknowledgeType)),)
            else:
                types = tuple(data.draw(st.sampled_from(AcknowledgeType)) for _ in range(last - first + 1))
            batches.append(AcknowledgementBatch(first, last, types))

        expected_error = self.expected_acknowledge_error(member_id, batches)
        before = (self.partition.runs(), self.partition.start_offset, self.partition.end_offset)
        try:
            change = self.partition.acknowledge(member_id, batches, self.now_ms)
        except OperatingError as error:
            event(f"acknowledge refused: {error.code.name}")
            assert error.code == expected_error, (error, expected_error)
            assert (self.partition.runs(), self.partition.start_offset, self.partition.end_offset) == before
            return
        assert expected_error is None, f"expected {expected_error}"
        event("acknowledge applied")
        self.persist(change)
        for batch in batches:
            for offset in range(batch.first_offset, batch.last_offset + 1):
                ack_type = batch.types[0] if len(batch.types) == 1 else batch.types[offset - batch.first_offset]
                record = self.records.get(offset)
                if offset < self.start_offset:
                    if record is not None and record.member_id == member_id:
                        del self.records[offset]
                    continue
                assert record is not None and record.state == Q
                if ack_type == AcknowledgeType.ACCEPT:
                    self.records[offset] = Record(K, record.delivery_count)
                    self.accepted.add(offset)
                elif ack_type == AcknowledgeType.RELEASE:
                    self.end_attempt(offset)
                elif ack_type == AcknowledgeType.RENEW:
                    deadline_ms = self.now_ms + self.settings.record_lock_duration_ms
                    self.records[offset] = Record(Q, record.delivery_count, member_id, deadline_ms)
                else:
                    self.records[offset] = Record(X, record.delivery_count)
        self.advance_start_offset()

    def expected_acknowledge_error(self, member_id: str, batches: list[AcknowledgementBatch]) -> ErrorCode | None:
        for batch in batches:
            if batch.last_offset >= self.end_offset and batch.last_offset >= self.start_offset:
                return ErrorCode.INVALID_REQUEST
        spans = sorted((b.first_offset, b.last_offset) for b in batches)
        if any(nxt[0] <= prev[1] for prev, nxt in zip(spans, spans[1:])):
            return ErrorCode.INVALID_REQUEST
        for batch in batches:
            for offset in range(batch.first_offset, batch.last_offset + 1):
                # Below the start offset only the member's own stranded acquisitions
                # remain; anything else there was settled and the ack is stale.
                record = self.records.get(offset)
                if record is None or record.state != Q or record.member_id != member_id:
                    return ErrorCode.INVALID_RECORD_STATE
                assert record.deadline_ms is not None
                if record.deadline_ms <= self.now_ms:
                    return ErrorCode.INVALID_RECORD_STATE
        return None

    @rule(elapsed_ms=st.integers(1, 150))
    def advance_clock(self, elapsed_ms: int) -> None:
        self.now_ms += elapsed_ms

    @rule()
    def expire(self) -> None:
        expected_deadline = min(
            (r.deadline_ms for r in self.records.values() if r.deadline_ms is not None), default=None
        )
        assert self.partition.next_deadline_ms() == expected_deadline
        change = self.partition.expire(self.now_ms)
        self.persist(change)
        for offset, record in sorted(self.records.items()):
            if record.state == Q and record.deadline_ms is not None and record.deadline_ms <= self.now_ms:
                self.end_attempt(offset)
        self.advance_start_offset()

    @rule(member_id=st.sampled_from(MEMBERS))
    def member_leaves(self, member_id: str) -> None:
        self.persist(self.partition.release_member(member_id, self.now_ms))
        for offset in self.held_by(member_id):
            self.end_attempt(offset)
        self.advance_start_offset()

    @rule(distance=st.integers(0, 12))
    def move_log_start_offset(self, distance: int) -> None:
        self.log_start_offset = min(LOG_END, self.log_start_offset + distance)
        change = self.partition.update_log_start_offset(self.log_start_offset)
        self.persist(change)
        if self.log_start_offset <= self.start_offset:
            assert change.write is None
            return
        for offset in range(self.start_offset, min(self.log_start_offset, self.end_offset)):
            if self.records[offset].state != Q:
                del self.records[offset]
        self.start_offset = self.log_start_offset
        self.end_offset = max(self.end_offset, self.log_start_offset)
        self.advance_start_offset()

    @rule(limit=st.integers(2, 5), cap=st.integers(8, 40), lock_duration_ms=st.integers(50, 200))
    def update_settings(self, limit: int, cap: int, lock_duration_ms: int) -> None:
        self.settings = SharePartitionSettings(
            record_lock_duration_ms=lock_duration_ms, delivery_count_limit=limit, partition_max_record_locks=cap
        )
        self.limit_ceiling = max(self.limit_ceiling, limit)
        self.persist(self.partition.update_settings(self.settings))
        for offset in range(self.start_offset, self.end_offset):
            record = self.records[offset]
            if record.state == A and record.delivery_count >= limit:
                self.records[offset] = Record(X, record.delivery_count)
        self.advance_start_offset()

    @rule()
    def crash_and_recover(self) -> None:
        batches = [
            StateBatch(offset, offset, RecordState(state), count)
            for offset, (count, state) in self.persisted.items()
        ]
        self.partition = SharePartition(self.settings, self.persisted_start_offset, batches)
        self.persist(self.partition.load_change)
        # What the model expects: every attempt in flight ended without completing.
        for offset, record in sorted(self.records.items()):
            if record.state == Q:
                self.end_attempt(offset)
        self.advance_start_offset()

    # --------------------------------------------------------------- invariants

    @invariant()
    def partition_matches_model(self) -> None:
        if not hasattr(self, "partition"):
            return
        self.partition.assert_invariants()
        assert self.partition.start_offset == self.start_offset
        assert self.partition.end_offset == self.end_offset
        assert expand(self.partition) == self.records
        assert self.partition.acquired_record_count == sum(r.state == Q for r in self.records.values())

    @invariant()
    def delivery_counts_bounded_and_never_backwards(self) -> None:
        if not hasattr(self, "partition"):
            return
        for offset, record in expand(self.partition).items():
            assert record.delivery_count <= self.limit_ceiling
            assert record.delivery_count == self.delivered_max.get(offset, 0), "delivery count went backwards"

    @invariant()
    def start_offset_never_moves_back(self) -> None:
        if not hasattr(self, "partition"):
            return
        assert self.partition.start_offset >= self.start_offsets_seen[-1]
        self.start_offsets_seen.append(self.partition.start_offset)
        assert self.partition.start_offset == self.persisted_start_offset

    @invariant()
    def persisted_state_is_the_state_without_acquisitions(self) -> None:
        """Recovering now would lose nothing: the writes describe every non-acquired offset."""
        if not hasattr(self, "partition"):
            return
        for offset, record in self.records.items():
            if offset < self.start_offset:
                continue
            count, state = self.persisted.get(offset, (0, int(A)))
            assert count == record.delivery_count, offset
            assert state == (int(A) if record.state == Q else int(record.state)), offset


TestSharePartitionModel = SharePartitionModel.TestCase
TestSharePartitionModel.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
