"""Producer-state snapshots: written at rolls and on close, loaded on open, never trusted blindly.

The reference everywhere is a full rebuild: the producer state folded from
every batch header of the log, which is what opening a log did before
snapshots existed. Appends use the record timestamp as ``now_ms`` so that the
live state, a reload and a full rebuild agree exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import crc32c
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.log import DuplicateSequenceError, LogConfig, OutOfOrderSequenceError, PartitionLog
from node.log.producer_snapshot import (
    SNAPSHOTS_KEPT,
    CorruptSnapshotError,
    decode_snapshot,
    encode_snapshot,
    snapshot_file_name,
)
from node.log.producer_state import ProducerStateManager
from proto.batch import build_batch, iter_batches

SMALL_SEGMENTS = LogConfig(segment_bytes=1000, index_interval_bytes=200, retention_ms=-1)


@pytest.fixture(autouse=True)
def cheap_fsync(monkeypatch):
    """Durability is not what these tests check."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def producer_batch(producer_id: int, base_sequence: int, *, epoch: int = 0, count: int = 2, timestamp_ms: int) -> bytes:
    return build_batch(
        [(None, b"v" * 40, (), timestamp_ms)] * count,
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=base_sequence,
    )


def append(log: PartitionLog, producer_id: int, timestamp_ms: int, *, epoch: int | None = None, count: int = 2):
    """Append the producer's next batch (its next sequence, or 0 in a new epoch), at now_ms = timestamp_ms."""
    entry = log.producer_state.entry(producer_id)
    if entry is None or (epoch is not None and epoch != entry.producer_epoch):
        sequence = 0
        epoch = epoch if epoch is not None else 0
    else:
        sequence = entry.last_sequence + 1
        epoch = entry.producer_epoch
    data = producer_batch(producer_id, sequence, epoch=epoch, count=count, timestamp_ms=timestamp_ms)
    return log.append_as_leader(data, 0, timestamp_ms)


def fill(log: PartitionLog, batches: int, producers: int = 4, start_ms: int = 1000) -> None:
    for index in range(batches):
        append(log, index % producers, start_ms + index)


def state(manager: ProducerStateManager) -> list[tuple]:
    """Every entry, in eviction order, as plain values."""
    return [
        (entry.producer_id, entry.producer_epoch, entry.last_append_ms, list(entry.batches))
        for entry in manager.entries()
    ]


def full_rebuild(log: PartitionLog) -> list[tuple]:
    """The producer state folded from every batch the log holds, as an open without snapshots builds it."""
    manager = ProducerStateManager(log.config.max_producer_ids, log.config.producer_id_expiration_ms)
    data = log.read(log.log_start_offset, 10**9, log.log_end_offset)
    for _, header in iter_batches(data):
        manager.record(header, header.max_timestamp)
    return state(manager)


def snapshot_offsets(directory: Path) -> list[int]:
    return sorted(int(path.name.split(".")[0]) for path in directory.glob("*.snapshot"))


def crash(log: PartitionLog) -> None:
    """kill -9: the page cache keeps what was written; no flush, no close, no snapshot on close."""
    for segment in log._segments:
        segment.close()


@pytest.fixture
def replayed(monkeypatch):
    """Counts the batches recorded into any producer state (the replay work of an open or a reload)."""
    calls = []
    original = ProducerStateManager.record

    def counting_record(self, header, now_ms):
        calls.append(header.base_offset)
        original(self, header, now_ms)

    monkeypatch.setattr(ProducerStateManager, "record", counting_record)
    return calls


# ------------------------------------------------------------------ writing


def test_snapshot_is_written_at_each_roll_and_on_close(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert snapshot_offsets(tmp_path) == []
    fill(log, 12)
    assert log.segment_count >= 3
    # One snapshot at every base offset but the first (the log started empty there).
    bases = log.segment_base_offsets
    assert _snapshot_names(tmp_path) == [f"{base:020d}.snapshot" for base in bases[1:][-SNAPSHOTS_KEPT:]]
    end = log.log_end_offset
    assert end not in bases
    log.close()
    assert _snapshot_names(tmp_path)[-1] == f"{end:020d}.snapshot"


def _snapshot_names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".snapshot"))


