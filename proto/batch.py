"""The record-batch wire format, shared by the client and the node.

A *record batch* is the unit that producers send, the log stores and consumers
fetch. The broker treats it as opaque bytes on the hot path: it validates the
header and the CRC, rewrites ``base_offset`` and ``leader_epoch`` in place and
appends the bytes. Only consumers and the log compactor decode the records.

Layout (Kafka's v2 batch header, big-endian, 61 bytes)::

    offset  size  field
         0     8  base_offset        int64
         8     4  batch_length       int32   bytes after this field
        12     4  leader_epoch       int32
        16     1  magic              int8    always 2
        17     4  crc                uint32  CRC32C of bytes [21, end)
        21     2  attributes         int16   bits 0-2 compression, bit 3 timestamp type
        23     4  last_offset_delta  int32
        27     8  base_timestamp     int64
        35     8  max_timestamp      int64
        43     8  producer_id        int64   -1 when not idempotent
        51     2  producer_epoch     int16
        53     4  base_sequence      int32
        57     4  record_count       int32
        61     .  records section (compressed as a whole unless compression is none)

Rules:

* The CRC covers everything after the crc field, so the leader may stamp
  ``base_offset`` and ``leader_epoch`` without recomputing it (as in Kafka).
* Timestamp type (attributes bit 3). CreateTime (bit clear): a record's
  timestamp is ``base_timestamp`` plus its delta, as the producer wrote it.
  LogAppendTime (bit set): the leader of a topic with
  ``message.timestamp.type=LogAppendTime`` sets the bit and ``max_timestamp``
  to its wall clock at the append and recomputes the CRC (both fields are
  covered by it); the records keep their deltas, and every reader takes
  ``max_timestamp`` as the timestamp of every record of the batch (Kafka's
  DefaultRecordBatch and LogValidator do the same). Followers copy the
  leader's bytes, so every replica holds the same timestamps.
* ``record_count <= last_offset_delta + 1``. A batch built by a producer is
  dense (equality); the compactor removes records but keeps
  ``last_offset_delta`` and each record's original offset delta, so a compacted
  batch has holes.
* Compression codecs: 0 none, 3 lz4 (frame format), 4 zstd. Kafka's gzip (1) and
  snappy (2) are refused as corrupt input because shoal does not ship them.

Deviation from Kafka: a record inside the records section uses fixed-width
big-endian integers instead of Kafka's zig-zag varints, because ``struct`` packs
fixed-width fields in one C call while varints would cost a Python loop per
field (dependencies-notes.md §5: per-record Python work dominates). A record::

    length int32 (bytes after this field) | attributes int8 | timestamp_delta int64
    | offset_delta int32 | key_length int32 (-1 null) | key
    | value_length int32 (-1 null) | value | header_count int32
    | headers: key_length int32, key utf-8, value_length int32 (-1 null), value

Theory of operation: ``build_batch`` packs every record with at most one
``struct`` call (the key is packed into the same call through a small bounded
cache of compiled formats), joins the parts once and computes the CRC
incrementally over the attribute block and the records section. Parsing walks
headers with one ``unpack_from`` per batch; only ``decode_records`` touches
individual records, and it bounds decompressed sizes so that a small
compressed batch cannot expand without limit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from enum import IntEnum
from typing import NamedTuple

import crc32c
import lz4.frame
import zstandard

from coordinator.errors import ErrorCode, OperatingError

MAGIC = 2
HEADER_BYTES = 61
#: base_offset + batch_length: the bytes that batch_length does not count.
LOG_OVERHEAD_BYTES = 12
#: The CRC covers the batch from this position to its end.
CRC_START = 21
#: The smallest legal batch_length: a header with an empty records section.
MIN_BATCH_LENGTH = HEADER_BYTES - LOG_OVERHEAD_BYTES

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1

#: Upper bound on the decompressed records section of one batch. A batch is
#: bounded by max.message.bytes (1 MiB by default) when compressed; zstd can
#: reach ratios above 100:1 on repetitive data, so 64 MiB leaves room for
#: legitimate batches while refusing decompression bombs.
MAX_UNCOMPRESSED_RECORDS_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct(">qiibIhiqqqhii")
_PREFIX = struct.Struct(">qiibI")  # base_offset .. crc
_ATTRIBUTES_BLOCK = struct.Struct(">hiqqqhii")  # attributes .. record_count
_BASE_OFFSET = struct.Struct(">q")
_INT32 = struct.Struct(">i")
_RECORD_NULL_KEY = struct.Struct(">ibqiii")  # length .. key_length(-1), value_length
_RECORD_PREFIX = struct.Struct(">ibqii")  # length .. key_length
#: attributes + timestamp_delta + offset_delta + key_length + value_length + header_count
_RECORD_FIXED_BYTES = 1 + 8 + 4 + 4 + 4 + 4
_NO_HEADERS = b"\x00\x00\x00\x00"
_LEADER_EPOCH_POSITION = 12

assert _HEADER.size == HEADER_BYTES
assert _RECORD_PREFIX.size == 21
assert _PREFIX.size + _ATTRIBUTES_BLOCK.size == HEADER_BYTES

_COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_LOG_APPEND_TIME = 0x08
_ATTRIBUTES_POSITION = 21
_MAX_TIMESTAMP_POSITION = 35
_CRC_POSITION = 17
_ATTRIBUTES = struct.Struct(">h")
_MAX_TIMESTAMP = struct.Struct(">q")
_CRC = struct.Struct(">I")

#: Kafka's TimestampType names, as ``timestampType()`` prints them.
CREATE_TIME = "CreateTime"
LOG_APPEND_TIME = "LogAppendTime"


class Compression(IntEnum):
    NONE = 0
    LZ4 = 3
    ZSTD = 4


class CorruptBatchError(OperatingError):
    """The bytes are not a well-formed batch (bad length, magic, CRC, codec)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.CORRUPT_MESSAGE, message)


