"""proto.batch: round trips, header fields, stamping, and refusal of damaged bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.errors import ErrorCode
from proto.batch import (
    CRC_START,
    HEADER_BYTES,
    BatchTooLargeError,
    Compression,
    CorruptBatchError,
    build_batch,
    decode_records,
    iter_batches,
    parse_header,
    rebuild_batch,
    records_in,
    stamp,
    validate_batches,
)

optional_bytes = st.none() | st.binary(max_size=300)
headers = st.lists(st.tuples(st.text(max_size=10), optional_bytes), max_size=3)
records = st.lists(
    st.tuples(optional_bytes, optional_bytes, headers, st.integers(min_value=0, max_value=2**40)),
    min_size=1,
    max_size=30,
)
codecs = st.sampled_from(list(Compression))


@settings(max_examples=150, deadline=None)
@given(records=records, compression=codecs, base_offset=st.integers(0, 2**40))
def test_round_trip(records, compression, base_offset):
    batch = build_batch(records, compression=compression, base_offset=base_offset)
    [header] = validate_batches(batch, len(batch))
    assert header.record_count == len(records) == header.last_offset_delta + 1
    assert header.base_timestamp == records[0][3]
    assert header.max_timestamp == max(record[3] for record in records)
    assert header.compression == compression
    decoded = decode_records(batch)
    assert [(r.key, r.value, list(r.headers), r.timestamp_ms) for r in decoded] == [
        (key, value, list(hdrs), ts) for key, value, hdrs, ts in records
    ]
    assert [r.offset for r in decoded] == list(range(base_offset, base_offset + len(records)))


def test_header_layout_is_kafka_v2():
    batch = build_batch(
        [(b"k", b"v", (), 5), (None, b"w", (), 9)], producer_id=7, producer_epoch=2, base_sequence=11, base_offset=100
    )
    assert struct.unpack_from(">q", batch, 0)[0] == 100
    assert struct.unpack_from(">i", batch, 8)[0] == len(batch) - 12
    assert batch[16] == 2
    header = parse_header(batch)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 2, 11)
    assert header.last_sequence == 12
    assert (header.base_timestamp, header.max_timestamp) == (5, 9)
    assert header.leader_epoch == -1


def test_stamp_assigns_consecutive_offsets_without_breaking_crcs():
    first = build_batch([(None, b"a", (), 1)] * 3)
    second = build_batch([(None, b"b", (), 2)] * 2, compression=Compression.ZSTD)
    stamped = stamp(first + second, 40, 7)
    headers = validate_batches(stamped, 10_000)
    assert [(h.base_offset, h.last_offset, h.leader_epoch) for h in headers] == [(40, 42, 7), (43, 44, 7)]
    assert [r.offset for r in records_in(stamped)] == [40, 41, 42, 43, 44]


def test_sequence_wraps_at_int32():
    batch = build_batch([(None, b"a", (), 1)] * 3, producer_id=1, producer_epoch=0, base_sequence=2**31 - 2)
    assert parse_header(batch).last_sequence == 0


@settings(max_examples=60, deadline=None)
@given(records=records, compression=codecs, data=st.data())
def test_any_flipped_byte_after_the_crc_field_is_detected(records, compression, data):
    batch = bytearray(build_batch(records, compression=compression))
    position = data.draw(st.integers(CRC_START, len(batch) - 1))
    batch[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptBatchError) as raised:
        validate_batches(bytes(batch), 10**7)
    assert raised.value.code == ErrorCode.CORRUPT_MESSAGE


@pytest.mark.parametrize("position", [8, 9, 10, 11, 16, 17, 18, 19, 20])
def test_flipped_length_magic_or_crc_bytes_are_detected(position):
    batch = bytearray(build_batch([(b"key", b"value" * 20, (), 1)] * 4))
    batch[position] ^= 0x40
    with pytest.raises(CorruptBatchError):
        validate_batches(bytes(batch), 10**7)


@settings(max_examples=60, deadline=None)
@given(records=records, data=st.data())
def test_truncated_buffers_are_refused(records, data):
    batch = build_batch(records) + build_batch(records)
    cut = data.draw(st.integers(1, len(batch) - 1))
    if cut == len(batch) // 2:
        validate_batches(batch[:cut], 10**7)  # exactly one whole batch is fine
        return
    with pytest.raises(CorruptBatchError):
        validate_batches(batch[:cut], 10**7)


def test_empty_buffer_is_refused():
    with pytest.raises(CorruptBatchError):
        validate_batches(b"", 100)


def test_size_limit_applies_per_batch():
    batch = build_batch([(None, b"x" * 1000, (), 1)])
    validate_batches(batch + batch, len(batch))
    with pytest.raises(BatchTooLargeError) as raised:
        validate_batches(batch, len(batch) - 1)
    assert raised.value.code == ErrorCode.MESSAGE_TOO_LARGE


def test_non_dense_batch_is_refused_from_producers_but_accepted_from_replicas():
    header = parse_header(build_batch([(b"a", b"1", (), 1)] * 4))
    kept = [record for record in decode_records(build_batch([(b"a", b"1", (), 1)] * 4)) if record.offset % 2]
    thinned = rebuild_batch(header, kept)
    with pytest.raises(CorruptBatchError):
        validate_batches(thinned, 10**6)
    [thinned_header] = validate_batches(thinned, 10**6, dense=False)
    assert thinned_header.record_count == 2 and thinned_header.last_offset_delta == 3
    assert [record.offset for record in decode_records(thinned)] == [1, 3]


def test_unsupported_codec_is_refused():
    batch = bytearray(build_batch([(None, b"x", (), 1)]))
    struct.pack_into(">h", batch, 21, 1)  # gzip
    # Recompute the CRC so that only the codec is wrong.
    import crc32c

    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[CRC_START:])))
    with pytest.raises(CorruptBatchError, match="codec"):
        validate_batches(bytes(batch), 10**6)


def test_record_count_above_offset_span_is_refused():
    batch = bytearray(build_batch([(None, b"x", (), 1)]))
    struct.pack_into(">i", batch, 57, 2)
    with pytest.raises(CorruptBatchError):
        list(iter_batches(bytes(batch)))


def test_decompression_is_bounded():
    batch = build_batch([(None, b"\0" * 100_000, (), 1)], compression=Compression.ZSTD)
    assert len(batch) < 1000
    with pytest.raises(CorruptBatchError, match="more than"):
        decode_records(batch, max_uncompressed_bytes=50_000)
    batch = build_batch([(None, b"\0" * 100_000, (), 1)], compression=Compression.LZ4)
    with pytest.raises(CorruptBatchError, match="more than"):
        decode_records(batch, max_uncompressed_bytes=50_000)


def test_header_only_batch_is_at_least_61_bytes():
    batch = build_batch([(None, None, (), 0)])
    assert len(batch) == HEADER_BYTES + 4 + 25
    assert decode_records(batch)[0].value is None
