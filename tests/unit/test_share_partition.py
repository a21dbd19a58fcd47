"""Unit tests of the share-partition state machine (coordinator/share_partition.py).

Scenario numbers refer to kip932-facts.md §12.
"""

from __future__ import annotations

import pytest

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_partition import (
    AcknowledgeType,
    AcknowledgementBatch,
    AcquiredRange,
    AcquireMode,
    RecordState,
    SharePartition,
    SharePartitionSettings,
    StateBatch,
    StateWrite,
    merge_state_batches,
)

A, Q, K, X = RecordState.AVAILABLE, RecordState.ACQUIRED, RecordState.ACKNOWLEDGED, RecordState.ARCHIVED
LOCK_MS = 1_000


def settings(**overrides: object) -> SharePartitionSettings:
    values: dict[str, object] = {"record_lock_duration_ms": LOCK_MS}
    values.update(overrides)
    return SharePartitionSettings(**values)  # type: ignore[arg-type]


def acquire(
    partition: SharePartition,
    member_id: str,
    log_batches: list[tuple[int, int]],
    max_records: int = 500,
    mode: AcquireMode = AcquireMode.BATCH_OPTIMIZED,
    now_ms: int = 0,
) -> list[tuple[int, int, int]]:
    ranges, _ = partition.acquire(member_id, log_batches, max_records, mode, now_ms)
    partition.assert_invariants()
    return [(r.first_offset, r.last_offset, r.delivery_count) for r in ranges]


def ack(
    partition: SharePartition,
    member_id: str,
    first: int,
    last: int,
    *types: AcknowledgeType,
    now_ms: int = 0,
):
    change = partition.acknowledge(member_id, [AcknowledgementBatch(first, last, tuple(types))], now_ms)
    partition.assert_invariants()
    return change


def snapshot(partition: SharePartition) -> tuple[object, ...]:
    return (
        partition.runs(),
        partition.start_offset,
        partition.end_offset,
        partition.delivery_complete_count,
        partition.acquired_record_count,
        partition.next_deadline_ms(),
    )


def state_at(partition: SharePartition, offset: int) -> tuple[RecordState, int, str | None] | None:
    for first, last, state, count, member_id, _ in partition.runs():
        if first <= offset <= last:
            return (state, count, member_id)
    return None


def compact(partition: SharePartition) -> list[tuple[int, int, RecordState, int, str | None]]:
    return [(f, l, s, c, m) for f, l, s, c, m, _ in partition.runs()]


def expect_error(code: ErrorCode, partition: SharePartition, operation) -> None:
    before = snapshot(partition)
    with pytest.raises(OperatingError) as raised:
        operation()
    assert raised.value.code == code
    assert snapshot(partition) == before, "a refused operation must leave the state unchanged"
    partition.assert_invariants()


# --------------------------------------------------------------- state x input


def partition_with_offset_5_in(state: RecordState) -> SharePartition:
    """Offsets 0-4 held by "other", offset 5 in ``state`` (count 1), 6-9 held by "m1"."""
    partition = SharePartition(settings(), 0)
    assert acquire(partition, "other", [(0, 4)], 5, AcquireMode.RECORD_LIMIT) == [(0, 4, 1)]
    assert acquire(partition, "m1", [(5, 9)]) == [(5, 9, 1)]
    transition = {A: AcknowledgeType.RELEASE, K: AcknowledgeType.ACCEPT, X: AcknowledgeType.REJECT}
    if state in transition:
        ack(partition, "m1", 5, 5, transition[state])
    assert state_at(partition, 5) == (state, 1, "m1" if state == Q else None)
    return partition


