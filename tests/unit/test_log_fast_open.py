"""node.log: opening segments below the recovery point from their index files.

A trusted open must leave exactly the state a full header walk leaves (index
entries, time index entries, next offset, max timestamp, size, reads and
timestamp lookups), must not walk the segments it trusts, and must fall back
to the walk for every kind of damaged, stale or missing index file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import struct
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.log import KafkaStorageError, LogConfig, PartitionLog
from node.log import partition_log as partition_log_module
from node.log import segment as segment_module
from node.log.leader_epoch import FILE_NAME as LEADER_EPOCH_FILE_NAME
from node.log.partition_log import RECOVERY_POINT_FILE_NAME
from node.log.segment import Segment
from proto.batch import build_batch, records_in

_INDEX_ENTRY = struct.Struct(">ii")
_TIME_INDEX_ENTRY = struct.Struct(">qi")
_REAL_OPEN = Segment.open.__func__
_REAL_WALK = Segment._walk


@pytest.fixture(autouse=True)
def cheap_fsync(monkeypatch):
    """Durability is checked by the order of writes, not by paying for fsyncs."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def batch(timestamps: list[int], value_bytes: int = 20, keys: list[bytes | None] | None = None) -> bytes:
    keys = keys or [None] * len(timestamps)
    return build_batch([(key, b"v" * value_bytes, (), timestamp) for key, timestamp in zip(keys, timestamps)])


# -- the reference: the same directory opened by walking every segment --------


@contextlib.contextmanager
def walking_every_segment():
    def walking_open(cls, *args, **kwargs):
        kwargs["trusted_end_offset"] = None
        return _REAL_OPEN(cls, *args, **kwargs)

    with mock.patch.object(Segment, "open", classmethod(walking_open)):
        yield


@contextlib.contextmanager
def counting_walked_bytes():
    """Count, per segment file path, the bytes of the batches any header walk yields."""
    walked: dict[str, int] = {}

    def counting_walk(self, start, end, *, validate=False):
        for position, header in _REAL_WALK(self, start, end, validate=validate):
            walked[str(self.log_path)] = walked.get(str(self.log_path), 0) + header.size_bytes
            yield position, header

    with mock.patch.object(Segment, "_walk", counting_walk):
        yield walked


def segment_state(segment: Segment) -> dict:
    return {
        "base_offset": segment.base_offset,
        "size_bytes": segment.size_bytes,
        "next_offset": segment.next_offset,
        "max_timestamp": segment.max_timestamp,
        "rolling_started_ms": segment.rolling_started_ms,
        "index_entries": segment.index_entries,
        "time_index_entries": segment.time_index_entries,
        "bytes_since_index_entry": segment._bytes_since_index_entry,
        "flushed_bytes": segment.flushed_bytes,
        "dirty": segment.dirty,
        "torn": segment.torn,
    }


def log_state(log: PartitionLog, timestamps: list[int]) -> dict:
    end = log.log_end_offset
    return {
        "segments": [segment_state(segment) for segment in log._segments],
        "log_start_offset": log.log_start_offset,
        "log_end_offset": end,
        "recovery_point": log.recovery_point,
        "epochs": log.leader_epoch_entries,
        "producers": log.producer_state.entries(),
        "reads": [log.read(offset, 1, end) for offset in range(log.log_start_offset, end)],
        "whole_log": log.read(log.log_start_offset, 10**9, end),
        "offsets_for_timestamps": [log.offset_for_timestamp(timestamp) for timestamp in timestamps],
    }


def assert_index_files_match(log: PartitionLog) -> None:
    """Every segment with nothing left to flush has index files equal to its lists."""
    for segment in log._segments:
        if segment.dirty:
            continue
        index = b"".join(_INDEX_ENTRY.pack(*entry) for entry in segment.index_entries)
        time_index = b"".join(_TIME_INDEX_ENTRY.pack(*entry) for entry in segment.time_index_entries)
        for path, expected in ((segment.index_path, index), (segment.time_index_path, time_index)):
            on_disk = path.read_bytes() if path.exists() else b""
            assert on_disk == expected, f"{path.name} differs from the in-memory index"


