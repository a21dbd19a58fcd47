"""One segment of a partition log: a file of record batches and its two indexes.

Files, named after the segment's base offset (the first offset it may hold)::

    00000000000000001000.log        record batches, appended as received
    00000000000000001000.index      offset index: (offset - base_offset int32, position int32), big-endian
    00000000000000001000.timeindex  time index: (max timestamp so far int64, offset - base_offset int32)

Rules:

* Appends are bytes. The segment never re-encodes a batch; it reads the
  headers the caller already validated to maintain the indexes.
* Both indexes are sparse: an entry is added for a batch when at least
  ``index_interval_bytes`` were appended since the previous entry. An offset
  index entry points at the start of a batch, so a lookup returns a position
  from which a forward walk over headers finds any offset.
* A time index entry (T, o) says that every batch appended before and
  including the batch at offset o has timestamps <= T, so a search for the
  first record with timestamp >= target may start at the last entry with
  T < target.
* The indexes live in memory and reach their files on ``flush()`` (append only
  the new entries, or rewrite after a truncation). Files are checked against a
  header scan when the segment opens and rewritten when they disagree, so a
  missing, torn or stale index is rebuilt, never trusted.
* A failed write is cut back to the previous size before the error surfaces:
  a torn batch is never left where a read could serve it.

Theory of operation: ``open`` walks the batch headers once (with CRC checks
when the segment holds unflushed data), truncating a torn or corrupt tail, and
rebuilds the in-memory indexes and the newest timestamp on the way. Reads use
``os.pread`` from an index position: a short walk over headers finds the first
wanted batch, a second walk decides how many whole batches fit, and one pread
returns them.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from node.log.errors import KafkaStorageError
from proto.batch import HEADER_BYTES, BatchHeader, CorruptBatchError, check_shape, crc_matches, parse_header

logger = logging.getLogger(__name__)

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
CLEANED_SUFFIX = ".cleaned"

_INDEX_ENTRY = struct.Struct(">ii")
_TIME_INDEX_ENTRY = struct.Struct(">qi")
#: A header walk reads this much per pread: many small batches per call, one
#: call per batch when batches are large.
_HEADER_SCAN_CHUNK_BYTES = 4096
#: A validating walk reads whole batches in chunks of at least this size.
_DATA_SCAN_CHUNK_BYTES = 1024 * 1024
#: The largest relative offset an index entry can hold.
MAX_RELATIVE_OFFSET = 2**31 - 1


def segment_file_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


def write_fully(fd: int, data: bytes | memoryview, position: int) -> None:
    """pwrite all of ``data`` at ``position``; a write that makes no progress is ENOSPC."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        if written <= 0:
            raise OSError(errno.ENOSPC, "write made no progress")
        view = view[written:]
        position += written