INPUTS = ["acquire", "accept", "release", "reject", "gap", "renew", "expire", "release_member", "log_start"]
INVALID = ErrorCode.INVALID_RECORD_STATE
#: Expected state of offset 5 after each input, "gone" when the offset left the window
#: (below the start offset and forgotten), or the error code of a refusal.
TABLE: dict[tuple[RecordState, str], object] = {
    (A, "acquire"): (Q, 2, "m2"),
    (A, "accept"): INVALID, (A, "release"): INVALID, (A, "reject"): INVALID,
    (A, "gap"): INVALID, (A, "renew"): INVALID,
    (A, "expire"): (A, 1, None),
    (A, "release_member"): (A, 1, None),
    (A, "log_start"): "gone",
    (Q, "acquire"): (Q, 1, "m1"),
    (Q, "accept"): (K, 1, None), (Q, "release"): (A, 1, None), (Q, "reject"): (X, 1, None),
    (Q, "gap"): (X, 1, None), (Q, "renew"): (Q, 1, "m1"),
    (Q, "expire"): (A, 1, None),
    (Q, "release_member"): (A, 1, None),
    (Q, "log_start"): (Q, 1, "m1"),  # stranded below the start offset until its attempt ends
    (K, "acquire"): (K, 1, None),
    (K, "accept"): INVALID, (K, "release"): INVALID, (K, "reject"): INVALID,
    (K, "gap"): INVALID, (K, "renew"): INVALID,
    (K, "expire"): (K, 1, None),
    (K, "release_member"): (K, 1, None),
    (K, "log_start"): "gone",
    (X, "acquire"): (X, 1, None),
    (X, "accept"): INVALID, (X, "release"): INVALID, (X, "reject"): INVALID,
    (X, "gap"): INVALID, (X, "renew"): INVALID,
    (X, "expire"): (X, 1, None),
    (X, "release_member"): (X, 1, None),
    (X, "log_start"): "gone",
}


def test_table_covers_every_state_and_input() -> None:
    assert set(TABLE) == {(state, name) for state in RecordState for name in INPUTS}


@pytest.mark.parametrize(("state", "name"), sorted(TABLE, key=lambda key: (int(key[0]), key[1])))
def test_every_state_and_input(state: RecordState, name: str) -> None:
    partition = partition_with_offset_5_in(state)
    expected = TABLE[(state, name)]
    ack_types = {
        "accept": AcknowledgeType.ACCEPT, "release": AcknowledgeType.RELEASE, "reject": AcknowledgeType.REJECT,
        "gap": AcknowledgeType.GAP, "renew": AcknowledgeType.RENEW,
    }
    if isinstance(expected, ErrorCode):
        expect_error(expected, partition, lambda: ack(partition, "m1", 5, 5, ack_types[name], now_ms=1))
        return
    if name == "acquire":
        acquire(partition, "m2", [(0, 9)], now_ms=1)
    elif name in ack_types:
        ack(partition, "m1", 5, 5, ack_types[name], now_ms=1)
        if name == "renew":
            assert partition.runs()[1][5] == 1 + LOCK_MS, "the renewed lock restarts at now_ms"
    elif name == "expire":
        partition.expire(LOCK_MS)
    elif name == "release_member":
        partition.release_member("m1", 1)
    else:
        partition.update_log_start_offset(6)
        assert partition.start_offset == 6
    partition.assert_invariants()
    if expected == "gone":
        assert state_at(partition, 5) is None
    else:
        assert state_at(partition, 5) == expected


# --------------------------------------------------------------- scenarios


def test_scenario_05_init_with_persisted_batches() -> None:
    partition = SharePartition(
        settings(), 5, [StateBatch(5, 10, A, 2), StateBatch(11, 15, X, 3)]
    )
    partition.assert_invariants()
    assert partition.start_offset == 5 and partition.end_offset == 16
    assert partition.next_fetch_offset() == 5
    assert compact(partition) == [(5, 10, A, 2, None), (11, 15, X, 3, None)]
    assert partition.delivery_complete_count == 5
    assert partition.load_change.write is None


def test_load_archives_available_at_limit_collapses_prefix_and_fills_gaps() -> None:
    partition = SharePartition(
        settings(delivery_count_limit=3),
        0,
        [
            StateBatch(0, 2, K, 1),
            StateBatch(3, 4, A, 3),  # handed out 3 times, last attempt unfinished
            StateBatch(8, 9, A, 1),
        ],
    )
    partition.assert_invariants()
    assert partition.start_offset == 5
    assert compact(partition) == [(5, 7, A, 0, None), (8, 9, A, 1, None)]
    assert partition.load_change.counts == {"archived_delivery_limit": 2}
    assert partition.load_change.write == StateWrite(5, 0, ())
    assert acquire(partition, "m", [(5, 9)]) == [(5, 7, 1), (8, 9, 2)]


def test_load_rejects_acquired_state_and_merges_overlaps() -> None:
    with pytest.raises(OperatingError) as raised:
        SharePartition(settings(), 0, [StateBatch(0, 3, Q, 1)])
    assert raised.value.code == ErrorCode.INVALID_REQUEST
    partition = SharePartition(settings(), 2, [StateBatch(0, 9, A, 1), StateBatch(4, 6, A, 2), StateBatch(6, 7, K, 2)])
    assert compact(partition) == [(2, 3, A, 1, None), (4, 5, A, 2, None), (6, 7, K, 2, None), (8, 9, A, 1, None)]


