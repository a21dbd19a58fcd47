"""message.timestamp.type=LogAppendTime: the batch codec and the partition log.

Kafka's rule: on a LogAppendTime topic the leader sets each batch's
timestamp-type bit and max_timestamp to its append time (recomputing the CRC,
which covers both); the record deltas stay as the producer wrote them, and
readers report max_timestamp for every record. CreateTime batches keep the
producer's timestamps and their CRC is never recomputed.
"""

from __future__ import annotations

import dataclasses

import pytest

import proto.batch as batch_codec
from cluster.topic_config import TopicConfig
from coordinator.errors import ErrorCode, OperatingError
from node.log.config import LogConfig
from node.log.partition_log import PartitionLog
from node.replica_manager import log_config_for
from proto.batch import (
    CRC_START,
    CREATE_TIME,
    HEADER_BYTES,
    LOG_APPEND_TIME,
    TIMESTAMP_TYPE_LOG_APPEND_TIME,
    Compression,
    build_batch,
    crc_matches,
    decode_records,
    iter_batches,
    parse_header,
    rebuild_batch,
    records_in,
    stamp,
    validate_batches,
)

#: 2001-01-01T00:00:00Z, a producer timestamp far from any append time below.
YEAR_2001_MS = 978_307_200_000
APPEND_TIME_MS = 1_700_000_000_123


def producer_batch(count: int = 4, *, compression: int = Compression.NONE, first_ms: int = YEAR_2001_MS) -> bytes:
    """A producer's batch whose records carry distinct, old timestamps."""
    return build_batch(
        [(f"k{index}".encode(), f"value-{index}".encode() * 20, (("h", b"x"),), first_ms + 7 * index)
         for index in range(count)],
        compression=compression,
    )


# ------------------------------------------------------------------ codec


@pytest.mark.parametrize("compression", list(Compression))
def test_stamp_with_append_time_sets_bit_max_timestamp_and_a_valid_crc(compression):
    original = producer_batch(compression=compression)
    before = parse_header(original)
    stamped = stamp(original, 40, 3, log_append_time_ms=APPEND_TIME_MS)
    header = parse_header(stamped)
    assert header.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME
    assert header.timestamp_type == LOG_APPEND_TIME
    assert header.compression == compression
    assert header.max_timestamp == APPEND_TIME_MS
    assert header.base_timestamp == before.base_timestamp  # Kafka leaves it as the producer wrote it
    assert (header.base_offset, header.leader_epoch) == (40, 3)
    assert header.crc != before.crc
    assert crc_matches(stamped, 0, header)
    validate_batches(stamped, 10**6)
    # The records section (and so every record's timestamp delta) is untouched.
    assert stamped[HEADER_BYTES:] == original[HEADER_BYTES:]


@pytest.mark.parametrize("compression", list(Compression))
def test_decode_reports_the_append_time_for_every_record(compression):
    original = producer_batch(compression=compression)
    created = decode_records(stamp(original, 0, 0))
    appended = decode_records(stamp(original, 0, 0, log_append_time_ms=APPEND_TIME_MS), verify_crc=True)
    assert [record.timestamp_ms for record in created] == [YEAR_2001_MS + 7 * index for index in range(4)]
    assert [record.timestamp_ms for record in appended] == [APPEND_TIME_MS] * 4
    assert [(r.offset, r.key, r.value, r.headers) for r in appended] == [
        (r.offset, r.key, r.value, r.headers) for r in created
    ]


def test_stamp_with_append_time_rewrites_every_batch_of_a_request():
    original = producer_batch(2, compression=Compression.LZ4) + producer_batch(3, compression=Compression.ZSTD)
    stamped = stamp(original, 100, 1, log_append_time_ms=APPEND_TIME_MS)
    headers = validate_batches(stamped, 10**6)
    assert [(h.base_offset, h.max_timestamp, h.timestamp_type) for h in headers] == [
        (100, APPEND_TIME_MS, LOG_APPEND_TIME),
        (102, APPEND_TIME_MS, LOG_APPEND_TIME),
    ]
    assert [record.timestamp_ms for record in records_in(stamped)] == [APPEND_TIME_MS] * 5


