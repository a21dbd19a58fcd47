"""Unit and model tests of the share coordinator's state store (coordinator/share_state.py).

Scenario numbers refer to kip932-facts.md §12 (48-53 are the share coordinator's).
Every record an operation returns goes through encode -> decode -> append ->
replay here, as the shell does, so the encoding is exercised on every path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from coordinator.errors import ErrorCode, OperatingError
from coordinator.share_state import (
    ACKNOWLEDGED,
    ARCHIVED,
    AVAILABLE,
    DELIVERY_COUNT_MAX,
    PersistedBatch,
    ReadResult,
    ShareCoordinatorShard,
    ShareDelete,
    ShareKey,
    ShareRecord,
    ShareSnapshot,
    ShareStateSettings,
    ShareUpdate,
    decode_record,
    encode_record,
    merge_batches,
    record_key_bytes,
)

KEY = ShareKey("workers", "orders", 0)
OTHER_KEY = ShareKey("workers", "orders", 1)


def batch(first: int, last: int, state: int = AVAILABLE, delivery_count: int = 1) -> PersistedBatch:
    return PersistedBatch(first, last, state, delivery_count)


class Harness:
    """A shard plus its log, driven the way the shell drives it."""

    def __init__(self, settings: ShareStateSettings | None = None) -> None:
        self.shard = ShareCoordinatorShard(settings)
        self.log: list[bytes] = []

    def append(self, records: list[ShareRecord]) -> list[ShareRecord]:
        for record in records:
            data = encode_record(record)
            decoded = decode_record(data)
            assert decoded == record
            self.log.append(data)
            self.shard.replay(decoded, len(self.log) - 1)
        return records

    def write(self, key: ShareKey = KEY, *, state_epoch: int = 0, leader_epoch: int = 0,
              start_offset: int = -1, delivery_complete_count: int = -1,
              batches: list[PersistedBatch] | None = None) -> list[ShareRecord]:
        return self.append(self.shard.write(
            key, state_epoch, leader_epoch, start_offset, delivery_complete_count, batches or []
        ))

    def read(self, key: ShareKey = KEY, leader_epoch: int = -1) -> ReadResult:
        result, records = self.shard.read(key, leader_epoch)
        self.append(records)
        return result


def full_state(shard: ShareCoordinatorShard) -> dict:
    """Everything observable about a shard's keys."""
    return {
        key: (shard.read(key, -1)[0], shard.read_summary(key))
        for key in sorted(shard.keys(), key=repr)
    }


def recovered(log: list[bytes], from_log_offset: int = 0,
              settings: ShareStateSettings | None = None) -> ShareCoordinatorShard:
    shard = ShareCoordinatorShard(settings)
    for log_offset in range(from_log_offset, len(log)):
        shard.replay(decode_record(log[log_offset]), log_offset)
    return shard


def expect_refusal(harness: Harness, code: ErrorCode, operation, *args) -> None:
    """``operation`` raises ``code``; the state and the log are unchanged."""
    before = full_state(harness.shard)
    log_length = len(harness.log)
    with pytest.raises(OperatingError) as raised:
        operation(*args)
    assert raised.value.code == code, raised.value
    assert full_state(harness.shard) == before
    assert len(harness.log) == log_length


# --- Scenario 48: snapshot cadence -------------------------------------------


def test_scenario_48_first_write_is_a_snapshot_then_updates_until_the_threshold() -> None:
    harness = Harness(ShareStateSettings(snapshot_update_records_per_snapshot=3))
    kinds = []
    for index in range(9):
        (record,) = harness.write(start_offset=index * 10, batches=[batch(index * 10, index * 10 + 9)])
        kinds.append((type(record).__name__, record.snapshot_epoch))
    assert kinds == [
        ("ShareSnapshot", 0),
        ("ShareUpdate", 0), ("ShareUpdate", 0), ("ShareUpdate", 0),
        ("ShareSnapshot", 1),
        ("ShareUpdate", 1), ("ShareUpdate", 1), ("ShareUpdate", 1),
        ("ShareSnapshot", 2),
    ]
    # The last snapshot carries the merged state, pruned below the start offset.
    assert harness.log and decode_record(harness.log[-1]).batches == (batch(80, 89),)
    assert harness.shard.read_summary(KEY).updates_since_snapshot == 0


def test_scenario_48_updates_carry_only_the_new_batches() -> None:
    harness = Harness()
    harness.write(start_offset=0, batches=[batch(0, 9)])
    (update,) = harness.write(batches=[batch(3, 4, ACKNOWLEDGED), batch(20, 21)])
    assert isinstance(update, ShareUpdate)
    assert update.batches == (batch(3, 4, ACKNOWLEDGED), batch(20, 21))
    assert update.start_offset == -1
    assert harness.read().batches == (
        batch(0, 2), batch(3, 4, ACKNOWLEDGED), batch(5, 9), batch(20, 21)
    )