def test_scenario_08_acquire_new_batch() -> None:
    partition = SharePartition(settings(), 0)
    ranges, change = partition.acquire("m", [(0, 4)], 500, AcquireMode.BATCH_OPTIMIZED, 100)
    assert ranges == [AcquiredRange(0, 4, 1)]
    assert compact(partition) == [(0, 4, Q, 1, "m")]
    assert partition.next_fetch_offset() == 5
    assert partition.next_deadline_ms() == 100 + LOCK_MS
    assert change.counts == {"acquired": 5}
    assert change.write == StateWrite(0, 0, (StateBatch(0, 4, A, 1),))


def test_scenario_09_acquire_same_batch_again_returns_nothing() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    before = snapshot(partition)
    ranges, change = partition.acquire("m2", [(0, 4)], 500, AcquireMode.BATCH_OPTIMIZED, 0)
    assert ranges == [] and change.write is None
    assert acquire(partition, "m2", [(2, 3)]) == []
    assert snapshot(partition) == before


def test_scenario_10_acquire_with_empty_fetch() -> None:
    partition = SharePartition(settings(), 7)
    assert acquire(partition, "m", []) == []
    assert partition.next_fetch_offset() == 7 and partition.end_offset == 7


def test_scenario_11_overlapping_fetch_acquires_only_new_records() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    assert acquire(partition, "m2", [(0, 9)]) == [(5, 9, 1)]
    assert compact(partition) == [(0, 4, Q, 1, "m"), (5, 9, Q, 1, "m2")]


def test_scenario_12_batch_optimized_extends_to_end_of_log_batch() -> None:
    partition = SharePartition(settings(), 0)
    assert acquire(partition, "m", [(0, 9), (10, 19)], max_records=3) == [(0, 9, 1)]
    assert acquire(partition, "m", [(10, 19), (20, 29)], max_records=10) == [(10, 19, 1)]
    assert acquire(partition, "m", [(20, 29), (30, 39)], max_records=11) == [(20, 39, 1)]


def test_scenario_13_record_limit_acquires_exactly_max_records() -> None:
    partition = SharePartition(settings(), 0)
    assert acquire(partition, "m", [(0, 9)], max_records=3, mode=AcquireMode.RECORD_LIMIT) == [(0, 2, 1)]
    assert partition.next_fetch_offset() == 3
    assert acquire(partition, "m", [(0, 9)], max_records=3, mode=AcquireMode.RECORD_LIMIT) == [(3, 5, 1)]


def test_scenario_14_can_acquire_and_window_cap() -> None:
    partition = SharePartition(settings(partition_max_record_locks=10), 0)
    assert partition.can_acquire()
    assert acquire(partition, "m", [(0, 5)]) == [(0, 5, 1)]
    assert partition.can_acquire()
    # The cap is hard, even in batch-optimized mode and in the middle of a log batch.
    assert acquire(partition, "m", [(6, 19)]) == [(6, 9, 1)]
    assert not partition.can_acquire()
    assert acquire(partition, "m", [(10, 19)]) == []
    ack(partition, "m", 3, 3, AcknowledgeType.RELEASE)
    assert partition.can_acquire() and partition.start_offset == 0  # redelivery; SPSO unchanged
    assert acquire(partition, "m2", [(0, 19)]) == [(3, 3, 2)]
    assert not partition.can_acquire()
    ack(partition, "m", 0, 2, AcknowledgeType.ACCEPT)
    assert partition.start_offset == 3 and partition.can_acquire()
    assert acquire(partition, "m2", [(10, 19)]) == [(10, 12, 1)]
    ack(partition, "m2", 3, 3, AcknowledgeType.ACCEPT)
    ack(partition, "m", 4, 9, AcknowledgeType.ACCEPT)
    ack(partition, "m2", 10, 12, AcknowledgeType.ACCEPT)
    assert partition.start_offset == partition.end_offset == 13 and partition.can_acquire()


def test_scenario_16_accept_single_record_batch_moves_start_offset() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 0)])
    acquire(partition, "m", [(1, 1)])
    change = ack(partition, "m", 0, 0, AcknowledgeType.ACCEPT)
    assert partition.start_offset == 1 and partition.end_offset == 2
    assert change.write == StateWrite(1, 0, ())
    assert change.counts == {"accept": 1}