def test_create_time_stamp_never_computes_a_crc(monkeypatch):
    """The CreateTime fast path: only base_offset and leader_epoch change."""
    original = producer_batch(3) + producer_batch(2, compression=Compression.ZSTD)

    class NoCrc:
        @staticmethod
        def crc32c(*args):
            raise AssertionError("a CreateTime stamp must not compute a CRC")

    monkeypatch.setattr(batch_codec, "crc32c", NoCrc)
    stamped = stamp(original, 7, 2)
    monkeypatch.undo()
    for pos, header in iter_batches(original):
        # Everything from the CRC field on is the producer's bytes.
        crc_to_end = slice(pos + CRC_START - 4, pos + header.size_bytes)
        assert stamped[crc_to_end] == original[crc_to_end]
    assert [h.timestamp_type for h in validate_batches(stamped, 10**6)] == [CREATE_TIME, CREATE_TIME]


def test_create_time_stamp_clears_a_log_append_time_bit_sent_by_a_producer():
    # The topic's type decides (as in Kafka's LogValidator): a batch arriving
    # with the bit set on a CreateTime topic is stored as CreateTime.
    flagged = stamp(producer_batch(), 0, 0, log_append_time_ms=APPEND_TIME_MS)
    stored = stamp(flagged, 10, 1)
    header = parse_header(stored)
    assert header.timestamp_type == CREATE_TIME
    assert crc_matches(stored, 0, header)
    assert [record.timestamp_ms for record in decode_records(stored)] == [YEAR_2001_MS + 7 * i for i in range(4)]


def test_rebuild_keeps_the_log_append_time_of_a_compacted_batch():
    stored = stamp(producer_batch(compression=Compression.LZ4), 0, 0, log_append_time_ms=APPEND_TIME_MS)
    header = parse_header(stored)
    kept = decode_records(stored)[1:3]
    rebuilt = rebuild_batch(header, kept)
    assert parse_header(rebuilt).timestamp_type == LOG_APPEND_TIME
    assert [(r.offset, r.timestamp_ms) for r in decode_records(rebuilt)] == [(1, APPEND_TIME_MS), (2, APPEND_TIME_MS)]


# ------------------------------------------------------------------ config


def test_log_config_maps_and_validates_the_timestamp_type():
    assert LogConfig().message_timestamp_type == "CreateTime" and not LogConfig().log_append_time
    topic = TopicConfig.from_mapping({"message.timestamp.type": "LogAppendTime"})
    assert log_config_for(topic).log_append_time
    with pytest.raises(OperatingError) as raised:
        LogConfig(message_timestamp_type="logappendtime")
    assert raised.value.code == ErrorCode.INVALID_CONFIG


# ------------------------------------------------------------------ partition log


def log_append_time_config(**overrides) -> LogConfig:
    return LogConfig(message_timestamp_type="LogAppendTime", **overrides)


def test_leader_append_stores_the_append_time(tmp_path):
    log = PartitionLog(tmp_path, log_append_time_config(), 0)
    info = log.append_as_leader(producer_batch(compression=Compression.ZSTD), 5, APPEND_TIME_MS)
    assert (info.log_append_time_ms, info.max_timestamp) == (APPEND_TIME_MS, APPEND_TIME_MS)
    stored = log.read(0, 10**6, 100)
    (header,) = validate_batches(stored, 10**6)
    assert header.timestamp_type == LOG_APPEND_TIME and header.max_timestamp == APPEND_TIME_MS
    assert [record.timestamp_ms for record in records_in(stored)] == [APPEND_TIME_MS] * 4