def test_a_snapshot_holds_the_state_as_of_its_offset(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 12)
    before_roll = state(log.producer_state)
    log.roll(0)
    roll_offset = log.log_end_offset
    fill(log, 3, start_ms=5000)
    path = tmp_path / snapshot_file_name(roll_offset)
    loaded = ProducerStateManager(10, 1000)
    loaded.load(decode_snapshot(path.read_bytes(), roll_offset))
    assert state(loaded) == before_roll


def test_at_most_snapshots_kept_and_none_below_the_oldest_segment(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    for _ in range(10):
        fill(log, 2)
        log.roll(0)
    assert len(snapshot_offsets(tmp_path)) == SNAPSHOTS_KEPT
    assert snapshot_offsets(tmp_path) == log.segment_base_offsets[-SNAPSHOTS_KEPT:]


def test_format_round_trip_and_refusals():
    manager = ProducerStateManager(10, 1000)
    for sequence, producer_id in enumerate([5, 6, 5]):
        header = next(iter_batches(producer_batch(producer_id, 0 if producer_id == 6 else sequence, timestamp_ms=7)))[1]
        manager.record(header._replace(base_offset=10 * sequence), now_ms=100 + sequence)
    text = encode_snapshot(40, manager.entries())
    assert text.startswith("shoal-producer-snapshot 1 ")
    reloaded = ProducerStateManager(10, 1000)
    reloaded.load(decode_snapshot(text.encode("ascii"), 40))
    assert state(reloaded) == state(manager)
    data = text.encode("ascii")
    with pytest.raises(CorruptSnapshotError, match="file name for offset 41"):
        decode_snapshot(data, 41)
    with pytest.raises(CorruptSnapshotError, match="version"):
        decode_snapshot(data.replace(b"snapshot 1 ", b"snapshot 9 ", 1), 40)
    with pytest.raises(CorruptSnapshotError, match="CRC"):
        decode_snapshot(data[:-3] + b"0]}", 40)
    with pytest.raises(CorruptSnapshotError):
        decode_snapshot(b"", 40)


def test_load_evicts_the_oldest_when_max_producer_ids_shrank():
    manager = ProducerStateManager(10, 1000)
    for producer_id in range(5):
        header = next(iter_batches(producer_batch(producer_id, 0, timestamp_ms=1)))[1]
        manager.record(header, now_ms=1)
    smaller = ProducerStateManager(3, 1000)
    smaller.load(manager.entries())
    assert [entry.producer_id for entry in smaller.entries()] == [2, 3, 4]


# ------------------------------------------------------------------ opening


def test_reopen_after_many_batches_equals_a_full_rebuild(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 60, producers=7)
    append(log, 3, 2000, epoch=1)
    append(log, 3, 2001)
    append(log, 4, 2002, epoch=2)
    live = state(log.producer_state)
    assert live == full_rebuild(log)
    log.close()
    reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert state(reopened.producer_state) == live == full_rebuild(reopened)
    # A crash reopen has no snapshot at the end: the roll snapshot plus the tail.
    fill(reopened, 9, producers=7, start_ms=3000)
    live = state(reopened.producer_state)
    crash(reopened)
    recovered = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert state(recovered.producer_state) == live == full_rebuild(recovered)


def test_open_replays_only_the_batches_after_the_snapshot(tmp_path, replayed):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 40)
    active_base = log.segment_base_offsets[-1]
    assert active_base > 0
    tail = [offset for offset in _batch_offsets(log) if offset >= active_base]
    assert tail
    crash(log)

    replayed.clear()
    recovered = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    # The newest snapshot is the roll into the active segment.
    assert replayed == tail
    recovered.close()

    replayed.clear()
    reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert replayed == []  # the snapshot on close covers everything
    expected = state(reopened.producer_state)
    reopened.close()

    for path in tmp_path.glob("*.snapshot"):
        path.unlink()
    replayed.clear()
    rebuilt = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert replayed == _batch_offsets(rebuilt)  # without snapshots, every batch
    assert state(rebuilt.producer_state) == expected


def _batch_offsets(log: PartitionLog) -> list[int]:
    return [header.base_offset for _, header in iter_batches(log.read(0, 10**9, log.log_end_offset))]