class Segment:
    """A segment file plus its in-memory sparse indexes. Not thread-safe."""

    def __init__(self, directory: Path, base_offset: int, fd: int, index_interval_bytes: int) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.fd = fd
        self.index_interval_bytes = index_interval_bytes
        self.size_bytes = 0
        #: The offset after the last batch (base_offset while empty).
        self.next_offset = base_offset
        #: Newest batch max timestamp, -1 while empty.
        self.max_timestamp = -1
        #: When the segment's roll timer started (first append), None while empty.
        self.rolling_started_ms: int | None = None
        self.flushed_bytes = 0
        #: Set by open() when recovery cut a torn or corrupt tail.
        self.torn = False
        self._bytes_since_index_entry = 0
        self._index_offsets: list[int] = []
        self._index_positions: list[int] = []
        self._time_index_timestamps: list[int] = []
        self._time_index_offsets: list[int] = []
        # How many index entries the files already hold (a prefix of the lists).
        self._persisted_index_entries = 0
        self._persisted_time_index_entries = 0

    # -- paths -------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.directory / segment_file_name(self.base_offset, LOG_SUFFIX)

    @property
    def index_path(self) -> Path:
        return self.directory / segment_file_name(self.base_offset, INDEX_SUFFIX)

    @property
    def time_index_path(self) -> Path:
        return self.directory / segment_file_name(self.base_offset, TIME_INDEX_SUFFIX)

    # -- life cycle --------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, index_interval_bytes: int) -> Segment:
        path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as error:
            raise KafkaStorageError(f"cannot create segment {path}: {error}") from error
        segment = cls(directory, base_offset, fd, index_interval_bytes)
        # Stale index files of an earlier segment with this base offset would
        # otherwise be appended to.
        segment._remove_index_files()
        return segment

    @classmethod
    def open(
        cls,
        directory: Path,
        base_offset: int,
        index_interval_bytes: int,
        *,
        validate: bool,
        now_ms: int,
        on_batch: Callable[[BatchHeader], None],
    ) -> Segment:
        """Open an existing segment, walking its headers once.

        With ``validate`` (the segment holds data written after the last flush)
        every batch's CRC is checked and the file is cut at the first torn or
        corrupt batch. Without it, a malformed batch means the disk lost data
        that had been synced, and the segment refuses to open.
        ``on_batch`` sees every batch that survives, in order.
        """
        path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as error:
            raise KafkaStorageError(f"cannot open segment {path}: {error}") from error
        segment = cls(directory, base_offset, fd, index_interval_bytes)
        file_bytes = os.fstat(fd).st_size
        valid_end = 0
        first_max_timestamp: int | None = None
        try:
            for position, header in segment._walk(0, file_bytes, validate=validate):
                if header.base_offset < segment.next_offset:
                    raise CorruptBatchError(
                        f"batch at byte {position} starts at offset {header.base_offset}, "
                        f"before the previous batch ended ({segment.next_offset})"
                    )
                if header.last_offset - base_offset > MAX_RELATIVE_OFFSET:
                    raise CorruptBatchError(f"batch at byte {position} lies beyond this segment's offset range")
                segment._index_batch(position, header)
                segment.size_bytes = position + header.size_bytes
                valid_end = segment.size_bytes
                if first_max_timestamp is None:
                    first_max_timestamp = header.max_timestamp
                on_batch(header)
        except CorruptBatchError as error:
            if not validate:
                os.close(fd)
                raise KafkaStorageError(
                    f"segment {path} holds a malformed batch in data that had been flushed ({error}); "
                    f"the partition needs to be restored from a replica"
                ) from error
            logger.warning(
                "Recovery of %s: truncating %d bytes after byte %d (the last valid batch ends there): %s. "
                "This is the torn tail of an unclean shutdown; the records are re-fetched from the leader.",
                path,
                file_bytes - valid_end,
                valid_end,
                error.message,
            )
        if valid_end < file_bytes:
            segment.torn = True
            try:
                os.ftruncate(fd, valid_end)
                os.fsync(fd)
            except OSError as error:
                os.close(fd)
                raise KafkaStorageError(f"cannot truncate the torn tail of {path}: {error}") from error
        # Validated bytes may still sit only in the page cache of a crashed
        # machine's successor boot; the next flush syncs them.
        segment.flushed_bytes = 0 if validate else segment.size_bytes
        if first_max_timestamp is not None:
            # Kafka's rule: a reopened segment's roll timer starts at its first
            # batch's timestamp, so segment_ms survives restarts.
            segment.rolling_started_ms = min(now_ms, first_max_timestamp)
        segment._adopt_index_files()
        return segment

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        """Close and remove the files; the .log goes first so that orphans are only indexes."""
        self.close()
        for path in (self.log_path, self.index_path, self.time_index_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- appends -----------------------------------------------------------

    def append(self, data: bytes, batches: list[tuple[int, BatchHeader]]) -> None:
        """Append validated batches (``batches``: position within ``data``, header)."""
        position = self.size_bytes
        try:
            write_fully(self.fd, data, position)
        except OSError as error:
            self._undo_write(position)
            raise KafkaStorageError(
                f"cannot append {len(data)} bytes to {self.log_path}: {error}; the partial write was removed"
            ) from error
        for relative_position, header in batches:
            self._index_batch(position + relative_position, header)
        self.size_bytes = position + len(data)

    def _undo_write(self, position: int) -> None:
        try:
            os.ftruncate(self.fd, position)
        except OSError as error:
            # The tail may now hold a torn batch. Reads stop at size_bytes, and
            # recovery on the next open validates everything after the flush
            # point, so the torn bytes are never served.
            logger.error("cannot cut %s back to %d bytes after a failed write: %s", self.log_path, position, error)

    def _index_batch(self, position: int, header: BatchHeader) -> None:
        relative_offset = header.base_offset - self.base_offset
        assert 0 <= relative_offset and header.last_offset - self.base_offset <= MAX_RELATIVE_OFFSET
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
        if position > 0 and self._bytes_since_index_entry >= self.index_interval_bytes:
            self._index_offsets.append(relative_offset)
            self._index_positions.append(position)
            if not self._time_index_timestamps or self.max_timestamp > self._time_index_timestamps[-1]:
                self._time_index_timestamps.append(self.max_timestamp)
                self._time_index_offsets.append(relative_offset)
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += header.size_bytes
        self.next_offset = header.next_offset

    # -- reads -------------------------------------------------------------

    def _walk(self, start: int, end: int, *, validate: bool = False) -> Iterator[tuple[int, BatchHeader]]:
        """Yield (position, header) of the batches in [start, end).

        Raises CorruptBatchError at a malformed header, a batch that runs past
        ``end``, or (with ``validate``) a CRC mismatch.
        """
        chunk_bytes = _DATA_SCAN_CHUNK_BYTES if validate else _HEADER_SCAN_CHUNK_BYTES
        buffer = b""
        buffer_start = start
        position = start
        while position < end:
            offset_in_buffer = position - buffer_start
            if offset_in_buffer + HEADER_BYTES > len(buffer):
                buffer = os.pread(self.fd, min(chunk_bytes, end - position), position)
                buffer_start = position
                offset_in_buffer = 0
            header = parse_header(buffer, offset_in_buffer)
            check_shape(header, position)
            batch_end = position + header.size_bytes
            if batch_end > end:
                raise CorruptBatchError(
                    f"batch at byte {position} declares {header.size_bytes} bytes but the segment ends at byte {end}"
                )
            if validate:
                if offset_in_buffer + header.size_bytes > len(buffer):
                    buffer = os.pread(self.fd, min(max(chunk_bytes, header.size_bytes), end - position), position)
                    buffer_start = position
                    offset_in_buffer = 0
                if not crc_matches(buffer, offset_in_buffer, header):
                    raise CorruptBatchError(f"batch at byte {position} fails its CRC32C check")
            yield position, header
            position = batch_end

    def _lookup_position(self, offset: int) -> int:
        """Position of the last indexed batch starting at or before ``offset``."""
        index = bisect.bisect_right(self._index_offsets, offset - self.base_offset) - 1
        return self._index_positions[index] if index >= 0 else 0

    def find_batch(self, offset: int) -> tuple[int, BatchHeader] | None:
        """The first batch whose last offset is >= ``offset`` (None if none is here)."""
        for position, header in self._walk(self._lookup_position(offset), self.size_bytes):
            if header.last_offset >= offset:
                return position, header
        return None

    def read(self, start_offset: int, max_bytes: int, max_offset: int, *, at_least_one: bool) -> tuple[bytes, bool]:
        """Whole batches from the one holding ``start_offset``, ending before ``max_offset``.

        Stops before a batch that would pass ``max_bytes`` unless nothing has
        been taken and ``at_least_one`` is set (Kafka's rule, so that a batch
        larger than the fetch size still makes progress). Returns the bytes and
        whether the walk reached the end of the segment (so that a caller may
        continue in the next one).
        """
        found = self.find_batch(start_offset)
        if found is None:
            return b"", True
        first_position, _ = found
        end_position = first_position
        exhausted = True
        for position, header in self._walk(first_position, self.size_bytes):
            if header.last_offset >= max_offset:
                exhausted = False
                break
            batch_end = position + header.size_bytes
            if batch_end - first_position > max_bytes and not (at_least_one and end_position == first_position):
                exhausted = False
                break
            end_position = batch_end
        if end_position == first_position:
            return b"", exhausted
        return self.read_bytes(first_position, end_position - first_position), exhausted

    def read_bytes(self, position: int, length: int) -> bytes:
        assert 0 <= position and position + length <= self.size_bytes
        data = os.pread(self.fd, length, position)
        assert len(data) == length, f"{self.log_path}: short read at {position}"
        return data

    def iter_batches(self) -> Iterator[tuple[BatchHeader, bytes]]:
        """Every batch with its bytes, reading in large chunks (for the compactor)."""
        position = 0
        while position < self.size_bytes:
            chunk = os.pread(self.fd, min(_DATA_SCAN_CHUNK_BYTES, self.size_bytes - position), position)
            consumed = 0
            view = memoryview(chunk)
            while consumed + HEADER_BYTES <= len(chunk):
                header = parse_header(view, consumed)
                if consumed + header.size_bytes > len(chunk):
                    break
                yield header, bytes(view[consumed : consumed + header.size_bytes])
                consumed += header.size_bytes
            if consumed == 0:
                # One batch larger than the chunk: read exactly that batch.
                header = parse_header(chunk)
                yield header, self.read_bytes(position, header.size_bytes)
                consumed = header.size_bytes
            position += consumed

    def start_position_for_timestamp(self, timestamp_ms: int) -> int:
        """Where a walk for the first record with timestamp >= ``timestamp_ms`` may start."""
        index = bisect.bisect_left(self._time_index_timestamps, timestamp_ms) - 1
        if index < 0:
            return 0
        return self._lookup_position(self.base_offset + self._time_index_offsets[index])

    def walk_from(self, position: int) -> Iterator[tuple[int, BatchHeader]]:
        return self._walk(position, self.size_bytes)

    # -- truncation --------------------------------------------------------

    def truncate_to_offset(self, offset: int) -> int:
        """Remove every batch whose last offset is >= ``offset``; return the new next offset."""
        found = self.find_batch(offset)
        if found is None:
            return self.next_offset
        position, _ = found
        try:
            os.ftruncate(self.fd, position)
        except OSError as error:
            raise KafkaStorageError(f"cannot truncate {self.log_path} to byte {position}: {error}") from error
        # Rebuild the in-memory state from the batches that remain; truncation
        # is rare (a follower after a leader change) and bounded by one segment.
        kept = list(self._walk(0, position))
        self.size_bytes = 0
        self.next_offset = self.base_offset
        self.max_timestamp = -1
        self._bytes_since_index_entry = 0
        old_index = (self._index_offsets, self._time_index_timestamps)
        self._index_offsets, self._index_positions = [], []
        self._time_index_timestamps, self._time_index_offsets = [], []
        for batch_position, header in kept:
            self._index_batch(batch_position, header)
        self.size_bytes = position
        self.flushed_bytes = min(self.flushed_bytes, position)
        self._persisted_index_entries = _common_prefix(old_index[0], self._index_offsets, self._persisted_index_entries)
        self._persisted_time_index_entries = _common_prefix(
            old_index[1], self._time_index_timestamps, self._persisted_time_index_entries
        )
        if not kept:
            self.rolling_started_ms = None
        return self.next_offset

    # -- durability --------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return (
            self.size_bytes != self.flushed_bytes
            or self._persisted_index_entries != len(self._index_offsets)
            or self._persisted_time_index_entries != len(self._time_index_offsets)
        )

    def flush(self) -> None:
        """fsync the batches and write the new index entries (then fsync them)."""
        try:
            if self.size_bytes != self.flushed_bytes:
                os.fsync(self.fd)
                self.flushed_bytes = self.size_bytes
            if self._persisted_index_entries != len(self._index_offsets):
                self._persist_entries(
                    self.index_path,
                    _INDEX_ENTRY,
                    list(zip(self._index_offsets, self._index_positions)),
                    self._persisted_index_entries,
                )
                self._persisted_index_entries = len(self._index_offsets)
            if self._persisted_time_index_entries != len(self._time_index_offsets):
                self._persist_entries(
                    self.time_index_path,
                    _TIME_INDEX_ENTRY,
                    list(zip(self._time_index_timestamps, self._time_index_offsets)),
                    self._persisted_time_index_entries,
                )
                self._persisted_time_index_entries = len(self._time_index_offsets)
        except OSError as error:
            raise KafkaStorageError(f"cannot flush segment {self.log_path}: {error}") from error

    @staticmethod
    def _persist_entries(
        path: Path, entry: struct.Struct, entries: list[tuple[int, int]], persisted_entries: int
    ) -> None:
        """Cut the file to the entries that are still valid, then append the rest."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, persisted_entries * entry.size)
            new_entries = b"".join(entry.pack(*fields) for fields in entries[persisted_entries:])
            write_fully(fd, new_entries, persisted_entries * entry.size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _adopt_index_files(self) -> None:
        """Compare the index files with the indexes rebuilt by the header walk.

        Matching files count as persisted; anything else (missing, torn, stale)
        is rewritten on the next flush.
        """
        expected_index = b"".join(_INDEX_ENTRY.pack(*e) for e in zip(self._index_offsets, self._index_positions))
        expected_time = b"".join(
            _TIME_INDEX_ENTRY.pack(*e) for e in zip(self._time_index_timestamps, self._time_index_offsets)
        )
        for path, expected, attribute in (
            (self.index_path, expected_index, "_persisted_index_entries"),
            (self.time_index_path, expected_time, "_persisted_time_index_entries"),
        ):
            try:
                on_disk = path.read_bytes()
            except FileNotFoundError:
                on_disk = None
            if on_disk == expected:
                setattr(self, attribute, len(self._index_offsets if path == self.index_path else self._time_index_offsets))
                continue
            if on_disk is not None or expected:
                logger.info("Rebuilding %s: the file does not match the segment's batches", path)
            setattr(self, attribute, 0)

    def _remove_index_files(self) -> None:
        for path in (self.index_path, self.time_index_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- introspection for tests -------------------------------------------

    @property
    def index_entries(self) -> list[tuple[int, int]]:
        return list(zip(self._index_offsets, self._index_positions))

    @property
    def time_index_entries(self) -> list[tuple[int, int]]:
        return list(zip(self._time_index_timestamps, self._time_index_offsets))


def _common_prefix(old: list[int], new: list[int], limit: int) -> int:
    count = 0
    for old_value, new_value in zip(old[:limit], new):
        if old_value != new_value:
            break
        count += 1
    return count