class BatchTooLargeError(OperatingError):
    """One batch is larger than the topic's max.message.bytes."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.MESSAGE_TOO_LARGE, message)


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size_bytes(self) -> int:
        """The whole batch on the wire, header included."""
        return self.batch_length + LOG_OVERHEAD_BYTES

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & _COMPRESSION_MASK

    @property
    def timestamp_type(self) -> str:
        """CREATE_TIME or LOG_APPEND_TIME (attributes bit 3)."""
        return LOG_APPEND_TIME if self.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME else CREATE_TIME

    @property
    def last_sequence(self) -> int:
        """Kafka's DefaultRecordBatch.incrementSequence: sequences wrap at 2**31."""
        if self.base_sequence == NO_SEQUENCE:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) % (2**31)


class Record(NamedTuple):
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


#: (key, value, headers, timestamp_ms), the producer's view of a record.
RecordInput = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]], int]

# Compiled formats for keyed records, by key length. struct's own cache holds
# only 100 formats and is shared with every other user; this one is private
# and bounded: keys longer than _KEYED_FORMAT_MAX_KEY_BYTES use two packs.
_KEYED_FORMAT_MAX_KEY_BYTES = 256
_keyed_formats: dict[int, struct.Struct] = {}


def _keyed_format(key_bytes: int) -> struct.Struct:
    compiled = _keyed_formats.get(key_bytes)
    if compiled is None:
        compiled = struct.Struct(f">ibqii{key_bytes}si")
        _keyed_formats[key_bytes] = compiled
    return compiled


def _encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    parts = [_INT32.pack(len(headers))]
    for header_key, header_value in headers:
        encoded_key = header_key.encode("utf-8")
        parts.append(_INT32.pack(len(encoded_key)))
        parts.append(encoded_key)
        if header_value is None:
            parts.append(_INT32.pack(-1))
        else:
            parts.append(_INT32.pack(len(header_value)))
            parts.append(header_value)
    return b"".join(parts)