def test_duplicate_is_detected_after_reopen(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 20, producers=2)
    first = log.append_as_leader(producer_batch(42, 0, count=3, timestamp_ms=5000), 0, 5000)
    fill(log, 10, producers=2, start_ms=6000)  # rolls: the batch of producer 42 is in a snapshot
    assert first.last_offset < log.segment_base_offsets[-1]
    second = log.append_as_leader(producer_batch(42, 3, count=2, timestamp_ms=7000), 0, 7000)
    log.close()
    for reopen in ("clean", "crash"):
        reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
        end = reopened.log_end_offset
        retry = reopened.append_as_leader(producer_batch(42, 3, count=2, timestamp_ms=7000), 0, 8000)
        assert retry.duplicate and (retry.first_offset, retry.last_offset) == (second.first_offset, second.last_offset)
        older = reopened.append_as_leader(producer_batch(42, 0, count=3, timestamp_ms=5000), 0, 8000)
        assert older.duplicate and older.first_offset == first.first_offset
        with pytest.raises(DuplicateSequenceError):
            reopened.append_as_leader(
                producer_batch(42, 3, count=2, timestamp_ms=7000) + producer_batch(42, 5, timestamp_ms=7000), 0, 8000
            )
        with pytest.raises(OutOfOrderSequenceError):
            reopened.append_as_leader(producer_batch(42, 9, timestamp_ms=7000), 0, 8000)
        assert reopened.log_end_offset == end
        if reopen == "clean":
            reopened.close()
        else:
            crash(reopened)


def test_corrupt_snapshot_falls_back_to_an_older_one(tmp_path, caplog, replayed):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 40)
    expected = state(log.producer_state)
    contents = _segment_contents(tmp_path)
    log.close()
    newest, older = snapshot_offsets(tmp_path)[-1], snapshot_offsets(tmp_path)[-2]
    newest_path = tmp_path / snapshot_file_name(newest)
    _flip_byte(newest_path, position=len(newest_path.read_bytes()) // 2)

    replayed.clear()
    with caplog.at_level(logging.WARNING, logger="node.log.producer_snapshot"):
        reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert str(newest_path) in caplog.text and "CRC32C" in caplog.text
    assert not newest_path.exists()
    assert replayed == [offset for offset in _batch_offsets(reopened) if offset >= older]
    assert state(reopened.producer_state) == expected == full_rebuild(reopened)
    assert _segment_contents(tmp_path) == contents


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # a torn write
        lambda data: b"",
        lambda data: b"shoal-producer-snapshot 2 00000000\n{}",  # a version this code does not know
        lambda data: _with_valid_crc(b'{"offset": "zero", "producers": []}'),  # a body this code cannot read
    ],
    ids=["torn", "empty", "unknown-version", "bad-body"],
)
def test_every_snapshot_unusable_falls_back_to_a_full_rebuild(tmp_path, caplog, replayed, damage):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 40)
    expected = state(log.producer_state)
    contents = _segment_contents(tmp_path)
    log.close()
    for offset in snapshot_offsets(tmp_path):
        path = tmp_path / snapshot_file_name(offset)
        path.write_bytes(damage(path.read_bytes()))

    replayed.clear()
    with caplog.at_level(logging.WARNING, logger="node.log.producer_snapshot"):
        reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert caplog.text.count("Ignoring producer snapshot") == SNAPSHOTS_KEPT
    assert snapshot_offsets(tmp_path) == []
    assert replayed == _batch_offsets(reopened)
    assert state(reopened.producer_state) == expected == full_rebuild(reopened)
    assert _segment_contents(tmp_path) == contents
    reopened.close()
    assert snapshot_offsets(tmp_path) == [reopened.log_end_offset]


def _with_valid_crc(body: bytes) -> bytes:
    return b"shoal-producer-snapshot 1 %08x\n" % crc32c.crc32c(body) + body


def _segment_contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.log"))}


def _flip_byte(path: Path, position: int) -> None:
    content = bytearray(path.read_bytes())
    content[position] ^= 0x01
    path.write_bytes(bytes(content))


def test_snapshot_above_the_log_end_offset_is_deleted_on_open(tmp_path, caplog):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 40)
    active = log._segments[-1]
    active_base, active_path = active.base_offset, active.log_path
    log.close()
    end = snapshot_offsets(tmp_path)[-1]
    # Power loss: the snapshot on close survived, the active segment's unflushed tail did not.
    with open(active_path, "r+b") as file:
        file.truncate(5)
    recovered = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert recovered.log_end_offset == active_base < end
    assert end not in snapshot_offsets(tmp_path)
    assert max(snapshot_offsets(tmp_path)) <= recovered.log_end_offset
    assert state(recovered.producer_state) == full_rebuild(recovered)
    assert "torn" in caplog.text