def test_scenario_17_accept_entire_window_empties_it() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4), (5, 9)])
    ack(partition, "m", 0, 9, AcknowledgeType.ACCEPT)
    assert partition.start_offset == partition.end_offset == 10
    assert partition.runs() == [] and partition.delivery_complete_count == 0


def test_scenario_18_per_offset_types_with_gaps() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    types = (AcknowledgeType.RELEASE,) * 5 + (AcknowledgeType.GAP,) * 3 + (AcknowledgeType.ACCEPT,) * 2
    change = ack(partition, "m", 0, 9, *types)
    assert compact(partition) == [(0, 4, A, 1, None), (5, 7, X, 1, None), (8, 9, K, 1, None)]
    assert partition.next_fetch_offset() == 0
    assert change.counts == {"release": 5, "gap": 3, "accept": 2}
    assert change.write == StateWrite(0, 5, (StateBatch(5, 7, X, 1), StateBatch(8, 9, K, 1)))


def test_scenario_19_partial_accept_from_the_front() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 14)])
    ack(partition, "m", 0, 12, AcknowledgeType.ACCEPT)
    assert partition.start_offset == 13
    assert compact(partition) == [(13, 14, Q, 1, "m")]


def test_scenario_20_reject_first_batch_jumps_to_next_batch() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    acquire(partition, "m", [(5, 9)])
    ack(partition, "m", 0, 4, AcknowledgeType.REJECT)
    assert partition.start_offset == 5


def test_scenario_21_acks_in_the_middle_do_not_move_start_offset() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    ack(partition, "m", 3, 6, AcknowledgeType.ACCEPT)
    assert partition.start_offset == 0 and partition.delivery_complete_count == 4
    assert partition.lag(10) == 6
    ack(partition, "m", 0, 2, AcknowledgeType.ACCEPT)
    assert partition.start_offset == 7 and partition.delivery_complete_count == 0
    assert partition.lag(10) == 3 and partition.lag(5) == 0


def test_scenario_22_multiple_acquisitions_then_reject_everything() -> None:
    partition = SharePartition(settings(), 100)
    acquire(partition, "m", [(100, 129)])
    acquire(partition, "m2", [(130, 179)])
    ack(partition, "m2", 130, 179, AcknowledgeType.REJECT)
    ack(partition, "m", 100, 129, AcknowledgeType.REJECT)
    assert partition.start_offset == partition.end_offset == 180 and partition.runs() == []
    assert acquire(partition, "m", [(180, 189)]) == [(180, 189, 1)]


def test_scenario_23_release_then_redeliver_with_higher_count() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    change = ack(partition, "m", 0, 4, AcknowledgeType.RELEASE)
    assert change.write is None, "a release below the limit changes nothing persisted"
    assert compact(partition) == [(0, 4, A, 1, None)]
    assert partition.next_deadline_ms() is None
    assert acquire(partition, "m2", [(0, 4)]) == [(0, 4, 2)]


def test_scenario_24_release_at_limit_archives() -> None:
    partition = SharePartition(settings(delivery_count_limit=2), 0)
    acquire(partition, "m", [(0, 4)])
    ack(partition, "m", 0, 4, AcknowledgeType.RELEASE)
    acquire(partition, "m", [(0, 4)])
    change = ack(partition, "m", 0, 4, AcknowledgeType.RELEASE)
    assert change.counts == {"release": 5, "archived_delivery_limit": 5}
    assert partition.start_offset == 5 and partition.runs() == []


def test_scenario_25_lock_timeout_makes_records_available() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)], now_ms=10)
    assert partition.expire(10 + LOCK_MS - 1).counts == {}
    change = partition.expire(10 + LOCK_MS)
    partition.assert_invariants()
    assert change.counts == {"lock_expired": 5} and change.write is None
    assert compact(partition) == [(0, 4, A, 1, None)]
    assert partition.next_deadline_ms() is None


def test_scenario_26_lock_timeout_at_limit_archives_and_moves_start() -> None:
    partition = SharePartition(settings(delivery_count_limit=2), 0)
    acquire(partition, "m", [(0, 4)])
    partition.expire(LOCK_MS)
    acquire(partition, "m", [(0, 4)], now_ms=LOCK_MS)
    change = partition.expire(2 * LOCK_MS)
    assert change.counts == {"lock_expired": 5, "archived_delivery_limit": 5}
    assert change.write == StateWrite(5, 0, ())
    assert partition.start_offset == 5