def test_scenario_48_threshold_zero_makes_every_write_a_snapshot() -> None:
    harness = Harness(ShareStateSettings(snapshot_update_records_per_snapshot=0))
    records = [harness.write(batches=[batch(index, index)])[0] for index in range(4)]
    assert [type(record) for record in records] == [ShareSnapshot] * 4
    assert [record.snapshot_epoch for record in records] == [0, 1, 2, 3]
    assert records[-1].batches == (batch(0, 3),)


# --- Scenario 49: fencing leaves state unchanged ------------------------------


def test_scenario_49_lower_leader_epoch_on_write_is_fenced() -> None:
    harness = Harness()
    harness.write(leader_epoch=5, start_offset=0, batches=[batch(0, 9)])
    expect_refusal(harness, ErrorCode.FENCED_LEADER_EPOCH, harness.shard.write, KEY, 0, 4, 0, -1,
                   [batch(0, 9, ACKNOWLEDGED)])
    assert harness.read().batches == (batch(0, 9),)


def test_scenario_49_lower_leader_epoch_on_read_is_fenced() -> None:
    harness = Harness()
    harness.write(leader_epoch=5, start_offset=0)
    expect_refusal(harness, ErrorCode.FENCED_LEADER_EPOCH, harness.shard.read, KEY, 3)


def test_scenario_49_lower_state_epoch_on_write_is_fenced() -> None:
    harness = Harness()
    harness.append(harness.shard.initialize(KEY, 2, 0))
    expect_refusal(harness, ErrorCode.FENCED_STATE_EPOCH, harness.shard.write, KEY, 1, 0, 0, -1,
                   [batch(0, 9, ACKNOWLEDGED)])


def test_scenario_49_a_newer_leader_fences_the_old_one_through_its_write() -> None:
    harness = Harness()
    harness.write(leader_epoch=1, start_offset=0, batches=[batch(0, 4)])
    harness.write(leader_epoch=2, batches=[batch(0, 4, AVAILABLE, 2)])
    expect_refusal(harness, ErrorCode.FENCED_LEADER_EPOCH, harness.shard.write, KEY, 0, 1, 0, -1,
                   [batch(0, 4, ACKNOWLEDGED)])


def test_write_with_a_newer_state_epoch_than_recorded_is_refused() -> None:
    harness = Harness()
    harness.write(state_epoch=0, start_offset=0)
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.write, KEY, 1, 0, 0, -1, [])


# --- Scenario 50: invalid requests ---------------------------------------------


@pytest.mark.parametrize(
    "key",
    [ShareKey("workers", "orders", -1), ShareKey("", "orders", 0), ShareKey("workers", "", 0),
     ShareKey("g" * 250, "orders", 0), ShareKey("workers", "t" * 250, 0)],
    ids=["negative-partition", "empty-group", "empty-topic", "long-group", "long-topic"],
)
def test_scenario_50_invalid_keys_are_refused_by_every_operation(key: ShareKey) -> None:
    harness = Harness()
    harness.write(start_offset=0, batches=[batch(0, 1)])
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.write, key, 0, 0, 0, -1, [])
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.read, key, 0)
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.initialize, key, 1, 0)
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.delete, key)
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.read_summary, key)


@pytest.mark.parametrize(
    "bad_batch",
    [batch(5, 4), batch(-1, 3), batch(0, 3, 1), batch(0, 3, 3), batch(0, 3, 7),
     batch(0, 3, AVAILABLE, -1), batch(0, 3, AVAILABLE, DELIVERY_COUNT_MAX + 1), batch(0, 2**63)],
    ids=["last-before-first", "negative-offset", "acquired-state", "archiving-state",
         "unknown-state", "negative-count", "count-too-large", "offset-too-large"],
)
def test_scenario_50_malformed_batches_are_refused(bad_batch: PersistedBatch) -> None:
    harness = Harness()
    harness.write(start_offset=0, batches=[batch(0, 9)])
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.write, KEY, 0, 0, -1, -1,
                   [batch(10, 12), bad_batch])
    # Also for a first write, which would otherwise create the key.
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.write, OTHER_KEY, 0, 0, -1,
                   -1, [bad_batch])


@pytest.mark.parametrize(
    "arguments",
    [(-1, 0, 0, -1), (0, -1, 0, -1), (0, 0, -2, -1), (0, 0, 0, -2), (2**31, 0, 0, -1)],
    ids=["negative-state-epoch", "negative-leader-epoch", "start-offset-below-minus-one",
         "complete-count-below-minus-one", "state-epoch-too-large"],
)
def test_scenario_50_out_of_range_write_fields_are_refused(arguments: tuple) -> None:
    harness = Harness()
    expect_refusal(harness, ErrorCode.INVALID_REQUEST, harness.shard.write, KEY, *arguments, [])