def reopen_and_compare(
    directory: Path, config: LogConfig, now_ms: int, timestamps: list[int], walked: dict[str, int] | None = None
) -> PartitionLog:
    """Open ``directory`` as it is; assert the state equals a full walk of a copy of it.

    ``walked`` receives the bytes the open (not the comparison) walked per segment.
    """
    with tempfile.TemporaryDirectory(prefix="shoal-fast-open-") as name:
        copy = Path(name) / "copy"
        shutil.copytree(directory, copy)
        with walking_every_segment():
            reference = PartitionLog(copy, config, now_ms)
        expected = log_state(reference, timestamps)
        reference.close()
    with counting_walked_bytes() as walked_here:
        opened = PartitionLog(directory, config, now_ms)
    if walked is not None:
        walked.update(walked_here)
    assert log_state(opened, timestamps) == expected
    assert_index_files_match(opened)
    return opened


def crash(log: PartitionLog) -> None:
    """A process crash: the files keep what was written (page cache), nothing more is flushed."""
    for segment in log._segments:
        segment.close()
    log._closed = True


# -- the property --------------------------------------------------------------

_KEYS = [b"a", b"b", b"c", b"d", None]
_OPERATIONS = st.one_of(
    # Batches drawn from a seeded generator: 1-5 records, keys for
    # compaction, value sizes 0-90 bytes, timestamps that mostly rise but
    # jump back and forth (so that the newest batch is often the newest
    # timestamp, and often not).
    st.tuples(st.just("append"), st.integers(1, 40), st.integers(0, 2**32)),
    st.tuples(st.just("roll")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("compact")),
    st.tuples(st.just("reopen"), st.booleans()),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(_OPERATIONS, max_size=25),
    segment_bytes=st.sampled_from([300, 700, 2000]),
    index_interval_bytes=st.sampled_from([0, 70, 150, 400]),
)
def test_a_trusted_open_equals_a_full_walk(tmp_path_factory, operations, segment_bytes, index_interval_bytes):
    directory = tmp_path_factory.mktemp("property")
    config = LogConfig(
        segment_bytes=segment_bytes,
        index_interval_bytes=index_interval_bytes,
        cleanup_policy="compact",
        flush_ms=None,
    )
    timestamps = [-1, 0, 1, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000]
    clock = 0
    log = PartitionLog(directory, config, 0)
    try:
        for operation in operations:
            kind = operation[0]
            if kind == "append":
                generator = random.Random(operation[2])
                for _ in range(operation[1]):
                    count = generator.randint(1, 5)
                    clock += generator.randint(0, 40)
                    data = batch(
                        [max(0, clock + generator.randint(-300, 100)) for _ in range(count)],
                        generator.randint(0, 90),
                        [generator.choice(_KEYS) for _ in range(count)],
                    )
                    log.append_as_leader(data, 0, 0)
            elif kind == "roll":
                log.roll(0)
            elif kind == "flush":
                log.flush()
                assert_index_files_match(log)
            elif kind == "truncate":
                span = log.log_end_offset - log.log_start_offset
                log.truncate_to(log.log_start_offset + int(operation[1] * span))
            elif kind == "compact":
                log.compact(0)
            else:
                if operation[1]:
                    log.close()
                else:
                    crash(log)
                log = reopen_and_compare(directory, config, 5_000, timestamps)
        log.close()
        log = reopen_and_compare(directory, config, 5_000, timestamps)
    finally:
        log.close()


# -- what is walked ------------------------------------------------------------


def filled_log(directory: Path, config: LogConfig, batches: int = 300) -> PartitionLog:
    log = PartitionLog(directory, config, 0)
    for index in range(batches):
        # Timestamps out of order: the max timestamp is not the last batch's.
        log.append_as_leader(batch([(index * 7919) % 10_000, index]), 0, 0)
    return log


CONFIG = LogConfig(segment_bytes=4000, index_interval_bytes=300, flush_ms=None)