def test_scenario_27_lock_timeout_below_start_offset_archives() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    partition.update_log_start_offset(5)
    assert compact(partition) == [(0, 4, Q, 1, "m"), (5, 9, Q, 1, "m")]
    partition.expire(LOCK_MS)
    partition.assert_invariants()
    assert compact(partition) == [(5, 9, A, 1, None)]


def test_scenario_28_ack_after_lock_timeout_is_refused() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    # The deadline has passed but the shell's timer has not fired yet.
    expect_error(INVALID, partition, lambda: ack(partition, "m", 0, 4, AcknowledgeType.ACCEPT, now_ms=LOCK_MS))
    partition.expire(LOCK_MS)
    expect_error(INVALID, partition, lambda: ack(partition, "m", 0, 4, AcknowledgeType.ACCEPT, now_ms=LOCK_MS))


def test_scenario_29_non_owner_ack_rolls_back_whole_request() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    acquire(partition, "m2", [(5, 9)])
    batches = [
        AcknowledgementBatch(0, 4, (AcknowledgeType.ACCEPT,)),
        AcknowledgementBatch(5, 5, (AcknowledgeType.ACCEPT,)),
    ]
    expect_error(INVALID, partition, lambda: partition.acknowledge("m", batches, 0))


def test_scenario_30_ack_past_window_end_is_invalid_request() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    expect_error(ErrorCode.INVALID_REQUEST, partition, lambda: ack(partition, "m", 3, 5, AcknowledgeType.ACCEPT))
    expect_error(ErrorCode.INVALID_REQUEST, partition, lambda: ack(partition, "m", 8, 9, AcknowledgeType.ACCEPT))


def test_scenario_31_invalid_types_are_invalid_request() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    bad_type = AcknowledgementBatch(0, 0, (7,))  # type: ignore[arg-type]
    expect_error(ErrorCode.INVALID_REQUEST, partition, lambda: partition.acknowledge("m", [bad_type], 0))
    wrong_length = AcknowledgementBatch(0, 4, (AcknowledgeType.ACCEPT,) * 2)
    expect_error(ErrorCode.INVALID_REQUEST, partition, lambda: partition.acknowledge("m", [wrong_length], 0))
    overlapping = [
        AcknowledgementBatch(0, 2, (AcknowledgeType.ACCEPT,)),
        AcknowledgementBatch(2, 4, (AcknowledgeType.ACCEPT,)),
    ]
    expect_error(ErrorCode.INVALID_REQUEST, partition, lambda: partition.acknowledge("m", overlapping, 0))


def test_scenario_32_ack_below_start_offset_refused_unless_still_held() -> None:
    """Kafka ignores acks below the start offset; shoal refuses them unless the member holds them.

    A stale acknowledgement for a record another member already settled must not be
    answered with success (reliability-plan.md I11; the chaos suite found this).
    """
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    ack(partition, "m", 0, 4, AcknowledgeType.ACCEPT)
    assert partition.start_offset == 5
    expect_error(INVALID, partition, lambda: ack(partition, "m", 0, 4, AcknowledgeType.REJECT))
    # Straddling the start offset with a part already settled: refused as a whole.
    expect_error(INVALID, partition, lambda: ack(partition, "m", 2, 9, AcknowledgeType.ACCEPT))
    ack(partition, "m", 5, 9, AcknowledgeType.ACCEPT)
    assert partition.start_offset == partition.end_offset == 10


def test_stale_ack_after_redelivery_and_settlement_is_refused() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "slow", [(0, 0)])
    partition.expire(LOCK_MS)
    acquire(partition, "fast", [(0, 0)], now_ms=LOCK_MS)
    ack(partition, "fast", 0, 0, AcknowledgeType.ACCEPT, now_ms=LOCK_MS)
    assert partition.start_offset == 1
    expect_error(INVALID, partition, lambda: ack(partition, "slow", 0, 0, AcknowledgeType.RELEASE, now_ms=LOCK_MS))


def test_ack_of_stranded_record_below_start_offset_by_its_holder_succeeds() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    partition.update_log_start_offset(5)
    change = ack(partition, "m", 0, 9, AcknowledgeType.ACCEPT)
    assert partition.start_offset == partition.end_offset == 10
    assert change.counts.get("accept") == 5


def test_renew_disabled_is_invalid_record_state() -> None:
    partition = SharePartition(settings(renew_acknowledge_enable=False), 0)
    acquire(partition, "m", [(0, 4)])
    expect_error(INVALID, partition, lambda: ack(partition, "m", 0, 4, AcknowledgeType.RENEW))