def test_create_time_append_keeps_the_producer_bytes_and_timestamps(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    original = producer_batch()
    info = log.append_as_leader(original, 5, APPEND_TIME_MS)
    assert info.log_append_time_ms == -1
    assert info.max_timestamp == YEAR_2001_MS + 21
    stored = log.read(0, 10**6, 100)
    assert stored[CRC_START - 4 :] == original[CRC_START - 4 :]
    assert [record.timestamp_ms for record in records_in(stored)] == [YEAR_2001_MS + 7 * i for i in range(4)]


def test_a_retry_answers_with_the_original_append_time(tmp_path):
    log = PartitionLog(tmp_path, log_append_time_config(), 0)
    idempotent = build_batch([(None, b"v", (), YEAR_2001_MS)], producer_id=9, producer_epoch=0, base_sequence=0)
    first = log.append_as_leader(idempotent, 0, APPEND_TIME_MS)
    retry = log.append_as_leader(idempotent, 0, APPEND_TIME_MS + 500)
    assert retry.duplicate and retry.log_append_time_ms == first.log_append_time_ms == APPEND_TIME_MS
    assert log.log_end_offset == 1


def test_timestamp_lookups_and_the_time_index_follow_the_append_time(tmp_path):
    # Producer timestamps run backwards (newest first) and the append times
    # forwards: a lookup that used the producer's times would find offset 0.
    config = log_append_time_config(segment_bytes=1500, index_interval_bytes=100)
    log = PartitionLog(tmp_path, config, 0)
    for index in range(12):
        log.append_as_leader(producer_batch(2, first_ms=YEAR_2001_MS - 1000 * index), 0, APPEND_TIME_MS + 100 * index)
    assert log.segment_count > 2
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(APPEND_TIME_MS) == 0
    assert log.offset_for_timestamp(APPEND_TIME_MS + 1) == 2
    assert log.offset_for_timestamp(APPEND_TIME_MS + 550) == 12
    assert log.offset_for_timestamp(APPEND_TIME_MS + 1100) == 22
    assert log.offset_for_timestamp(APPEND_TIME_MS + 1101) is None
    lookups = [log.offset_for_timestamp(APPEND_TIME_MS + 100 * index) for index in range(12)]
    log.close()
    # The time index written to disk (or rebuilt on open) gives the same answers.
    reopened = PartitionLog(tmp_path, config, APPEND_TIME_MS + 2000)
    assert [reopened.offset_for_timestamp(APPEND_TIME_MS + 100 * index) for index in range(12)] == lookups
    assert lookups == [2 * index for index in range(12)]


def test_retention_by_time_follows_the_append_time(tmp_path):
    # Every producer timestamp is from 2001: with CreateTime, retention.ms of a
    # minute would delete every closed segment at once.
    config = log_append_time_config(segment_bytes=1500, retention_ms=60_000)
    log = PartitionLog(tmp_path, config, 0)
    for index in range(8):
        log.append_as_leader(producer_batch(2), 0, APPEND_TIME_MS + 10_000 * index)
    segments = log.segment_count
    assert segments > 2
    assert log.enforce_retention(APPEND_TIME_MS + 70_000) == 0
    assert log.segment_count == segments
    assert log.enforce_retention(APPEND_TIME_MS + 10**7) == segments - 1


def test_follower_stores_the_leader_bytes_without_restamping(tmp_path):
    leader = PartitionLog(tmp_path / "leader", log_append_time_config(), 0)
    leader.append_as_leader(producer_batch(compression=Compression.LZ4), 2, APPEND_TIME_MS)
    leader.append_as_leader(producer_batch(), 2, APPEND_TIME_MS + 40)
    replicated = leader.read(0, 10**6, 100)
    follower = PartitionLog(tmp_path / "follower", log_append_time_config(), 0)
    info = follower.append_as_follower(replicated, APPEND_TIME_MS + 99_999)
    assert info.log_append_time_ms == -1
    assert follower.read(0, 10**6, 100) == replicated
    assert follower.offset_for_timestamp(APPEND_TIME_MS + 1) == 4


def test_changing_the_type_affects_only_later_appends(tmp_path):
    log = PartitionLog(tmp_path, LogConfig(), 0)
    log.append_as_leader(producer_batch(2), 0, APPEND_TIME_MS)
    log.config = dataclasses.replace(log.config, message_timestamp_type="LogAppendTime")
    log.append_as_leader(producer_batch(2), 0, APPEND_TIME_MS + 5)
    log.config = dataclasses.replace(log.config, message_timestamp_type="CreateTime")
    log.append_as_leader(producer_batch(2), 0, APPEND_TIME_MS + 9)
    stored = log.read(0, 10**6, 100)
    assert [h.timestamp_type for h in validate_batches(stored, 10**6, dense=False)] == [
        CREATE_TIME, LOG_APPEND_TIME, CREATE_TIME
    ]
    assert [record.timestamp_ms for record in records_in(stored)] == [
        YEAR_2001_MS, YEAR_2001_MS + 7, APPEND_TIME_MS + 5, APPEND_TIME_MS + 5, YEAR_2001_MS, YEAR_2001_MS + 7
    ]