# --- Scenario 51: reads ------------------------------------------------------------


def test_scenario_51_read_of_an_unknown_key_is_uninitialized() -> None:
    harness = Harness()
    result, records = harness.shard.read(KEY, -1)
    assert result == ReadResult(state_epoch=0, start_offset=-1, delivery_complete_count=-1,
                                batches=(), leader_epoch=-1)
    assert records == []


def test_scenario_51_read_with_a_newer_leader_epoch_persists_it() -> None:
    harness = Harness()
    harness.write(leader_epoch=1, start_offset=7, batches=[batch(7, 9)])
    result, records = harness.shard.read(KEY, 4)
    assert result.leader_epoch == 4 and result.start_offset == 7
    assert records == [ShareUpdate(KEY, 0, 4, -1, -1, ())]
    harness.append(records)
    assert harness.shard.read_summary(KEY).leader_epoch == 4
    # Same epoch again, or no epoch: nothing to persist.
    assert harness.shard.read(KEY, 4)[1] == []
    assert harness.shard.read(KEY, -1)[1] == []
    # The old leader is now fenced.
    expect_refusal(harness, ErrorCode.FENCED_LEADER_EPOCH, harness.shard.write, KEY, 0, 1, -1, -1,
                   [batch(7, 9, ACKNOWLEDGED)])


def test_scenario_51_read_of_an_unknown_key_with_a_leader_epoch_fences_older_leaders() -> None:
    harness = Harness()
    result = harness.read(KEY, 3)
    assert (result.start_offset, result.state_epoch, result.batches) == (-1, 0, ())
    assert harness.shard.keys() == [KEY]
    expect_refusal(harness, ErrorCode.FENCED_LEADER_EPOCH, harness.shard.write, KEY, 0, 2, 0, -1, [])
    # The group coordinator may still initialize it with the default state epoch.
    harness.append(harness.shard.initialize(KEY, 0, 100))
    assert harness.read(KEY, 3).start_offset == 100


# --- Scenario 52: non-sequential batch updates -------------------------------------


@pytest.mark.parametrize("per_snapshot", [0, 500])
def test_scenario_52_non_sequential_updates_with_a_moving_start_offset_keep_the_middle_batch(
    per_snapshot: int,
) -> None:
    harness = Harness(ShareStateSettings(snapshot_update_records_per_snapshot=per_snapshot))
    harness.write(start_offset=100, delivery_complete_count=0,
                  batches=[batch(100, 109, AVAILABLE, 1), batch(110, 119, AVAILABLE, 2),
                           batch(120, 129, AVAILABLE, 1)])
    harness.write(delivery_complete_count=10, batches=[batch(100, 109, ACKNOWLEDGED, 1)])
    harness.write(start_offset=110, delivery_complete_count=20,
                  batches=[batch(120, 129, ACKNOWLEDGED, 1)])
    result = harness.read()
    assert result.start_offset == 110
    assert result.delivery_complete_count == 20
    assert result.batches == (batch(110, 119, AVAILABLE, 2), batch(120, 129, ACKNOWLEDGED, 1))
    assert full_state(recovered(harness.log)) == full_state(harness.shard)


# --- Scenario 53: the combiner -----------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "new", "start_offset", "expected"),
    [
        # Higher delivery count wins, whatever the states.
        ([batch(0, 9, ARCHIVED, 1)], [batch(3, 5, AVAILABLE, 2)], -1,
         [batch(0, 2, ARCHIVED, 1), batch(3, 5, AVAILABLE, 2), batch(6, 9, ARCHIVED, 1)]),
        # Equal delivery count: the higher state id wins (ARCHIVED > ACKNOWLEDGED > AVAILABLE).
        ([batch(0, 9, ACKNOWLEDGED, 2)], [batch(5, 14, ARCHIVED, 2)], -1,
         [batch(0, 4, ACKNOWLEDGED, 2), batch(5, 14, ARCHIVED, 2)]),
        ([batch(0, 9, ACKNOWLEDGED, 2)], [batch(5, 14, AVAILABLE, 2)], -1,
         [batch(0, 9, ACKNOWLEDGED, 2), batch(10, 14, AVAILABLE, 2)]),
        # Batches wholly below the start offset are pruned, a straddler trimmed.
        ([batch(0, 4), batch(5, 9, ACKNOWLEDGED)], [batch(10, 12, ARCHIVED)], 7,
         [batch(7, 9, ACKNOWLEDGED), batch(10, 12, ARCHIVED)]),
        # Touching runs with the same (state, count) are coalesced; a gap is kept.
        ([batch(0, 4), batch(10, 14)], [batch(5, 7), batch(9, 9, AVAILABLE, 3)], -1,
         [batch(0, 7), batch(9, 9, AVAILABLE, 3), batch(10, 14)]),
        # Unsorted, overlapping input on both sides.
        ([batch(8, 9, ARCHIVED, 0), batch(0, 9)], [batch(4, 6, ACKNOWLEDGED), batch(2, 3)], -1,
         [batch(0, 3), batch(4, 6, ACKNOWLEDGED), batch(7, 9)]),
    ],
    ids=["count-wins", "tie-higher-state", "tie-lower-state-loses", "prune-and-trim",
         "coalesce", "unsorted"],
)
def test_scenario_53_combiner_rules(existing, new, start_offset, expected) -> None:
    assert merge_batches(existing, new, start_offset) == expected