def test_expiry_after_reopen_matches_expiry_before(tmp_path):
    # Appends at now_ms far from the record timestamps: a full rebuild would
    # date every producer by its timestamps, the snapshot keeps the append times.
    config = LogConfig(segment_bytes=1000, retention_ms=-1, producer_id_expiration_ms=10_000)
    log = PartitionLog(tmp_path, config, 0)
    for producer_id in range(6):
        data = producer_batch(producer_id, 0, timestamp_ms=1)
        log.append_as_leader(data, 0, 100_000 + 3_000 * producer_id)
    live = state(log.producer_state)
    log.close()
    reopened = PartitionLog(tmp_path, config, 0)
    assert state(reopened.producer_state) == live
    reopened.enforce_retention(now_ms=118_000)
    assert [entry.producer_id for entry in reopened.producer_state.entries()] == [3, 4, 5]


def test_eviction_order_survives_reopen(tmp_path):
    config = LogConfig(segment_bytes=1000, retention_ms=-1, max_producer_ids=3)
    log = PartitionLog(tmp_path, config, 0)
    for producer_id in (1, 2, 3, 1):
        append(log, producer_id, 1000 + producer_id)
    log.close()
    reopened = PartitionLog(tmp_path, config, 0)
    append(reopened, 4, 2000)
    # Producer 2 was the least recently appended, as it was before the restart.
    assert [entry.producer_id for entry in reopened.producer_state.entries()] == [3, 1, 4]


# --------------------------------------------------------------- truncation


def test_truncation_deletes_snapshots_above_and_reloads_from_the_newest_below(tmp_path, replayed):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 40)
    bases = log.segment_base_offsets
    assert len(bases) >= 4
    target = bases[-2] + 1  # inside the segment before the active one
    replayed.clear()
    log.truncate_to(target)
    new_end = log.log_end_offset
    assert snapshot_offsets(tmp_path) and max(snapshot_offsets(tmp_path)) <= new_end
    reload_from = bases[-2]
    assert replayed == [offset for offset in _batch_offsets(log) if offset >= reload_from]
    assert state(log.producer_state) == full_rebuild(log)
    fill(log, 5, start_ms=9000)
    expected = state(log.producer_state)
    log.close()
    reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert state(reopened.producer_state) == expected == full_rebuild(reopened)


def test_truncation_without_producer_batches_still_deletes_the_snapshots_above(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 4)
    log.roll(0)
    first_snapshot = log.log_end_offset
    log.append_as_leader(build_batch([(None, b"plain", (), 1)]), 0, 1)
    log.append_as_leader(build_batch([(None, b"plain", (), 1)]), 0, 1)
    log.roll(0)
    stale = log.log_end_offset
    assert snapshot_offsets(tmp_path) == [first_snapshot, stale]
    # No producer batch is cut, so the state stays; the snapshot at `stale` must go anyway.
    log.truncate_to(first_snapshot + 1)
    assert snapshot_offsets(tmp_path) == [first_snapshot]
    # The log grows past `stale` again with batches that snapshot never saw.
    fill(log, 3, start_ms=5000)
    assert log.log_end_offset > stale and log.segment_base_offsets[-1] == first_snapshot
    expected = state(log.producer_state)
    crash(log)
    recovered = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert state(recovered.producer_state) == expected == full_rebuild(recovered)


def test_truncate_fully_deletes_every_snapshot(tmp_path):
    log = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    fill(log, 40)
    assert snapshot_offsets(tmp_path)
    log.truncate_fully_and_start_at(500)
    assert snapshot_offsets(tmp_path) == []
    assert len(log.producer_state) == 0
    append(log, 1, 9000)
    log.close()
    reopened = PartitionLog(tmp_path, SMALL_SEGMENTS, 0)
    assert snapshot_offsets(tmp_path) == [reopened.log_end_offset]
    assert state(reopened.producer_state) == full_rebuild(reopened)