def test_renew_restarts_the_lock_without_a_delivery() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    change = ack(partition, "m", 2, 3, AcknowledgeType.RENEW, now_ms=500)
    assert change.write is None and change.counts == {"renew": 2}
    partition.expire(LOCK_MS)
    partition.assert_invariants()
    assert compact(partition) == [(0, 1, A, 1, None), (2, 3, Q, 1, "m"), (4, 4, A, 1, None)]
    assert partition.next_deadline_ms() == 500 + LOCK_MS


def test_scenario_34_release_member_touches_only_its_records() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    acquire(partition, "m2", [(5, 9)])
    change = partition.release_member("m", 0)
    partition.assert_invariants()
    assert change.counts == {"released_member": 5} and change.write is None
    assert compact(partition) == [(0, 4, A, 1, None), (5, 9, Q, 1, "m2")]
    assert partition.next_deadline_ms() == LOCK_MS
    # The count is kept, so the next delivery is the second.
    assert acquire(partition, "m2", [(0, 4)]) == [(0, 4, 2)]


def test_scenario_35_release_member_with_start_offset_inside_its_batch() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    partition.update_log_start_offset(4)
    partition.release_member("m", 0)
    partition.assert_invariants()
    assert compact(partition) == [(4, 9, A, 1, None)]


def test_release_member_at_limit_archives() -> None:
    partition = SharePartition(settings(delivery_count_limit=2), 0)
    acquire(partition, "m", [(0, 4)])
    partition.release_member("m", 0)
    acquire(partition, "m", [(0, 4)])
    change = partition.release_member("m", 0)
    assert change.counts == {"released_member": 5, "archived_delivery_limit": 5}
    assert partition.start_offset == 5


def test_scenario_36_log_start_move_on_empty_partition() -> None:
    partition = SharePartition(settings(), 0)
    change = partition.update_log_start_offset(50)
    partition.assert_invariants()
    assert partition.start_offset == partition.end_offset == 50
    assert change.write == StateWrite(50, 0, ())


def test_scenario_37_log_start_move_across_batches() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    acquire(partition, "m", [(5, 9)])
    acquire(partition, "m", [(10, 14)])
    acquire(partition, "m", [(15, 19)])
    ack(partition, "m", 0, 4, AcknowledgeType.RELEASE)
    ack(partition, "m", 10, 14, AcknowledgeType.ACCEPT)
    change = partition.update_log_start_offset(15)
    partition.assert_invariants()
    assert change.counts == {"archived_log_start": 5}
    assert partition.start_offset == 15
    assert compact(partition) == [(5, 9, Q, 1, "m"), (15, 19, Q, 1, "m")]
    ack(partition, "m", 15, 19, AcknowledgeType.RELEASE)
    assert partition.next_fetch_offset() == 15
    # Acknowledging the stranded records ends their attempt: archived, nothing to write.
    change = ack(partition, "m", 5, 9, AcknowledgeType.ACCEPT)
    assert change.write is None and compact(partition) == [(15, 19, A, 1, None)]


def test_scenario_38_log_start_inside_a_batch() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    ack(partition, "m", 0, 9, *([AcknowledgeType.RELEASE, AcknowledgeType.ACCEPT] * 5))
    partition.update_log_start_offset(5)
    partition.assert_invariants()
    assert partition.start_offset == 6
    assert compact(partition) == [(6, 6, A, 1, None), (7, 7, K, 1, None), (8, 8, A, 1, None), (9, 9, K, 1, None)]


def test_scenario_39_log_start_not_past_start_offset_is_ignored() -> None:
    partition = SharePartition(settings(), 10)
    acquire(partition, "m", [(10, 14)])
    before = snapshot(partition)
    assert partition.update_log_start_offset(10).write is None
    assert partition.update_log_start_offset(3).write is None
    assert snapshot(partition) == before


def test_log_start_move_past_end_of_window() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 4)])
    partition.update_log_start_offset(20)
    partition.assert_invariants()
    assert partition.start_offset == partition.end_offset == 20
    assert acquire(partition, "m2", [(20, 24)]) == [(20, 24, 1)]


