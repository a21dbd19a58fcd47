"""node.log: the partition log on disk, example by example."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.errors import ErrorCode
from node.log import (
    DuplicateSequenceError,
    FencedLeaderEpochError,
    InvalidProducerEpochError,
    KafkaStorageError,
    LogConfig,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    PartitionLog,
    UnexpectedAppendOffsetError,
)
from proto.batch import BatchTooLargeError, CorruptBatchError, build_batch, iter_batches, records_in


def batch(count: int = 3, *, value: bytes = b"v" * 50, timestamp_ms: int = 1000, **producer) -> bytes:
    return build_batch([(None, value, (), timestamp_ms)] * count, **producer)


def keyed(pairs: list[tuple[bytes, bytes | None]], timestamp_ms: int = 1000) -> bytes:
    return build_batch([(key, value, (), timestamp_ms) for key, value in pairs])


def offsets(data: bytes) -> list[int]:
    return [record.offset for record in records_in(data)]


def log_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.suffix == ".log"}


@pytest.fixture(autouse=True)
def cheap_fsync(monkeypatch):
    """Durability is tested by counting fsyncs, not by paying for them."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_leader_append_assigns_offsets_and_reads_back(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    first = log.append_as_leader(batch(3, timestamp_ms=5), 0, 1)
    second = log.append_as_leader(batch(2) + batch(4), 0, 2)
    assert (first.first_offset, first.last_offset, first.record_count, first.max_timestamp) == (0, 2, 3, 5)
    assert (second.first_offset, second.last_offset, second.record_count) == (3, 8, 6)
    assert log.log_end_offset == 9 and log.log_start_offset == 0
    assert offsets(log.read(0, 10**6, 9)) == list(range(9))
    assert [header.leader_epoch for _, header in iter_batches(log.read(0, 10**6, 9))] == [0, 0, 0]