OFFSET_LIMIT = 40
batches_strategy = st.lists(
    st.builds(
        lambda first, length, state, count: PersistedBatch(first, first + length, state, count),
        st.integers(0, OFFSET_LIMIT), st.integers(0, 12),
        st.sampled_from([AVAILABLE, ACKNOWLEDGED, ARCHIVED]), st.integers(0, 4),
    ),
    max_size=8,
)
start_offset_strategy = st.integers(-1, OFFSET_LIMIT + 5)


def per_offset_model(batch_lists: list[list[PersistedBatch]], start_offset: int) -> dict[int, tuple]:
    model: dict[int, tuple[int, int]] = {}
    for batches in batch_lists:
        for item in batches:
            for offset in range(item.first_offset, item.last_offset + 1):
                value = (item.delivery_count, item.state)
                model[offset] = max(model.get(offset, value), value)
    return {offset: value for offset, value in model.items() if offset >= start_offset}


def expand(batches) -> dict[int, tuple[int, int]]:
    return {
        offset: (item.delivery_count, item.state)
        for item in batches
        for offset in range(item.first_offset, item.last_offset + 1)
    }


def assert_normalized(runs: list[PersistedBatch]) -> None:
    for previous, current in zip(runs, runs[1:]):
        assert previous.last_offset < current.first_offset, runs
        if previous.last_offset + 1 == current.first_offset:
            assert (previous.state, previous.delivery_count) != (current.state, current.delivery_count), runs


@given(batches_strategy, batches_strategy, start_offset_strategy)
def test_merge_matches_the_per_offset_max_model(existing, new, start_offset) -> None:
    merged = merge_batches(existing, new, start_offset)
    assert_normalized(merged)
    assert expand(merged) == per_offset_model([existing, new], start_offset)


@given(batches_strategy, batches_strategy, batches_strategy, start_offset_strategy)
def test_merge_is_commutative_and_idempotent(existing, first, second, start_offset) -> None:
    one_way = merge_batches(merge_batches(existing, first, start_offset), second, start_offset)
    other_way = merge_batches(merge_batches(existing, second, start_offset), first, start_offset)
    assert one_way == other_way
    assert merge_batches(existing, first, start_offset) == merge_batches(first, existing, start_offset)
    once = merge_batches(existing, first, start_offset)
    assert merge_batches(once, first, start_offset) == once
    assert merge_batches(once, [], start_offset) == once


# --- Start offset, delivery complete count ---------------------------------------


def test_start_offset_never_moves_backwards_within_a_state_epoch() -> None:
    harness = Harness()
    harness.write(start_offset=10, batches=[batch(10, 19)])
    (update,) = harness.write(start_offset=5, batches=[batch(5, 12, ARCHIVED, 3)])
    assert update.start_offset == -1  # Nothing moved.
    assert update.batches == (batch(10, 12, ARCHIVED, 3),)
    harness.write(start_offset=-1, delivery_complete_count=3)
    result = harness.read()
    assert result.start_offset == 10
    assert result.delivery_complete_count == 3
    assert result.batches == (batch(10, 12, ARCHIVED, 3), batch(13, 19))


def test_delivery_complete_count_minus_one_keeps_the_recorded_value() -> None:
    harness = Harness(ShareStateSettings(snapshot_update_records_per_snapshot=1))
    harness.write(start_offset=0, delivery_complete_count=4)
    harness.write(delivery_complete_count=-1)  # An update.
    harness.write(delivery_complete_count=-1)  # A snapshot.
    assert harness.read().delivery_complete_count == 4
    assert isinstance(decode_record(harness.log[-1]), ShareSnapshot)


# --- Initialize and delete ------------------------------------------------------