def test_retention_deletes_snapshots_below_the_oldest_segment(tmp_path):
    batch_bytes = len(producer_batch(0, 0, timestamp_ms=1))
    config = LogConfig(segment_bytes=10 * batch_bytes, retention_bytes=10 * batch_bytes, retention_ms=-1)
    log = PartitionLog(tmp_path, config, 0)
    for _ in range(3):
        fill(log, 5)
        log.roll(0)
    fill(log, 5)
    bases = log.segment_base_offsets
    assert len(bases) == 4 and snapshot_offsets(tmp_path) == bases[1:]
    # Four segments of 5 batches, retention keeps 10 batches: the two oldest go.
    assert log.enforce_retention(now_ms=0) == 2
    assert log.segment_base_offsets == bases[2:]
    assert snapshot_offsets(tmp_path) == bases[2:]
    # DeleteRecords past every batch rolls and deletes every older segment.
    log.delete_records_before(log.log_end_offset)
    assert snapshot_offsets(tmp_path) == log.segment_base_offsets == [log.log_end_offset]
    expected = state(log.producer_state)
    log.close()
    # The producers of the deleted segments survive in the snapshot (Kafka keeps them until they expire).
    assert state(PartitionLog(tmp_path, config, 0).producer_state) == expected


def test_snapshot_below_the_oldest_segment_is_deleted_on_open(tmp_path):
    # A crash between retention deleting segments and deleting their snapshots.
    batch_bytes = len(producer_batch(0, 0, timestamp_ms=1))
    config = LogConfig(segment_bytes=10 * batch_bytes, retention_bytes=5 * batch_bytes, retention_ms=-1)
    log = PartitionLog(tmp_path, config, 0)
    fill(log, 5, producers=2)
    log.roll(0)
    fill(log, 5, producers=2, start_ms=2000)
    assert log.enforce_retention(now_ms=0) == 1
    oldest = log.segment_base_offsets[0]
    log.close()
    for path in tmp_path.glob("*.snapshot"):
        path.unlink()
    stale = ProducerStateManager(10, 1000)
    stale.record(next(iter_batches(producer_batch(99, 0, timestamp_ms=1)))[1], now_ms=1)
    (tmp_path / snapshot_file_name(0)).write_text(encode_snapshot(0, stale.entries()))
    reopened = PartitionLog(tmp_path, config, 0)
    assert reopened.log_start_offset == oldest > 0
    assert reopened.producer_state.entry(99) is None
    assert state(reopened.producer_state) == full_rebuild(reopened)
    assert snapshot_offsets(tmp_path) == []


# ------------------------------------------------------------------- model


class SnapshotMachine(RuleBasedStateMachine):
    """Random appends, rolls, truncations and reopens; the state always equals a full rebuild."""

    def __init__(self) -> None:
        super().__init__()
        self._real_fsync = os.fsync
        os.fsync = lambda fd: None
        self.directory = Path(tempfile.mkdtemp(prefix="shoal-snapshot-model-"))
        self.config = LogConfig(segment_bytes=700, index_interval_bytes=150, retention_ms=-1)
        self.log = PartitionLog(self.directory, self.config, 0)
        self.now_ms = 1000

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        os.fsync = self._real_fsync

    @rule(producer_id=st.integers(0, 4), count=st.integers(1, 4), new_epoch=st.booleans())
    def append(self, producer_id, count, new_epoch):
        self.now_ms += 1
        if producer_id == 0:  # a producer without idempotence
            data = build_batch([(None, b"v" * 40, (), self.now_ms)] * count)
            self.log.append_as_leader(data, 0, self.now_ms)
            return
        entry = self.log.producer_state.entry(producer_id)
        epoch = None if entry is None or not new_epoch else entry.producer_epoch + 1
        append(self.log, producer_id, self.now_ms, epoch=epoch, count=count)

    @rule()
    def roll(self):
        self.log.roll(self.now_ms)

    @precondition(lambda self: self.log.log_end_offset > 0)
    @rule(data=st.data())
    def truncate_to(self, data):
        self.log.truncate_to(data.draw(st.integers(0, self.log.log_end_offset)))

    @rule()
    def reopen(self):
        self.log.close()
        self.log = PartitionLog(self.directory, self.config, self.now_ms)

    @rule()
    def crash_and_reopen(self):
        crash(self.log)
        self.log = PartitionLog(self.directory, self.config, self.now_ms)

    @invariant()
    def state_equals_a_full_rebuild(self):
        assert state(self.log.producer_state) == full_rebuild(self.log)

    @invariant()
    def snapshots_are_bounded_and_within_the_log(self):
        offsets = snapshot_offsets(self.directory)
        assert len(offsets) <= SNAPSHOTS_KEPT
        assert all(self.log.segment_base_offsets[0] <= offset <= self.log.log_end_offset for offset in offsets)


SnapshotMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_snapshot_model = SnapshotMachine.TestCase