def _encode_records(
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]], int]],
    offset_deltas: Iterable[int],
    base_timestamp: int,
) -> bytes:
    """Encode (key, value, headers, timestamp_ms) tuples with the given offset deltas."""
    parts: list[bytes] = []
    append = parts.append
    pack_null_key = _RECORD_NULL_KEY.pack
    fixed_bytes = _RECORD_FIXED_BYTES
    for (key, value, headers, timestamp_ms), offset_delta in zip(records, offset_deltas):
        if headers:
            encoded_headers = _encode_headers(headers)
            length = fixed_bytes - 4 + len(encoded_headers)
        else:
            encoded_headers = _NO_HEADERS
            length = fixed_bytes
        if value is None:
            value_bytes = -1
        else:
            value_bytes = len(value)
            length += value_bytes
        if key is None:
            append(pack_null_key(length, 0, timestamp_ms - base_timestamp, offset_delta, -1, value_bytes))
        else:
            key_bytes = len(key)
            length += key_bytes
            if key_bytes <= _KEYED_FORMAT_MAX_KEY_BYTES:
                append(
                    _keyed_format(key_bytes).pack(
                        length, 0, timestamp_ms - base_timestamp, offset_delta, key_bytes, key, value_bytes
                    )
                )
            else:
                append(_RECORD_PREFIX.pack(length, 0, timestamp_ms - base_timestamp, offset_delta, key_bytes))
                append(key)
                append(_INT32.pack(value_bytes))
        if value is not None:
            append(value)
        append(encoded_headers)
    return b"".join(parts)


def _compress(records_section: bytes, compression: int) -> bytes:
    if compression == Compression.NONE:
        return records_section
    if compression == Compression.LZ4:
        return lz4.frame.compress(records_section)
    if compression == Compression.ZSTD:
        # A compressor per call: ZstdCompressor objects must not be shared
        # between threads, and creating one costs microseconds per batch.
        return zstandard.ZstdCompressor(level=3).compress(records_section)
    raise ValueError(f"unsupported compression {compression!r}; use Compression.NONE, LZ4 or ZSTD")


def _assemble(
    *,
    base_offset: int,
    leader_epoch: int,
    attributes: int,
    last_offset_delta: int,
    base_timestamp: int,
    max_timestamp: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    record_count: int,
    records_section: bytes,
) -> bytes:
    attributes_block = _ATTRIBUTES_BLOCK.pack(
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    )
    crc = crc32c.crc32c(records_section, crc32c.crc32c(attributes_block))
    batch_length = HEADER_BYTES - LOG_OVERHEAD_BYTES + len(records_section)
    prefix = _PREFIX.pack(base_offset, batch_length, leader_epoch, MAGIC, crc)
    return b"".join((prefix, attributes_block, records_section))


def build_batch(
    records: Sequence[RecordInput],
    *,
    compression: int = Compression.NONE,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    base_offset: int = 0,
) -> bytes:
    """Build one batch of ``records`` (key, value, headers, timestamp_ms).

    Offsets inside the batch are 0..n-1 relative to ``base_offset``; the
    partition leader rewrites ``base_offset`` when it appends the batch.
    """
    if not records:
        raise ValueError("a record batch holds at least one record")
    base_timestamp = records[0][3]
    max_timestamp = max(record[3] for record in records)
    records_section = _encode_records(records, range(len(records)), base_timestamp)
    return _assemble(
        base_offset=base_offset,
        leader_epoch=NO_PARTITION_LEADER_EPOCH,
        attributes=int(compression) & _COMPRESSION_MASK,
        last_offset_delta=len(records) - 1,
        base_timestamp=base_timestamp,
        max_timestamp=max_timestamp,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=len(records),
        records_section=_compress(records_section, compression),
    )