def test_scenario_40_offsets_missing_from_the_log_are_archived() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    ack(partition, "m", 0, 9, AcknowledgeType.RELEASE)
    # Compaction removed batches 0-4 and 10-14; holes inside a batch are still acquired.
    ranges, change = partition.acquire("m", [(5, 9), (15, 19)], 500, AcquireMode.BATCH_OPTIMIZED, 0)
    partition.assert_invariants()
    assert [(r.first_offset, r.last_offset, r.delivery_count) for r in ranges] == [(5, 9, 2), (15, 19, 1)]
    assert change.counts == {"acquired": 10, "archived_absent": 10}
    assert partition.start_offset == 5
    assert compact(partition) == [(5, 9, Q, 2, "m"), (10, 14, X, 0, None), (15, 19, Q, 1, "m")]
    assert change.write is not None
    assert change.write.batches == (
        StateBatch(5, 9, A, 2), StateBatch(10, 14, X, 0), StateBatch(15, 19, A, 1),
    )


def test_scenario_41_last_attempt_is_delivered_alone() -> None:
    partition = SharePartition(settings(delivery_count_limit=3), 0)
    acquire(partition, "m", [(0, 9)])
    ack(partition, "m", 0, 9, AcknowledgeType.RELEASE)
    acquire(partition, "m", [(0, 9)], max_records=2, mode=AcquireMode.RECORD_LIMIT)
    ack(partition, "m", 0, 1, AcknowledgeType.RELEASE)
    # 0-1 are on their last attempt (count 2 = limit - 1): each goes out alone.
    assert acquire(partition, "m", [(0, 9)]) == [(0, 0, 3)]
    assert acquire(partition, "m", [(0, 9)]) == [(1, 1, 3)]
    assert acquire(partition, "m", [(0, 9)]) == [(2, 9, 2)]
    # Records before a last-attempt record go out together, stopping short of it.
    loaded = SharePartition(
        settings(delivery_count_limit=3), 0, [StateBatch(0, 4, A, 1), StateBatch(5, 5, A, 2), StateBatch(6, 9, A, 1)]
    )
    assert acquire(loaded, "m", [(0, 9)]) == [(0, 4, 2)]
    assert acquire(loaded, "m", [(0, 9)]) == [(5, 5, 3)]
    assert acquire(loaded, "m", [(0, 9)]) == [(6, 9, 2)]


def test_poison_isolation_is_off_for_limit_two() -> None:
    partition = SharePartition(settings(delivery_count_limit=2), 0)
    acquire(partition, "m", [(0, 9)])
    ack(partition, "m", 0, 9, AcknowledgeType.RELEASE)
    assert acquire(partition, "m", [(0, 9)]) == [(0, 9, 2)]


def test_ranges_split_where_delivery_counts_differ() -> None:
    partition = SharePartition(settings(), 0)
    acquire(partition, "m", [(0, 9)])
    types = [AcknowledgeType.RELEASE] * 3 + [AcknowledgeType.ACCEPT] + [AcknowledgeType.RELEASE] * 6
    ack(partition, "m", 0, 9, *types)
    assert acquire(partition, "m", [(0, 9), (10, 14)]) == [(0, 2, 2), (4, 9, 2), (10, 14, 1)]


def test_scenario_42_settings_update() -> None:
    partition = SharePartition(settings(delivery_count_limit=5), 0)
    acquire(partition, "m", [(0, 4)])
    ack(partition, "m", 0, 1, AcknowledgeType.RELEASE)
    acquire(partition, "m", [(0, 4)])  # 0-1 at count 2, still held; 2-4 held at count 1
    ack(partition, "m", 0, 0, AcknowledgeType.RELEASE)
    change = partition.update_settings(settings(delivery_count_limit=2, record_lock_duration_ms=5_000))
    partition.assert_invariants()
    # Available at the new limit: archived now, as a reload would do.
    assert change.counts == {"archived_delivery_limit": 1}
    assert change.write == StateWrite(1, 0, ())
    # An in-flight attempt meets the new limit when it completes.
    ack(partition, "m", 1, 1, AcknowledgeType.RELEASE)
    assert partition.start_offset == 2
    ack(partition, "m", 2, 4, AcknowledgeType.RELEASE)
    assert acquire(partition, "m", [(2, 4)], now_ms=0) == [(2, 4, 2)]
    assert partition.next_deadline_ms() == 5_000


def test_settings_are_validated() -> None:
    for overrides in ({"delivery_count_limit": 1}, {"record_lock_duration_ms": 0},
                      {"partition_max_record_locks": 10_001}, {"delivery_count_limit": 11}):
        with pytest.raises(OperatingError) as raised:
            settings(**overrides)
        assert raised.value.code == ErrorCode.INVALID_CONFIG