def test_initialize_starts_a_new_state_epoch_and_fences_the_old_one() -> None:
    harness = Harness()
    (first,) = harness.append(harness.shard.initialize(KEY, 1, 50))
    assert first == ShareSnapshot(KEY, 0, 1, -1, 50, -1, ())
    harness.write(state_epoch=1, leader_epoch=3, start_offset=50, batches=[batch(50, 59)])
    (reset,) = harness.append(harness.shard.initialize(KEY, 2, 0))
    # A reset may move the start offset back, drops the batches, keeps the leader epoch.
    assert reset == ShareSnapshot(KEY, 1, 2, 3, 0, -1, ())
    expect_refusal(harness, ErrorCode.FENCED_STATE_EPOCH, harness.shard.write, KEY, 1, 3, 60, -1,
                   [batch(50, 59, ACKNOWLEDGED)])
    harness.write(state_epoch=2, leader_epoch=3, batches=[batch(0, 4, ACKNOWLEDGED)])
    assert harness.read().batches == (batch(0, 4, ACKNOWLEDGED),)


@pytest.mark.parametrize("state_epoch", [1, 2])
def test_initialize_with_an_epoch_not_newer_than_recorded_is_fenced(state_epoch: int) -> None:
    harness = Harness()
    harness.append(harness.shard.initialize(KEY, 2, 0))
    expect_refusal(harness, ErrorCode.FENCED_STATE_EPOCH, harness.shard.initialize, KEY,
                   state_epoch, 0)


def test_delete_writes_a_tombstone_and_the_key_needs_no_records() -> None:
    harness = Harness()
    assert harness.shard.delete(KEY) == []
    harness.write(KEY, start_offset=0, batches=[batch(0, 9)])
    harness.write(OTHER_KEY, start_offset=0, batches=[batch(0, 9)])
    harness.write(KEY, batches=[batch(0, 3, ACKNOWLEDGED)])
    assert harness.shard.prunable_before() == 0
    assert harness.append(harness.shard.delete(KEY)) == [ShareDelete(KEY)]
    assert harness.shard.keys() == [OTHER_KEY]
    assert harness.shard.read(KEY, -1)[0].start_offset == -1
    assert harness.shard.prunable_before() == 1  # OTHER_KEY's snapshot.
    harness.append(harness.shard.delete(OTHER_KEY))
    assert harness.shard.prunable_before() == len(harness.log)
    # A write after the delete starts a new incarnation with a snapshot.
    (record,) = harness.write(KEY, start_offset=20)
    assert isinstance(record, ShareSnapshot) and record.snapshot_epoch == 0


# --- Pruning ----------------------------------------------------------------------


def test_resnapshotting_old_keys_lets_pruning_advance_and_the_tail_recovers_the_state() -> None:
    harness = Harness()
    harness.write(KEY, start_offset=0, batches=[batch(0, 9)])
    harness.write(OTHER_KEY, start_offset=0, batches=[batch(0, 9)])
    for index in range(5):
        harness.write(OTHER_KEY, batches=[batch(index, index, ACKNOWLEDGED)])
    assert harness.shard.prunable_before() == 0
    assert harness.shard.keys_with_snapshot_before(len(harness.log), 10) == [KEY, OTHER_KEY]
    assert harness.shard.keys_with_snapshot_before(len(harness.log), 1) == [KEY]
    harness.append(harness.shard.snapshot(KEY))
    assert harness.shard.prunable_before() == 1
    harness.append(harness.shard.snapshot(OTHER_KEY))
    tail_from = harness.shard.prunable_before()
    assert tail_from == len(harness.log) - 2
    assert full_state(recovered(harness.log, tail_from)) == full_state(harness.shard)
    assert harness.shard.snapshot(ShareKey("nobody", "orders", 0)) == []


def test_redundant_records_exist_only_until_a_snapshot_can_free_them() -> None:
    """Regression: idle keys were re-snapshotted on every maintenance tick forever.

    The shell snapshots "cold" keys so that pruning can pass their old
    snapshots. When every record from the prune point on is needed, a snapshot
    frees nothing; ``has_redundant_records`` says so, and the log stops growing.
    """
    harness = Harness(ShareStateSettings(snapshot_update_records_per_snapshot=2))
    assert not harness.shard.has_redundant_records()  # no keys, no records
    harness.write(KEY, start_offset=0, batches=[batch(0, 9)])         # 0: snapshot
    harness.write(OTHER_KEY, start_offset=0, batches=[batch(0, 9)])   # 1: snapshot
    harness.write(KEY, batches=[batch(0, 0, ACKNOWLEDGED)])           # 2: update
    assert not harness.shard.has_redundant_records()  # 0, 1 and 2 are all needed
    harness.write(OTHER_KEY, batches=[batch(0, 0, ACKNOWLEDGED)])     # 3: update
    harness.write(OTHER_KEY, batches=[batch(1, 1, ACKNOWLEDGED)])     # 4: update
    harness.write(OTHER_KEY, batches=[batch(2, 2, ACKNOWLEDGED)])     # 5: snapshot; 1, 3, 4 redundant
    assert harness.shard.prunable_before() == 0
    assert harness.shard.has_redundant_records()
    # The maintenance round: re-snapshot what pins the prune point, prune.
    harness.append(harness.shard.snapshot(KEY))                        # 6
    tail_from = harness.shard.prunable_before()
    assert tail_from == 5
    assert not harness.shard.has_redundant_records()
    assert full_state(recovered(harness.log, tail_from)) == full_state(harness.shard)
    # A recovered shard sees the same: an idle pair of keys needs no more snapshots.
    assert not recovered(harness.log, tail_from).has_redundant_records()
    # A deleted key's records are redundant until pruning passes them.
    harness.append(harness.shard.delete(OTHER_KEY))                   # 7
    assert harness.shard.has_redundant_records()
    harness.append(harness.shard.snapshot(KEY))                        # 8
    assert harness.shard.prunable_before() == 8
    assert not harness.shard.has_redundant_records()