def rebuild_batch(header: BatchHeader, records: Sequence[Record]) -> bytes:
    """Re-encode a subset of a batch's records, keeping every header field.

    Used by the compactor: the batch keeps its base offset, last offset delta,
    leader epoch, producer fields, timestamps and codec, and each record keeps
    its original offset, so the log gets offset holes instead of new offsets.
    A LogAppendTime batch keeps its bit and ``max_timestamp``, so its records
    still read as the append time.
    """
    assert records, "the compactor drops a batch that has no record left"
    assert all(header.base_offset <= record.offset <= header.last_offset for record in records)
    records_section = _encode_records(
        [(record.key, record.value, record.headers, record.timestamp_ms) for record in records],
        [record.offset - header.base_offset for record in records],
        header.base_timestamp,
    )
    return _assemble(
        base_offset=header.base_offset,
        leader_epoch=header.leader_epoch,
        attributes=header.attributes,
        last_offset_delta=header.last_offset_delta,
        base_timestamp=header.base_timestamp,
        max_timestamp=header.max_timestamp,
        producer_id=header.producer_id,
        producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence,
        record_count=len(records),
        records_section=_compress(records_section, header.compression),
    )


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the 61-byte header at ``pos``; checks only that 61 bytes are there."""
    if len(buf) - pos < HEADER_BYTES:
        raise CorruptBatchError(
            f"truncated batch header at byte {pos}: {len(buf) - pos} bytes left, {HEADER_BYTES} needed"
        )
    return BatchHeader._make(_HEADER.unpack_from(buf, pos))


def check_shape(header: BatchHeader, pos: int) -> None:
    if header.batch_length < MIN_BATCH_LENGTH:
        raise CorruptBatchError(
            f"batch at byte {pos} declares batch_length {header.batch_length}, below the minimum {MIN_BATCH_LENGTH}"
        )
    if header.magic != MAGIC:
        raise CorruptBatchError(f"batch at byte {pos} has magic {header.magic}; only magic {MAGIC} is supported")
    if header.last_offset_delta < 0 or header.record_count < 0:
        raise CorruptBatchError(
            f"batch at byte {pos} has negative last_offset_delta {header.last_offset_delta} "
            f"or record_count {header.record_count}"
        )
    if header.record_count > header.last_offset_delta + 1:
        raise CorruptBatchError(
            f"batch at byte {pos} holds {header.record_count} records but spans only "
            f"{header.last_offset_delta + 1} offsets"
        )


def iter_batches(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) of every batch, checking lengths, magic and counts (not CRCs)."""
    pos = 0
    end = len(buf)
    while pos < end:
        header = parse_header(buf, pos)
        check_shape(header, pos)
        batch_end = pos + header.batch_length + LOG_OVERHEAD_BYTES
        if batch_end > end:
            raise CorruptBatchError(
                f"truncated batch at byte {pos}: it declares {header.batch_length + LOG_OVERHEAD_BYTES} bytes "
                f"but only {end - pos} are present"
            )
        yield pos, header
        pos = batch_end


def crc_matches(buf: bytes | bytearray | memoryview, pos: int, header: BatchHeader) -> bool:
    view = memoryview(buf)[pos + CRC_START : pos + header.size_bytes]
    return crc32c.crc32c(view) == header.crc


def validate_batches(
    buf: bytes | bytearray | memoryview, max_batch_bytes: int, *, dense: bool = True
) -> list[BatchHeader]:
    """Validate every batch in ``buf`` and return their headers.

    Checks lengths, magic, record_count against last_offset_delta (equality when
    ``dense``, as for a producer's batch; at most when not, as for replicated
    batches that the compactor thinned), the codec, the size limit and the CRC.
    """
    if len(buf) == 0:
        raise CorruptBatchError("the request carries no record batch")
    headers: list[BatchHeader] = []
    for pos, header in iter_batches(buf):
        if header.size_bytes > max_batch_bytes:
            raise BatchTooLargeError(
                f"batch at byte {pos} is {header.size_bytes} bytes, above the limit of {max_batch_bytes} bytes "
                f"(max.message.bytes); send smaller batches or raise the topic's max.message.bytes"
            )
        if dense and header.record_count != header.last_offset_delta + 1:
            raise CorruptBatchError(
                f"batch at byte {pos} holds {header.record_count} records but last_offset_delta is "
                f"{header.last_offset_delta}; a producer's batch must be dense"
            )
        if header.compression not in _SUPPORTED_CODECS:
            raise CorruptBatchError(
                f"batch at byte {pos} uses compression codec {header.compression}; shoal supports "
                f"none (0), lz4 (3) and zstd (4)"
            )
        if not crc_matches(buf, pos, header):
            raise CorruptBatchError(f"batch at byte {pos} (base offset {header.base_offset}) fails its CRC32C check")
        headers.append(header)
    return headers