def test_read_returns_whole_batches_bounded_by_max_offset_and_max_bytes(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    for _ in range(5):
        log.append_as_leader(batch(10), 0, 0)
    size = len(batch(10))
    # Starting inside a batch returns the whole batch.
    assert offsets(log.read(15, 10**6, 50))[0] == 10
    # max_offset is exclusive and never splits a batch: 30 stops before batch 30..39.
    assert offsets(log.read(0, 10**6, 30)) == list(range(30))
    assert log.read(0, 10**6, 29)[:0] == b"" and offsets(log.read(0, 10**6, 29)) == list(range(20))
    # max_bytes cuts at a batch boundary but always returns at least one batch.
    assert len(log.read(0, 2 * size + 1, 50)) == 2 * size
    assert len(log.read(0, 1, 50)) == size
    assert log.read(50, 10**6, 50) == b""
    with pytest.raises(OffsetOutOfRangeError) as raised:
        log.read(51, 100, 100)
    assert raised.value.code == ErrorCode.OFFSET_OUT_OF_RANGE


def test_index_lookups_find_every_offset_across_segments(tmp_path):
    config = LogConfig(segment_bytes=3000, index_interval_bytes=200)
    log = PartitionLog(tmp_path, config, 0)
    for count in [1, 2, 3, 4, 5, 6, 7] * 6:
        log.append_as_leader(batch(count, value=b"x" * 20), 0, 0)
    assert log.segment_count > 3
    active = log._segments[0]
    assert active.index_entries, "a 200-byte interval must produce index entries"
    assert all(a < b for (a, _), (b, _) in zip(active.index_entries, active.index_entries[1:]))
    for offset in range(log.log_end_offset):
        data = log.read(offset, 1, log.log_end_offset)
        got = offsets(data)
        assert got[0] <= offset <= got[-1]
    log.close()
    # The indexes reach their files and are adopted unchanged on open.
    reopened = PartitionLog(tmp_path, config, 0)
    assert reopened._segments[0].index_entries == active.index_entries


def test_missing_or_garbage_index_is_rebuilt(tmp_path):
    config = LogConfig(index_interval_bytes=100)
    log = PartitionLog(tmp_path, config, 0)
    for _ in range(20):
        log.append_as_leader(batch(2), 0, 0)
    expected = log._segments[0].index_entries
    log.close()
    index_file = tmp_path / "00000000000000000000.index"
    index_file.write_bytes(b"\xff" * 13)
    (tmp_path / "00000000000000000000.timeindex").unlink()
    log = PartitionLog(tmp_path, config, 0)
    assert log._segments[0].index_entries == expected
    assert len(index_file.read_bytes()) == 8 * len(expected)
    assert offsets(log.read(17, 10**6, 40)) == list(range(16, 40))


def test_refused_appends_leave_disk_unchanged(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(max_message_bytes=1000), 0)
    log.append_as_leader(batch(2), 0, 0)
    before = log_files(tmp_path)
    corrupt = bytearray(batch(2))
    corrupt[-1] ^= 1
    with pytest.raises(CorruptBatchError):
        log.append_as_leader(batch(2) + bytes(corrupt), 0, 0)
    with pytest.raises(BatchTooLargeError):
        log.append_as_leader(batch(2) + batch(1, value=b"x" * 2000), 0, 0)
    with pytest.raises(CorruptBatchError):
        log.append_as_leader(batch(2)[:-3], 0, 0)
    assert log_files(tmp_path) == before
    assert log.log_end_offset == 2


def test_full_disk_truncates_the_partial_write(tmp_path, monkeypatch):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    log.append_as_leader(batch(2), 0, 0)
    before = log_files(tmp_path)
    real_pwrite = os.pwrite

    def half_then_enospc(fd, data, position):
        if len(data) > 20:
            return real_pwrite(fd, bytes(data)[: len(data) // 2], position)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    with pytest.raises(KafkaStorageError) as raised:
        log.append_as_leader(batch(5), 0, 0)
    assert raised.value.code == ErrorCode.KAFKA_STORAGE_ERROR and raised.value.retriable
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert log_files(tmp_path) == before
    assert log.log_end_offset == 2
    assert log.append_as_leader(batch(1), 0, 0).first_offset == 2
    log.close()
    assert PartitionLog(tmp_path, LogConfig(), 0).log_end_offset == 3


def fill(log: PartitionLog, batches: int, count: int = 3) -> list[int]:
    """Append batches; return the byte position where each batch ends in the single segment."""
    ends = []
    for _ in range(batches):
        log.append_as_leader(batch(count), 0, 0)
        ends.append(log._segments[-1].size_bytes)
    return ends


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_recovery_truncates_a_torn_tail_at_any_cut(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("torn")
    log = PartitionLog(directory, LogConfig(), 0)
    ends = fill(log, 8)
    # A crash: no close(); the tail of the last segment is torn at a random byte.
    log_path = directory / "00000000000000000000.log"
    cut = data.draw(st.integers(0, ends[-1]))
    with open(log_path, "r+b") as file:
        file.truncate(cut)
    recovered = PartitionLog(directory, LogConfig(), 0)
    whole_batches = sum(1 for end in ends if end <= cut)
    assert recovered.log_end_offset == 3 * whole_batches
    assert log_path.stat().st_size == (ends[whole_batches - 1] if whole_batches else 0)
    assert offsets(recovered.read(0, 10**6, 100)) == list(range(3 * whole_batches))
    assert recovered.append_as_leader(batch(1), 0, 0).first_offset == 3 * whole_batches


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_recovery_truncates_at_a_corrupt_byte(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("corrupt")
    log = PartitionLog(directory, LogConfig(flush_ms=None), 0)
    log.append_as_leader(batch(3), 0, 0)
    log.flush()  # the first batch is below the recovery point
    ends = fill(log, 6)
    # Bytes 0-15 of a batch (base offset, length, leader epoch) are outside
    # the CRC, as in Kafka; the length is checked by the walk, the other two
    # are rewritten by the leader anyway. Damage from the magic byte on.
    damaged = data.draw(st.integers(1, len(ends) - 1))
    batch_start = ends[damaged - 1]
    position = data.draw(st.integers(batch_start + 16, ends[damaged] - 1))
    log_path = directory / "00000000000000000000.log"
    content = bytearray(log_path.read_bytes())
    content[position] ^= 0x5A
    log_path.write_bytes(bytes(content))
    recovered = PartitionLog(directory, LogConfig(), 0)
    # The first batch and the damaged - 1 batches before the damaged one survive.
    survivors = damaged + 1
    assert recovered.log_end_offset == 3 * survivors
    assert offsets(recovered.read(0, 10**6, 100)) == list(range(3 * survivors))


def test_recovery_drops_segments_after_a_torn_one(tmp_path, caplog):
    config = LogConfig(segment_bytes=1000, flush_ms=None)
    log = PartitionLog(tmp_path, config, 0)
    for _ in range(12):
        log.append_as_leader(batch(3), 0, 0)
    assert log.segment_count >= 3
    second = log._segments[1]
    with open(second.log_path, "r+b") as file:
        file.truncate(second.size_bytes - 5)
    recovered = PartitionLog(tmp_path, config, 0)
    assert recovered.segment_count == 2
    assert recovered.log_end_offset == second.next_offset - 3
    assert "torn" in caplog.text


def test_retention_by_time_never_deletes_the_active_segment(tmp_path):
    config = LogConfig(segment_bytes=1000, retention_ms=10_000)
    log = PartitionLog(tmp_path, config, 0)
    for timestamp_ms in range(0, 12_000, 1000):
        log.append_as_leader(batch(3, timestamp_ms=timestamp_ms), 0, timestamp_ms)
    segments_before = log.segment_count
    assert log.enforce_retention(now_ms=5_000) == 0
    deleted = log.enforce_retention(now_ms=15_000)
    assert 0 < deleted < segments_before
    assert all(segment.max_timestamp >= 5_000 for segment in log._segments[:-1])
    assert log.log_start_offset == log._segments[0].base_offset
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100, 100)
    closed = log.segment_count - 1
    assert log.enforce_retention(now_ms=10**9) == closed
    assert log.segment_count == 1 and log.log_end_offset == 36
    assert log.log_start_offset == log.segment_base_offsets[0] == 27  # three batches per segment


def test_retention_by_bytes_and_high_watermark(tmp_path):
    config = LogConfig(segment_bytes=1000, retention_bytes=2500, retention_ms=-1)
    log = PartitionLog(tmp_path, config, 0)
    for _ in range(20):
        log.append_as_leader(batch(3), 0, 0)
    assert log.enforce_retention(0, max_offset=0) == 0
    total = log.size_bytes
    deleted = log.enforce_retention(0)
    assert deleted > 0 and log.size_bytes < total
    # Kafka's rule: delete the oldest while what remains is still >= retention.bytes.
    assert log.size_bytes >= 2500
    assert log.size_bytes - log._segments[0].size_bytes < 2500
    log.close()
    reopened = PartitionLog(tmp_path, config, 0)
    assert reopened.log_start_offset == log.log_start_offset > 0


def test_delete_records_moves_the_log_start_offset_inside_a_segment(tmp_path):
    config = LogConfig(segment_bytes=1000)
    log = PartitionLog(tmp_path, config, 0)
    for _ in range(10):
        log.append_as_leader(batch(3), 0, 0)
    segments = log.segment_count
    assert log.delete_records_before(4) == 4
    assert log.segment_count == segments
    assert offsets(log.read(4, 10**6, 30))[0] == 3  # the whole batch holding offset 4
    with pytest.raises(OffsetOutOfRangeError):
        log.read(3, 100, 30)
    with pytest.raises(OffsetOutOfRangeError):
        log.delete_records_before(31)
    log.delete_records_before(30)
    assert log.log_start_offset == log.log_end_offset == 30
    assert log.segment_count == 1 and log.size_bytes == 0
    assert log.append_as_leader(batch(1), 0, 0).first_offset == 30
    log.close()
    assert PartitionLog(tmp_path, config, 0).log_start_offset == 30


def test_truncate_to_removes_whole_batches_and_epochs(tmp_path):
    config = LogConfig(segment_bytes=1000)
    log = PartitionLog(tmp_path, config, 0)
    for epoch in (0, 0, 1, 1, 2, 2, 2, 2):
        log.append_as_leader(batch(3), epoch, 0)
    assert [tuple(entry) for entry in log.leader_epoch_entries] == [(0, 0), (1, 6), (2, 12)]
    log.truncate_to(13)  # inside batch 12..14: the whole batch goes
    assert log.log_end_offset == 12
    assert [tuple(entry) for entry in log.leader_epoch_entries] == [(0, 0), (1, 6)]
    assert offsets(log.read(0, 10**6, 100)) == list(range(12))
    log.truncate_to(100)
    assert log.log_end_offset == 12
    log.append_as_follower(log_bytes := _replicated(12, epoch=3), 0)
    assert log.log_end_offset == 12 + 3 and log.latest_epoch == 3
    assert log_bytes
    log.truncate_to(0)
    assert log.log_end_offset == 0 and log.leader_epoch_entries == []


def _replicated(base_offset: int, epoch: int, count: int = 3, **producer) -> bytes:
    from proto.batch import stamp

    return stamp(batch(count, **producer), base_offset, epoch)


def test_follower_append_checks_contiguity(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    log.append_as_follower(_replicated(0, 1) + _replicated(3, 1), 0)
    with pytest.raises(UnexpectedAppendOffsetError):
        log.append_as_follower(_replicated(5, 1), 0)
    log.append_as_follower(_replicated(10, 2), 0)  # a hole, as after compaction
    assert log.log_end_offset == 13
    assert [tuple(entry) for entry in log.leader_epoch_entries] == [(1, 0), (2, 10)]
    assert offsets(log.read(6, 10**6, 13)) == [10, 11, 12]


def test_end_offset_for_epoch_follows_kip_279(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    log.assign_epoch(2, 0)
    log.append_as_leader(batch(5), 2, 0)
    log.append_as_leader(batch(5), 4, 0)
    log.append_as_leader(batch(5), 7, 0)
    assert log.end_offset_for_epoch(7) == (7, 15)
    assert log.end_offset_for_epoch(4) == (4, 10)
    assert log.end_offset_for_epoch(5) == (4, 10)  # largest epoch <= 5 and the next epoch's start
    assert log.end_offset_for_epoch(3) == (2, 5)
    assert log.end_offset_for_epoch(1) == (1, 0)
    assert log.end_offset_for_epoch(8) == (-1, -1)
    with pytest.raises(FencedLeaderEpochError):
        log.append_as_leader(batch(1), 6, 0)
    log.close()
    reopened = PartitionLog(tmp_path, LogConfig(), 0)
    assert reopened.end_offset_for_epoch(4) == (4, 10)
    reopened.close()
    (tmp_path / "leader-epoch-checkpoint").write_text("garbage")
    rebuilt = PartitionLog(tmp_path, LogConfig(), 0)
    assert [tuple(entry) for entry in rebuilt.leader_epoch_entries] == [(2, 0), (4, 5), (7, 10)]


def test_idempotent_producer_sequences(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    producer = dict(producer_id=42, producer_epoch=0)
    first = log.append_as_leader(batch(3, base_sequence=0, **producer), 0, 0)
    log.append_as_leader(batch(2, base_sequence=3, **producer), 0, 0)
    retry = log.append_as_leader(batch(3, base_sequence=0, **producer), 0, 0)
    assert retry.duplicate and (retry.first_offset, retry.last_offset) == (first.first_offset, first.last_offset)
    assert log.log_end_offset == 5
    with pytest.raises(OutOfOrderSequenceError) as raised:
        log.append_as_leader(batch(1, base_sequence=7, **producer), 0, 0)
    assert raised.value.code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    with pytest.raises(DuplicateSequenceError):
        log.append_as_leader(batch(3, base_sequence=0, **producer) + batch(1, base_sequence=5, **producer), 0, 0)
    # A new epoch restarts at sequence 0 and fences the old one.
    with pytest.raises(OutOfOrderSequenceError):
        log.append_as_leader(batch(1, base_sequence=5, producer_id=42, producer_epoch=1), 0, 0)
    log.append_as_leader(batch(1, base_sequence=0, producer_id=42, producer_epoch=1), 0, 0)
    with pytest.raises(InvalidProducerEpochError) as fenced:
        log.append_as_leader(batch(1, base_sequence=5, **producer), 0, 0)
    assert fenced.value.code == ErrorCode.INVALID_PRODUCER_EPOCH
    # Two batches of one producer in one append must be consecutive.
    log.append_as_leader(
        batch(2, base_sequence=1, producer_id=42, producer_epoch=1)
        + batch(2, base_sequence=3, producer_id=42, producer_epoch=1),
        0,
        0,
    )
    assert log.log_end_offset == 10
    log.close()
    # The state is rebuilt from the batch headers on open.
    reopened = PartitionLog(tmp_path, LogConfig(), 0)
    again = reopened.append_as_leader(batch(2, base_sequence=3, producer_id=42, producer_epoch=1), 0, 0)
    assert again.duplicate and again.first_offset == 8
    with pytest.raises(OutOfOrderSequenceError):
        reopened.append_as_leader(batch(1, base_sequence=9, producer_id=42, producer_epoch=1), 0, 0)
    # Sequences wrap from 2**31 - 1 to 0.
    reopened.append_as_leader(batch(2, base_sequence=2**31 - 2, producer_id=7, producer_epoch=0), 0, 0)
    reopened.append_as_leader(batch(1, base_sequence=0, producer_id=7, producer_epoch=0), 0, 0)


def test_follower_appends_update_producer_state(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    log.append_as_follower(_replicated(0, 1, producer_id=9, producer_epoch=0, base_sequence=0), 0)
    # This replica becomes the leader and sees the producer's retry.
    assert log.append_as_leader(batch(3, producer_id=9, producer_epoch=0, base_sequence=0), 1, 0).duplicate
    log.truncate_to(0)
    assert not log.append_as_leader(batch(3, producer_id=9, producer_epoch=0, base_sequence=0), 1, 0).duplicate


def test_producer_ids_are_bounded_and_expire(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(max_producer_ids=3, producer_id_expiration_ms=1000), 0)
    for producer_id in range(5):
        log.append_as_leader(batch(1, producer_id=producer_id, producer_epoch=0, base_sequence=0), 0, producer_id)
    assert len(log.producer_state) == 3
    assert log.producer_state.entry(0) is None and log.producer_state.entry(4) is not None
    log.enforce_retention(now_ms=1003)
    assert len(log.producer_state) == 1


def test_offset_for_timestamp(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(segment_bytes=600, index_interval_bytes=100), 0)
    for index in range(10):
        log.append_as_leader(
            build_batch([(None, b"x", (), 100 * index + 10), (None, b"y", (), 100 * index + 50)]), 0, 0
        )
    assert log.segment_count > 2
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(10) == 0
    assert log.offset_for_timestamp(11) == 1
    assert log.offset_for_timestamp(450) == 9
    assert log.offset_for_timestamp(951) is None
    # The found record's own timestamp comes with it (ListOffsets answers with it).
    assert log.record_for_timestamp(11) == (1, 50)
    assert log.record_for_timestamp(440) == (9, 450)
    assert log.record_for_timestamp(951) is None
    log.delete_records_before(5)
    assert log.offset_for_timestamp(0) == 5


def test_compaction_keeps_the_newest_record_per_key_with_offset_holes(tmp_path):
    config = LogConfig(segment_bytes=400, cleanup_policy="compact", delete_retention_ms=1000)
    log = PartitionLog(tmp_path, config, 0)
    log.append_as_leader(keyed([(b"a", b"1"), (b"b", b"1"), (b"c", b"1")], 0), 0, 0)  # 0-2
    log.append_as_leader(keyed([(b"a", b"2"), (b"b", None)], 0), 0, 0)  # 3-4, b deleted
    log.append_as_leader(keyed([(None, b"keyless"), (b"c", b"2")], 5000), 0, 0)  # 5-6
    for index in range(8):
        log.append_as_leader(keyed([(b"z%d" % index, b"x" * 40)], 5000), 0, 0)
    log.roll(0)
    removed = log.compact(now_ms=500)
    survivors = {record.offset: (record.key, record.value) for record in records_in(log.read(0, 10**6, 100))}
    assert removed == 3  # a@0, b@1, c@2
    assert survivors[3] == (b"a", b"2") and survivors[4] == (b"b", None) and survivors[6] == (b"c", b"2")
    assert survivors[5] == (None, b"keyless")
    assert 0 not in survivors and 1 not in survivors
    assert log.log_end_offset == 15 and log.log_start_offset == 0
    # Once the tombstone is older than delete.retention.ms, it goes too.
    assert log.compact(now_ms=2000) == 1
    survivors = {record.offset for record in records_in(log.read(0, 10**6, 100))}
    assert 4 not in survivors and {3, 5, 6} <= survivors
    # Reads that start in a hole get the next batch; reopening finds the same records.
    assert offsets(log.read(1, 10**6, 100))[0] == 3
    log.close()
    reopened = PartitionLog(tmp_path, config, 0)
    assert {record.offset for record in records_in(reopened.read(0, 10**6, 100))} == survivors
    assert not list(tmp_path.glob("*.cleaned"))


def test_compaction_never_touches_the_active_segment(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(cleanup_policy="compact"), 0)
    log.append_as_leader(keyed([(b"a", b"1"), (b"a", b"2")]), 0, 0)
    assert log.compact(0) == 0
    assert offsets(log.read(0, 10**6, 10)) == [0, 1]


def test_flush_policy_counts_fsyncs(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    log = PartitionLog(tmp_path, LogConfig(flush_messages=10, flush_ms=None), 0)
    log.assign_epoch(0, 0)  # the epoch checkpoint is synced when it changes
    synced.clear()
    log.append_as_leader(batch(4), 0, 0)
    log.append_as_leader(batch(5), 0, 0)
    assert synced == []
    log.append_as_leader(batch(1), 0, 0)
    assert synced, "10 messages must trigger a flush"
    assert log.recovery_point == 10

    timed = PartitionLog(tmp_path / "timed", LogConfig(flush_messages=None, flush_ms=1000), 0)
    timed.assign_epoch(0, 0)
    synced.clear()
    timed.append_as_leader(batch(4), 0, 100)
    assert timed.next_flush_deadline_ms() == 1100
    assert not timed.maybe_flush(1099) and synced == []
    assert timed.maybe_flush(1100) and synced
    assert timed.next_flush_deadline_ms() is None
    synced.clear()
    assert not timed.maybe_flush(5000) and synced == []


def test_segment_rolls_by_time(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(segment_ms=1000), 0)
    log.append_as_leader(batch(1), 0, 0)
    log.append_as_leader(batch(1), 0, 999)
    assert log.segment_count == 1
    log.append_as_leader(batch(1), 0, 1000)
    assert log.segment_base_offsets == [0, 2]


def test_invalid_config_is_refused():
    from coordinator.errors import OperatingError

    with pytest.raises(OperatingError) as raised:
        LogConfig(segment_bytes=2**31, cleanup_policy="sometimes")
    assert raised.value.code == ErrorCode.INVALID_CONFIG
    assert "segment_bytes" in raised.value.message and "cleanup_policy" in raised.value.message