def test_updates_of_a_deleted_key_after_the_prune_point_replay_and_vanish() -> None:
    harness = Harness()
    harness.write(KEY, start_offset=0, batches=[batch(0, 9)])         # 0
    harness.write(OTHER_KEY, start_offset=0, batches=[batch(0, 9)])   # 1
    harness.write(KEY, batches=[batch(0, 1, ACKNOWLEDGED)])           # 2: after the prune point
    harness.append(harness.shard.delete(KEY))                          # 3
    tail_from = harness.shard.prunable_before()
    assert tail_from == 1
    tail = recovered(harness.log, tail_from)
    assert full_state(tail) == full_state(harness.shard)
    assert tail.metrics().orphan_update_records_replayed_total == 1


# --- Limits -----------------------------------------------------------------------


def test_limits_are_explicit_errors_that_change_nothing() -> None:
    harness = Harness(ShareStateSettings(state_batches_per_write_max=3, state_batches_per_key_max=4,
                                         keys_max=2))
    harness.write(KEY, start_offset=0, batches=[batch(0, 0), batch(2, 2)])
    expect_refusal(harness, ErrorCode.RECORD_LIST_TOO_LARGE, harness.shard.write, KEY, 0, 0, -1,
                   -1, [batch(4, 4), batch(6, 6), batch(8, 8), batch(10, 10)])
    expect_refusal(harness, ErrorCode.RECORD_LIST_TOO_LARGE, harness.shard.write, KEY, 0, 0, -1,
                   -1, [batch(4, 4), batch(6, 6), batch(8, 8)])
    # Advancing the start offset in the same write makes room.
    harness.write(KEY, start_offset=2, batches=[batch(4, 4), batch(6, 6), batch(8, 8)])
    assert harness.shard.read_summary(KEY).batch_count == 4
    harness.write(OTHER_KEY, start_offset=0)
    third = ShareKey("workers", "orders", 2)
    expect_refusal(harness, ErrorCode.POLICY_VIOLATION, harness.shard.write, third, 0, 0, 0, -1, [])
    expect_refusal(harness, ErrorCode.POLICY_VIOLATION, harness.shard.read, third, 0)
    expect_refusal(harness, ErrorCode.POLICY_VIOLATION, harness.shard.initialize, third, 0, 0)


@pytest.mark.parametrize(
    "arguments",
    [{"snapshot_update_records_per_snapshot": -1}, {"state_batches_per_write_max": 0},
     {"state_batches_per_write_max": 10, "state_batches_per_key_max": 5}, {"keys_max": 0}],
)
def test_invalid_settings_are_refused(arguments: dict) -> None:
    with pytest.raises(OperatingError) as raised:
        ShareStateSettings(**arguments)
    assert raised.value.code == ErrorCode.INVALID_CONFIG


# --- Encoding ----------------------------------------------------------------------

keys_strategy = st.builds(
    ShareKey,
    st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), st.integers(0, 2**31 - 1),
)
normalized_batches_strategy = st.builds(
    lambda batches: tuple(merge_batches([], batches, -1)), batches_strategy
)
records_strategy = st.one_of(
    st.builds(ShareSnapshot, keys_strategy, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
              st.integers(-1, 2**31 - 1), st.integers(-1, 2**63 - 1), st.integers(-1, 2**31 - 1),
              normalized_batches_strategy),
    st.builds(ShareUpdate, keys_strategy, st.integers(0, 2**31 - 1), st.integers(-1, 2**31 - 1),
              st.integers(-1, 2**63 - 1), st.integers(-1, 2**31 - 1), normalized_batches_strategy),
    st.builds(ShareDelete, keys_strategy),
)