_SUPPORTED_CODECS = frozenset(int(codec) for codec in Compression)


def stamp(
    buf: bytes | bytearray, base_offset: int, leader_epoch: int, *, log_append_time_ms: int | None = None
) -> bytes:
    """Give the batches in ``buf`` consecutive offsets from ``base_offset`` and the leader epoch.

    With ``log_append_time_ms`` (a LogAppendTime topic), also set every
    batch's timestamp-type bit and ``max_timestamp`` to it, and recompute its
    CRC. Without it (CreateTime), only header fields before the CRC change, so
    the CRCs stay valid and are not recomputed; the one exception is a batch
    that arrives with the LogAppendTime bit already set: the topic's type
    decides, so the bit is cleared and that batch's CRC recomputed (Kafka's
    LogValidator rewrites the type the same way). The caller has checked the
    CRCs first, so a recompute never makes a corrupt batch look valid.
    """
    out = bytearray(buf)
    next_offset = base_offset
    for pos, header in iter_batches(out):
        _BASE_OFFSET.pack_into(out, pos, next_offset)
        _INT32.pack_into(out, pos + _LEADER_EPOCH_POSITION, leader_epoch)
        next_offset += header.last_offset_delta + 1
        if log_append_time_ms is not None:
            _ATTRIBUTES.pack_into(out, pos + _ATTRIBUTES_POSITION, header.attributes | TIMESTAMP_TYPE_LOG_APPEND_TIME)
            _MAX_TIMESTAMP.pack_into(out, pos + _MAX_TIMESTAMP_POSITION, log_append_time_ms)
        elif header.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME:
            _ATTRIBUTES.pack_into(out, pos + _ATTRIBUTES_POSITION, header.attributes & ~TIMESTAMP_TYPE_LOG_APPEND_TIME)
        else:
            continue
        covered = memoryview(out)[pos + CRC_START : pos + header.size_bytes]
        _CRC.pack_into(out, pos + _CRC_POSITION, crc32c.crc32c(covered))
        covered.release()
    return bytes(out)


def _decompress(section: bytes | memoryview, compression: int, max_uncompressed_bytes: int) -> bytes | memoryview:
    if compression == Compression.NONE:
        return section
    try:
        if compression == Compression.LZ4:
            decompressor = lz4.frame.LZ4FrameDecompressor()
            data = decompressor.decompress(bytes(section), max_length=max_uncompressed_bytes + 1)
            complete = decompressor.eof
        elif compression == Compression.ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(bytes(section))
            data = reader.read(max_uncompressed_bytes + 1)
            complete = True
        else:
            raise CorruptBatchError(f"compression codec {compression} is not supported; use none, lz4 or zstd")
    except (RuntimeError, zstandard.ZstdError) as error:
        raise CorruptBatchError(f"records section does not decompress: {error}") from error
    if len(data) > max_uncompressed_bytes:
        raise CorruptBatchError(
            f"records section decompresses to more than {max_uncompressed_bytes} bytes; refusing it"
        )
    if not complete:
        raise CorruptBatchError("compressed records section is truncated")
    return data


def _decode_headers(data: bytes | memoryview, pos: int, end: int) -> tuple[tuple[tuple[str, bytes | None], ...], int]:
    (count,) = _INT32.unpack_from(data, pos)
    pos += 4
    if count < 0 or count * 8 > end - pos:
        raise CorruptBatchError(f"record declares {count} headers, more than its bytes can hold")
    headers = []
    for _ in range(count):
        (key_bytes,) = _INT32.unpack_from(data, pos)
        pos += 4
        if key_bytes < 0 or pos + key_bytes + 4 > end:
            raise CorruptBatchError("record header key overruns its record")
        try:
            header_key = bytes(data[pos : pos + key_bytes]).decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorruptBatchError(f"record header key is not utf-8: {error}") from error
        pos += key_bytes
        (value_bytes,) = _INT32.unpack_from(data, pos)
        pos += 4
        if value_bytes < 0:
            headers.append((header_key, None))
            continue
        if pos + value_bytes > end:
            raise CorruptBatchError("record header value overruns its record")
        headers.append((header_key, bytes(data[pos : pos + value_bytes])))
        pos += value_bytes
    return tuple(headers), pos