def test_bad_acquire_arguments_are_refused() -> None:
    partition = SharePartition(settings(), 0)
    expect_error(ErrorCode.INVALID_REQUEST, partition,
                 lambda: partition.acquire("m", [(0, 4)], 0, AcquireMode.RECORD_LIMIT, 0))
    expect_error(ErrorCode.INVALID_REQUEST, partition,
                 lambda: partition.acquire("", [(0, 4)], 5, AcquireMode.RECORD_LIMIT, 0))


# --------------------------------------------------------------- persistence model


def test_persisted_pairs_only_grow_and_reload_matches() -> None:
    """Every write raises (delivery_count, state) per offset; replaying writes rebuilds the state."""
    limit = 3
    partition = SharePartition(settings(delivery_count_limit=limit), 0)
    persisted: dict[int, tuple[int, int]] = {}
    start_offsets = [0]

    def record(change) -> None:
        partition.assert_invariants()
        if change.write is None:
            return
        assert change.write.start_offset >= start_offsets[-1]
        start_offsets.append(change.write.start_offset)
        for batch in change.write.batches:
            assert batch.state != Q
            for offset in range(batch.first_offset, batch.last_offset + 1):
                pair = (batch.delivery_count, int(batch.state))
                assert pair > persisted.get(offset, (0, 0)), f"persisted pair went backwards at {offset}"
                persisted[offset] = pair

    now_ms = 0
    for round_index in range(12):
        log = [(0, 9), (10, 19), (20, 29)]
        member = f"m{round_index % 3}"
        ranges, change = partition.acquire(member, log, 7, AcquireMode(round_index % 2), now_ms)
        record(change)
        for acquired in ranges:
            size = acquired.last_offset - acquired.first_offset + 1
            types = tuple(AcknowledgeType((acquired.first_offset + k + round_index) % 4) for k in range(size))
            if round_index % 4 == 3:
                continue  # left for the lock to expire or the member to leave
            batch = AcknowledgementBatch(acquired.first_offset, acquired.last_offset, types)
            record(partition.acknowledge(member, [batch], now_ms))
        if round_index % 4 == 3:
            record(partition.release_member(member, now_ms))
        now_ms += LOCK_MS // 2
        record(partition.expire(now_ms))

    batches = [StateBatch(o, o, RecordState(s), c) for o, (c, s) in persisted.items()]
    reloaded = SharePartition(settings(delivery_count_limit=limit), start_offsets[-1], batches)
    reloaded.assert_invariants()
    live = [run[:4] for run in partition.runs() if run[2] != Q]
    assert partition.acquired_record_count == 0
    assert [run[:4] for run in reloaded.runs()] == live
    assert reloaded.start_offset == partition.start_offset
    assert reloaded.end_offset == partition.end_offset


def test_merge_state_batches_is_kafkas_combiner_rule() -> None:
    merged = merge_state_batches(
        [StateBatch(0, 9, A, 1), StateBatch(3, 5, A, 2), StateBatch(5, 7, K, 2), StateBatch(7, 12, X, 1)],
        start_offset=1,
    )
    assert merged == (
        StateBatch(1, 2, A, 1), StateBatch(3, 4, A, 2), StateBatch(5, 7, K, 2), StateBatch(8, 12, X, 1),
    )
    assert merge_state_batches(list(reversed(merged)) + list(merged)) == merged
    assert merge_state_batches([]) == ()


def test_a_million_offsets_in_big_batches_stay_a_handful_of_runs() -> None:
    cap = 10_000
    partition = SharePartition(settings(partition_max_record_locks=cap), 0)
    most_runs = 0
    for window_start in range(0, 1_000_000, cap):
        log = [(base, base + 999) for base in range(window_start, window_start + cap, 1000)]
        ranges, _ = partition.acquire("m", log, cap, AcquireMode.BATCH_OPTIMIZED, 0)
        assert ranges == [AcquiredRange(window_start, window_start + cap - 1, 1)]
        half = window_start + cap // 2
        second_half = AcknowledgementBatch(half, window_start + cap - 1, (AcknowledgeType.ACCEPT,))
        partition.acknowledge("m", [second_half], 0)
        most_runs = max(most_runs, len(partition.runs()))
        partition.acknowledge("m", [AcknowledgementBatch(window_start, half - 1, (AcknowledgeType.ACCEPT,))], 0)
    partition.assert_invariants()
    assert partition.start_offset == partition.end_offset == 1_000_000
    assert most_runs <= 2