@given(records_strategy)
def test_encoding_round_trips_and_every_truncation_is_reported(record: ShareRecord) -> None:
    data = encode_record(record)
    assert decode_record(data) == record
    assert data[4:4 + len(record_key_bytes(record.key))] == record_key_bytes(record.key)
    for length in range(len(data)):
        with pytest.raises(OperatingError) as raised:
            decode_record(data[:length])
        assert raised.value.code == ErrorCode.CORRUPT_MESSAGE
    with pytest.raises(OperatingError):
        decode_record(data + b"\x00")


def test_record_key_bytes_are_the_same_for_every_record_type_of_a_key() -> None:
    records = [ShareSnapshot(KEY, 0, 0, 0, 0, 0, ()), ShareUpdate(KEY, 0, 0, -1, -1, ()),
               ShareDelete(KEY)]
    assert {decode_record(encode_record(record)).key for record in records} == {KEY}
    assert record_key_bytes(KEY) != record_key_bytes(OTHER_KEY)
    assert all(record_key_bytes(KEY) in encode_record(record) for record in records)


def test_decoding_refuses_unknown_versions_types_and_invalid_batches() -> None:
    good = encode_record(ShareUpdate(KEY, 0, 0, -1, -1, (batch(0, 4), batch(6, 9))))
    with pytest.raises(OperatingError) as raised:
        decode_record(bytes([99]) + good[1:])
    assert raised.value.code == ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(OperatingError) as raised:
        decode_record(good[:1] + bytes([7]) + good[2:])
    assert raised.value.code == ErrorCode.CORRUPT_MESSAGE
    unsorted = encode_record(ShareUpdate(KEY, 0, 0, -1, -1, (batch(6, 9), batch(0, 4))))
    bad_state = encode_record(ShareUpdate(KEY, 0, 0, -1, -1, (batch(0, 4, 1),)))
    for data in (unsorted, bad_state):
        with pytest.raises(OperatingError) as raised:
            decode_record(data)
        assert raised.value.code == ErrorCode.CORRUPT_MESSAGE


# --- Metrics, replay order, purity -------------------------------------------------


def test_metrics_count_replayed_records_and_keys() -> None:
    harness = Harness(ShareStateSettings(snapshot_update_records_per_snapshot=2))
    for index in range(4):
        harness.write(start_offset=index)
    harness.write(OTHER_KEY, start_offset=0)
    harness.append(harness.shard.delete(OTHER_KEY))
    metrics = harness.shard.metrics()
    assert (metrics.keys, metrics.snapshot_records_replayed_total,
            metrics.update_records_replayed_total, metrics.tombstone_records_replayed_total,
            metrics.last_replayed_log_offset) == (1, 3, 2, 1, 5)


def test_replay_out_of_log_order_is_a_programmer_error() -> None:
    harness = Harness()
    harness.write(start_offset=0)
    with pytest.raises(AssertionError):
        harness.shard.replay(ShareDelete(KEY), 0)


def test_the_module_imports_nothing_from_the_shell() -> None:
    source = Path(__file__).resolve().parents[2] / "coordinator" / "share_state.py"
    forbidden = {"grpc", "asyncio", "threading", "socket", "time", "random", "pysyncobj",
                 "prometheus_client"}
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & forbidden


# --- Model: random operations, recovery and pruning --------------------------------

MODEL_KEYS = [KEY, OTHER_KEY, ShareKey("auditors", "orders", 0)]