def decode_records(
    batch: bytes | bytearray | memoryview,
    *,
    verify_crc: bool = True,
    max_uncompressed_bytes: int = MAX_UNCOMPRESSED_RECORDS_BYTES,
) -> list[Record]:
    """Decode the records of exactly one batch (with its header) into Record tuples."""
    header = parse_header(batch)
    check_shape(header, 0)
    if header.size_bytes != len(batch):
        raise CorruptBatchError(f"batch declares {header.size_bytes} bytes but {len(batch)} were given")
    if verify_crc and not crc_matches(batch, 0, header):
        raise CorruptBatchError(f"batch with base offset {header.base_offset} fails its CRC32C check")
    # One copy of the records section into bytes makes every key and value
    # slice below a plain bytes object without a second copy.
    data = bytes(_decompress(memoryview(batch)[HEADER_BYTES:], header.compression, max_uncompressed_bytes))
    records: list[Record] = []
    append = records.append
    unpack_null_key = _RECORD_NULL_KEY.unpack_from
    unpack_int32 = _INT32.unpack_from
    new_tuple = tuple.__new__
    base_offset = header.base_offset
    base_timestamp = header.base_timestamp
    last_offset_delta = header.last_offset_delta
    fixed_bytes = _RECORD_FIXED_BYTES
    no_headers = _NO_HEADERS
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < fixed_bytes + 4:
            raise CorruptBatchError(f"truncated record at byte {pos} of the records section")
        # One unpack reads the value length too when the key is null (the
        # common case); for a keyed record the last field is key bytes and is
        # ignored. A record is at least fixed_bytes long, so both fit.
        length, _attributes, timestamp_delta, offset_delta, key_bytes, value_bytes = unpack_null_key(data, pos)
        record_end = pos + 4 + length
        if length < fixed_bytes or record_end > end:
            raise CorruptBatchError(f"record at byte {pos} declares length {length}, which does not fit the batch")
        if not 0 <= offset_delta <= last_offset_delta:
            raise CorruptBatchError(f"record at byte {pos} has offset delta {offset_delta} outside its batch")
        if key_bytes < 0:
            key = None
            pos += 25
        else:
            pos += 21
            if pos + key_bytes + 8 > record_end:
                raise CorruptBatchError("record key overruns its record")
            key = data[pos : pos + key_bytes]
            pos += key_bytes
            (value_bytes,) = unpack_int32(data, pos)
            pos += 4
        if value_bytes < 0:
            value = None
        elif pos + value_bytes + 4 > record_end:
            raise CorruptBatchError("record value overruns its record")
        else:
            value = data[pos : pos + value_bytes]
            pos += value_bytes
        if pos + 4 == record_end and data[pos:record_end] == no_headers:
            headers: tuple[tuple[str, bytes | None], ...] = ()
            pos = record_end
        else:
            headers, pos = _decode_headers(data, pos, record_end)
            if pos != record_end:
                raise CorruptBatchError(f"record ends at byte {pos} but declared its end at byte {record_end}")
        # tuple.__new__ skips NamedTuple's Python-level __new__ (a third of the
        # per-record cost); the field order is Record's.
        append(new_tuple(Record, (base_offset + offset_delta, base_timestamp + timestamp_delta, key, value, headers)))
    if len(records) != header.record_count:
        raise CorruptBatchError(
            f"batch declares {header.record_count} records but its records section holds {len(records)}"
        )
    if header.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME:
        # The leader's append time replaces every record's own timestamp; a
        # second pass keeps the CreateTime loop above free of the branch.
        append_time_ms = header.max_timestamp
        records = [new_tuple(Record, (r[0], append_time_ms, r[2], r[3], r[4])) for r in records]
    return records


def records_in(buf: bytes | bytearray | memoryview, *, verify_crc: bool = True) -> Iterator[Record]:
    """Yield every record of every batch in ``buf`` (for example a fetch response)."""
    view = memoryview(buf)
    for pos, header in iter_batches(view):
        yield from decode_records(view[pos : pos + header.size_bytes], verify_crc=verify_crc)