def test_segments_below_the_recovery_point_are_not_walked(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    sizes = {str(segment.log_path): segment.size_bytes for segment in log._segments}
    largest_batch = len(batch([0, 0]))
    assert len(sizes) >= 4
    log.close()
    with counting_walked_bytes() as walked:
        reopened = PartitionLog(tmp_path, CONFIG, 0)
    for name, size in sizes.items():
        # Only the tail after the last index entry is walked.
        assert walked.get(name, 0) <= CONFIG.index_interval_bytes + largest_batch < size, name
    assert reopened.log_end_offset == 600
    reopened.close()

    # The counter does see walks: without the producer snapshot written on
    # close, the active segment is replayed, so it is walked in full.
    for path in tmp_path.glob("*.snapshot"):
        if int(path.name.split(".")[0]) == 600:
            path.unlink()
    with counting_walked_bytes() as walked:
        PartitionLog(tmp_path, CONFIG, 0).close()
    active = max(sizes)
    # In full, after the refused attempt walked its tail.
    assert walked[active] >= sizes[active]
    assert all(walked.get(name, 0) < size for name, size in sizes.items() if name != active)


def test_no_producer_snapshot_or_no_epoch_checkpoint_walks_every_segment(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    sizes = {str(segment.log_path): segment.size_bytes for segment in log._segments}
    epochs = log.leader_epoch_entries
    log.close()
    for path in tmp_path.glob("*.snapshot"):
        path.unlink()
    with counting_walked_bytes() as walked:
        PartitionLog(tmp_path, CONFIG, 0).close()
    assert walked == sizes
    (tmp_path / LEADER_EPOCH_FILE_NAME).unlink()
    with counting_walked_bytes() as walked:
        reopened = PartitionLog(tmp_path, CONFIG, 0)
    assert walked == sizes
    assert reopened.leader_epoch_entries == epochs


def test_a_segment_past_the_recovery_point_is_walked(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    log.flush()
    recovery_point = log.recovery_point
    for index in range(5):
        log.append_as_leader(batch([index]), 0, 0)
    active = log._segments[-1]
    name, size = str(active.log_path), active.size_bytes
    crash(log)
    with counting_walked_bytes() as walked:
        reopened = PartitionLog(tmp_path, CONFIG, 0)
    # In full, after the attempt to trust it walked its tail.
    assert walked[name] >= size
    assert reopened.log_end_offset == recovery_point + 5


# -- sanity checks -------------------------------------------------------------


def _damage_truncated_index(segment_paths):
    index, _, _ = segment_paths
    index.write_bytes(index.read_bytes()[:-3])


def _damage_index_loses_its_last_entries(segment_paths):
    index, _, _ = segment_paths
    index.write_bytes(index.read_bytes()[: -2 * _INDEX_ENTRY.size])


def _damage_garbage_index(segment_paths):
    index, _, _ = segment_paths
    index.write_bytes(bytes(range(7, 7 + len(index.read_bytes()))))


def _damage_index_points_past_the_end(segment_paths):
    index, _, log = segment_paths
    entries = list(_INDEX_ENTRY.iter_unpack(index.read_bytes()))
    entries[-1] = (entries[-1][0], log.stat().st_size + 10)
    index.write_bytes(b"".join(_INDEX_ENTRY.pack(*entry) for entry in entries))


def _damage_last_entry_points_inside_a_batch(segment_paths):
    index, _, _ = segment_paths
    entries = list(_INDEX_ENTRY.iter_unpack(index.read_bytes()))
    entries[-1] = (entries[-1][0], entries[-1][1] + 5)
    index.write_bytes(b"".join(_INDEX_ENTRY.pack(*entry) for entry in entries))


def _damage_first_entry_points_at_another_batch(segment_paths):
    # The batch before the indexed one: a valid header, the wrong offset.
    index, _, _ = segment_paths
    entries = list(_INDEX_ENTRY.iter_unpack(index.read_bytes()))
    entries[0] = (entries[0][0], entries[0][1] - len(batch([0, 0])))
    index.write_bytes(b"".join(_INDEX_ENTRY.pack(*entry) for entry in entries))


def _damage_time_index_decreases(segment_paths):
    _, time_index, _ = segment_paths
    entries = list(_TIME_INDEX_ENTRY.iter_unpack(time_index.read_bytes()))
    entries[-1] = (entries[0][0] - 1, entries[-1][1])
    time_index.write_bytes(b"".join(_TIME_INDEX_ENTRY.pack(*entry) for entry in entries))


def _damage_time_index_off_the_offset_index(segment_paths):
    _, time_index, _ = segment_paths
    entries = list(_TIME_INDEX_ENTRY.iter_unpack(time_index.read_bytes()))
    entries[-1] = (entries[-1][0], entries[-1][1] + 1)
    time_index.write_bytes(b"".join(_TIME_INDEX_ENTRY.pack(*entry) for entry in entries))


def _damage_time_index_below_the_last_batch(segment_paths):
    _, time_index, _ = segment_paths
    entries = list(_TIME_INDEX_ENTRY.iter_unpack(time_index.read_bytes()))
    entries[-1] = (entries[-2][0] + 1, entries[-1][1]) if len(entries) > 1 else (-1, entries[-1][1])
    time_index.write_bytes(b"".join(_TIME_INDEX_ENTRY.pack(*entry) for entry in entries))


def _damage_index_deleted(segment_paths):
    segment_paths[0].unlink()


def _damage_time_index_deleted(segment_paths):
    segment_paths[1].unlink()


def _damage_both_deleted(segment_paths):
    segment_paths[0].unlink()
    segment_paths[1].unlink()


@pytest.mark.parametrize(
    "damage",
    [
        _damage_truncated_index,
        _damage_index_loses_its_last_entries,
        _damage_garbage_index,
        _damage_index_points_past_the_end,
        _damage_last_entry_points_inside_a_batch,
        _damage_first_entry_points_at_another_batch,
        _damage_time_index_decreases,
        _damage_time_index_off_the_offset_index,
        _damage_time_index_below_the_last_batch,
        _damage_index_deleted,
        _damage_time_index_deleted,
        _damage_both_deleted,
    ],
)
def test_a_damaged_index_falls_back_to_the_walk(tmp_path, caplog, damage):
    # Increasing timestamps, so that a time index entry lowered below its
    # batch's timestamp is visible.
    log = PartitionLog(tmp_path, CONFIG, 0)
    for index in range(300):
        log.append_as_leader(batch([index * 10, index]), 0, 0)
    log.close()
    damaged = sorted(tmp_path.glob("*.log"))[1]
    stem = damaged.name[: -len(".log")]
    assert len(damaged.with_name(stem + ".index").read_bytes()) >= 3 * _INDEX_ENTRY.size
    damage((damaged.with_name(stem + ".index"), damaged.with_name(stem + ".timeindex"), damaged))
    timestamps = [-1, 0, 5, 1000, 1005, 1500, 2990, 2991, 5000]
    caplog.set_level(logging.INFO, logger="node.log.segment")
    walked: dict[str, int] = {}
    reopened = reopen_and_compare(tmp_path, CONFIG, 0, timestamps, walked)
    assert walked[str(damaged)] >= damaged.stat().st_size
    assert str(damaged) in caplog.text
    assert reopened.log_end_offset == 600
    assert [record.offset for record in records_in(reopened.read(0, 10**9, 600))] == list(range(600))
    reopened.close()
    # The rebuilt files are trusted again on the next open.
    with counting_walked_bytes() as walked:
        PartitionLog(tmp_path, CONFIG, 0).close()
    assert walked[str(damaged)] < damaged.stat().st_size


# -- crashes -------------------------------------------------------------------


def test_a_torn_tail_past_the_recovery_point_is_still_cut(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    log.flush()
    recovery_point = log.recovery_point
    ends = []
    for index in range(6):
        log.append_as_leader(batch([index]), 0, 0)
        ends.append(log._segments[-1].size_bytes)
    active = log._segments[-1]
    crash(log)
    with open(active.log_path, "r+b") as file:
        file.truncate(ends[3] + 10)
    timestamps = [0, 5, 9_000]
    reopened = reopen_and_compare(tmp_path, CONFIG, 0, timestamps)
    assert reopened.log_end_offset == recovery_point + 4
    assert active.log_path.stat().st_size == ends[3]
    assert reopened.append_as_leader(batch([1]), 0, 0).first_offset == recovery_point + 4


def test_bytes_after_the_last_batch_of_a_flushed_segment_are_cut(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    log.close()
    last = sorted(tmp_path.glob("*.log"))[-1]
    size = last.stat().st_size
    with open(last, "ab") as file:
        file.write(b"\x00" * 40)
    reopened = reopen_and_compare(tmp_path, CONFIG, 0, [0, 9_000])
    assert last.stat().st_size == size and reopened.log_end_offset == 600


def test_truncation_then_crash_before_a_flush(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    log.flush()
    log.truncate_to(log.log_end_offset - 20)
    crash(log)
    reopened = reopen_and_compare(tmp_path, CONFIG, 0, [0, 5_000, 9_999])
    assert reopened.log_end_offset == 580
    reopened.close()


def test_a_flush_after_truncation_cuts_the_removed_index_entries(tmp_path):
    log = filled_log(tmp_path, CONFIG)
    log.flush()
    active = log._segments[-1]
    assert len(active.index_entries) >= 3
    # Keep the batches up to the second entry; the entries after it go.
    relative_offset, _ = active.index_entries[1]
    log.truncate_to(active.base_offset + relative_offset + 2)
    log.append_as_leader(batch([1]), 0, 0)
    log.flush()
    assert not active.dirty
    assert_index_files_match(log)
    crash(log)
    reopen_and_compare(tmp_path, CONFIG, 0, [0, 1, 5_000, 9_999]).close()


def test_the_recovery_point_moves_only_after_the_index_files_are_written(tmp_path, monkeypatch):
    log = filled_log(tmp_path, CONFIG)
    log.flush()
    recovery_point = log.recovery_point
    for index in range(60):
        log.append_as_leader(batch([index]), 0, 0)

    def failing_write(fd, data, position):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module, "write_fully", failing_write)
    with pytest.raises(KafkaStorageError):
        log.flush()
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    assert (tmp_path / RECOVERY_POINT_FILE_NAME).read_text() == f"0\n{recovery_point}\n"
    crash(log)
    reopened = reopen_and_compare(tmp_path, CONFIG, 0, [0, 30, 9_999])
    assert reopened.log_end_offset == recovery_point + 60


def test_a_rewrite_interrupted_by_a_crash_never_leaves_a_trusted_prefix(tmp_path, monkeypatch):
    # Timestamps rise and then fall, so a time index that lost its later
    # entries would not be caught by the last indexed batch's timestamp.
    config = LogConfig(index_interval_bytes=150, flush_ms=None)
    log = PartitionLog(tmp_path, config, 0)
    for index in range(120):
        log.append_as_leader(batch([index * 10 if index < 60 else 0]), 0, 0)
    log.close()
    time_index = next(tmp_path.glob("*.timeindex"))
    assert len(time_index.read_bytes()) // _TIME_INDEX_ENTRY.size >= 4
    # The open rebuilds the deleted time index and rewrites it whole; the
    # machine dies after two entries reached the disk.
    time_index.unlink()
    real_write_fully = segment_module.write_fully

    def dies_after_two_entries(fd, data, position):
        real_write_fully(fd, bytes(data)[: 2 * _TIME_INDEX_ENTRY.size], position)
        raise OSError(errno.EIO, "the machine died")

    monkeypatch.setattr(segment_module, "write_fully", dies_after_two_entries)
    with pytest.raises(KafkaStorageError):
        PartitionLog(tmp_path, config, 0)
    monkeypatch.setattr(segment_module, "write_fully", real_write_fully)
    reopened = reopen_and_compare(tmp_path, config, 0, [0, 1, 300, 590, 591])
    assert reopened._segments[0].max_timestamp == 590


def test_truncation_syncs_the_cut_before_lowering_the_recovery_point(tmp_path, monkeypatch):
    log = filled_log(tmp_path, CONFIG)
    log.flush()
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", fd)))
    real_write_offset = partition_log_module.write_offset

    def recording_write_offset(path, offset):
        events.append(("checkpoint", path.name))
        real_write_offset(path, offset)

    monkeypatch.setattr(partition_log_module, "write_offset", recording_write_offset)
    active_fd = log._segments[-1].fd
    log.truncate_to(log.log_end_offset - 10)
    assert ("fsync", active_fd) in events
    assert events.index(("fsync", active_fd)) < events.index(("checkpoint", RECOVERY_POINT_FILE_NAME))