class ShareStateMachine(RuleBasedStateMachine):
    """Random operations against a naive per-offset model.

    After every step: the shard equals the model; replaying the whole log, and
    replaying only the records at or after ``prunable_before()``, both
    reproduce the live state; the start offset never moved back within a
    state epoch.
    """

    @initialize(per_snapshot=st.integers(0, 3))
    def start(self, per_snapshot: int) -> None:
        self.settings = ShareStateSettings(snapshot_update_records_per_snapshot=per_snapshot)
        self.harness = Harness(self.settings)
        # key -> {"state_epoch", "leader_epoch", "start_offset", "offsets"} or absent.
        self.model: dict[ShareKey, dict] = {}
        self.last_start: dict[ShareKey, tuple[int, int]] = {}

    def refused(self, expected_code: ErrorCode | None, operation, *args) -> bool:
        """Run ``operation``; check it is refused exactly when the model says so."""
        try:
            records = operation(*args)
        except OperatingError as error:
            assert error.code == expected_code, (error, expected_code)
            return True
        assert expected_code is None, f"expected {expected_code}"
        self.harness.append(records if isinstance(records, list) else records[1])
        return False

    @rule(key=st.sampled_from(MODEL_KEYS), state_epoch=st.integers(0, 2),
          leader_epoch=st.integers(0, 3), start_offset=st.integers(-1, OFFSET_LIMIT),
          batches=batches_strategy)
    def write(self, key, state_epoch, leader_epoch, start_offset, batches) -> None:
        entry = self.model.get(key)
        expected = None
        if entry is not None:
            if leader_epoch < entry["leader_epoch"]:
                expected = ErrorCode.FENCED_LEADER_EPOCH
            elif state_epoch < entry["state_epoch"]:
                expected = ErrorCode.FENCED_STATE_EPOCH
            elif state_epoch > entry["state_epoch"]:
                expected = ErrorCode.INVALID_REQUEST
        if self.refused(expected, self.harness.shard.write, key, state_epoch, leader_epoch,
                        start_offset, -1, batches):
            return
        if entry is None:
            entry = self.model[key] = {"state_epoch": state_epoch, "leader_epoch": leader_epoch,
                                       "start_offset": start_offset, "offsets": {}}
        entry["leader_epoch"] = leader_epoch
        entry["start_offset"] = max(entry["start_offset"], start_offset)
        entry["offsets"] = per_offset_model(
            [[batch(o, o, state, count) for o, (count, state) in entry["offsets"].items()], batches],
            entry["start_offset"],
        )

    @rule(key=st.sampled_from(MODEL_KEYS), leader_epoch=st.integers(-1, 3))
    def read(self, key, leader_epoch) -> None:
        entry = self.model.get(key)
        expected = None
        if entry is not None and leader_epoch != -1 and leader_epoch < entry["leader_epoch"]:
            expected = ErrorCode.FENCED_LEADER_EPOCH
        if self.refused(expected, self.harness.shard.read, key, leader_epoch):
            return
        if entry is None and leader_epoch != -1:
            self.model[key] = {"state_epoch": 0, "leader_epoch": leader_epoch, "start_offset": -1,
                               "offsets": {}}
        elif entry is not None:
            entry["leader_epoch"] = max(entry["leader_epoch"], leader_epoch)

    @rule(key=st.sampled_from(MODEL_KEYS), state_epoch=st.integers(0, 3),
          start_offset=st.integers(-1, OFFSET_LIMIT))
    def initialize_state(self, key, state_epoch, start_offset) -> None:
        entry = self.model.get(key)
        expected = None
        if entry is not None:
            never_initialized = entry["start_offset"] == -1 and not entry["offsets"]
            if state_epoch < entry["state_epoch"] or (
                state_epoch == entry["state_epoch"] and not never_initialized
            ):
                expected = ErrorCode.FENCED_STATE_EPOCH
        if self.refused(expected, self.harness.shard.initialize, key, state_epoch, start_offset):
            return
        self.model[key] = {"state_epoch": state_epoch,
                           "leader_epoch": entry["leader_epoch"] if entry else -1,
                           "start_offset": start_offset, "offsets": {}}
        self.last_start.pop(key, None)

    @rule(key=st.sampled_from(MODEL_KEYS))
    def delete(self, key) -> None:
        self.harness.append(self.harness.shard.delete(key))
        self.model.pop(key, None)
        self.last_start.pop(key, None)

    @rule(key=st.sampled_from(MODEL_KEYS))
    def snapshot(self, key) -> None:
        self.harness.append(self.harness.shard.snapshot(key))

    @invariant()
    def shard_matches_model(self) -> None:
        shard = self.harness.shard
        assert sorted(shard.keys(), key=repr) == sorted(self.model, key=repr)
        for key, entry in self.model.items():
            result = shard.read(key, -1)[0]
            assert_normalized(list(result.batches))
            assert expand(result.batches) == entry["offsets"]
            assert (result.state_epoch, result.leader_epoch, result.start_offset) == (
                entry["state_epoch"], entry["leader_epoch"], entry["start_offset"])

    @invariant()
    def start_offset_never_moves_back_within_a_state_epoch(self) -> None:
        for key in self.harness.shard.keys():
            summary = self.harness.shard.read_summary(key)
            previous = self.last_start.get(key)
            if previous is not None and previous[0] == summary.state_epoch:
                assert summary.start_offset >= previous[1]
            self.last_start[key] = (summary.state_epoch, summary.start_offset)

    @invariant()
    def recovery_reproduces_the_live_state(self) -> None:
        live = full_state(self.harness.shard)
        assert full_state(recovered(self.harness.log, 0, self.settings)) == live
        tail_from = self.harness.shard.prunable_before()
        assert full_state(recovered(self.harness.log, tail_from, self.settings)) == live


ShareStateMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_share_state_model = ShareStateMachine.TestCase


def test_read_results_cannot_change_the_shard_state() -> None:
    harness = Harness()
    harness.write(start_offset=0, batches=[batch(0, 9)])
    result = harness.read()
    assert isinstance(result.batches, tuple)
    with pytest.raises(AttributeError):
        result.batches[0].state = ARCHIVED  # type: ignore[misc]
    assert harness.read().batches == (batch(0, 9),)
