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
* The indexes live in memory and reach their files on ``flush()``, after the
  batches they describe were synced: the new entries are appended, entries a
  truncation removed are cut off, and a file whose content is unknown is
  rewritten whole through a copy and a rename (so a crash leaves the old file
  or the new one, never a valid-looking prefix of the new one).
* Index files are trusted only for a segment that the caller vouches was
  wholly flushed (``trusted_end_offset``: the partition's recovery point) and
  only after sanity checks; anything else is rebuilt by a header walk. A
  missing, torn or stale index of a segment that may hold unflushed data is
  never trusted.
* A failed write is cut back to the previous size before the error surfaces:
  a torn batch is never left where a read could serve it.

Theory of operation: ``open`` of a segment below ``trusted_end_offset`` loads
both index files, checks their shape (whole entries; offsets and positions
strictly increasing and inside the file; time entries strictly increasing and
on offset-index entries; the first and last offset entries point at batch
headers with those base offsets), then walks only the batches from the last
offset-index entry to the end of the file, which is at most
``index_interval_bytes`` plus one batch. That tail walk yields ``next_offset``
and the newest timestamp (the last time entry is the running maximum up to the
last offset entry, see ``_index_batch``) and refuses the files when it would
have added an index entry (a lost suffix) or when the segment reaches
``trusted_end_offset``. Every other segment, and any segment whose files fail a
check, is opened by walking all its batch headers once (with CRC checks when
the segment holds unflushed data), truncating a torn or corrupt tail, and
rebuilding the in-memory indexes and the newest timestamp on the way. Reads use
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
from typing import NamedTuple

from node.log.checkpoint import TEMPORARY_SUFFIX, sync_directory
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


class _Refusal(NamedTuple):
    """Why a segment's index files were not trusted."""

    reason: str
    #: The segment holds offsets at or past the trusted end: the expected case
    #: for the active segment after a crash, not a sign of damaged files.
    reaches_past_trusted_end: bool = False


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
        # How many entries at the start of each index file match the lists...
        self._persisted_index_entries = 0
        self._persisted_time_index_entries = 0
        # ...and how many entries the file holds (None: unknown content). A
        # flush leaves both equal to the length of the list.
        self._index_file_entries: int | None = 0
        self._time_index_file_entries: int | None = 0

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
        trusted_end_offset: int | None = None,
    ) -> Segment:
        """Open an existing segment from its index files or by walking its headers once.

        ``trusted_end_offset``: every batch below it was synced together with
        its index entries and nothing below it changed since (the partition's
        recovery point), and no caller needs to see those batches. A segment
        that ends at or below it is opened from its index files when they pass
        the sanity checks; ``on_batch`` then sees nothing.

        Otherwise every batch header is walked. With ``validate`` (the segment
        holds data written after the last flush) every batch's CRC is checked
        and the file is cut at the first torn or corrupt batch. Without it, a
        malformed batch means the disk lost data that had been synced, and the
        segment refuses to open. ``on_batch`` sees every batch that survives,
        in order.
        """
        path = directory / segment_file_name(base_offset, LOG_SUFFIX)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as error:
            raise KafkaStorageError(f"cannot open segment {path}: {error}") from error
        segment = cls(directory, base_offset, fd, index_interval_bytes)
        file_bytes = os.fstat(fd).st_size
        if trusted_end_offset is not None:
            refusal = segment._load_index_files(file_bytes, trusted_end_offset, now_ms)
            if refusal is None:
                return segment
            if refusal.reaches_past_trusted_end:
                logger.info("Opening %s by a header walk: %s", path, refusal.reason)
            else:
                logger.warning(
                    "Not trusting the index files of %s, rebuilding them by a header walk: %s", path, refusal.reason
                )
            # The refused load may have filled in part of the state.
            segment = cls(directory, base_offset, fd, index_interval_bytes)
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

    def _load_index_files(self, file_bytes: int, trusted_end_offset: int, now_ms: int) -> _Refusal | None:
        """Take the indexes from their files and walk only the batches after the last offset entry.

        Returns None with the segment's state filled in, or why the files
        cannot be trusted (the state is then partly filled in and must be
        discarded).
        """
        try:
            index_bytes = _read_if_present(self.index_path)
            time_index_bytes = _read_if_present(self.time_index_path)
        except OSError as error:
            return _Refusal(f"cannot read the index files: {error}")
        if len(index_bytes) % _INDEX_ENTRY.size or len(time_index_bytes) % _TIME_INDEX_ENTRY.size:
            return _Refusal(
                f"an index file is not a whole number of entries ({len(index_bytes)} bytes of offset index, "
                f"{len(time_index_bytes)} bytes of time index)"
            )
        index_entries = list(_INDEX_ENTRY.iter_unpack(index_bytes))
        time_entries = list(_TIME_INDEX_ENTRY.iter_unpack(time_index_bytes))
        # The walk indexes a batch only after another one (position > 0), so
        # the first entry's relative offset is at least 1.
        previous_offset, previous_position = 0, 0
        for relative_offset, position in index_entries:
            in_order = previous_offset < relative_offset <= MAX_RELATIVE_OFFSET
            if not (in_order and previous_position < position < file_bytes):
                return _Refusal(
                    f"offset index entry ({relative_offset}, {position}) does not follow ({previous_offset}, "
                    f"{previous_position}) or lies beyond the {file_bytes} bytes of the segment"
                )
            previous_offset, previous_position = relative_offset, position
        # A time entry is written at an offset entry whenever the running
        # maximum timestamp (which starts at -1) grew, and at the first one.
        indexed_offsets = {relative_offset for relative_offset, _ in index_entries}
        previous_timestamp, previous_offset = -2, 0
        for timestamp, relative_offset in time_entries:
            in_order = timestamp > previous_timestamp and relative_offset > previous_offset
            if not (in_order and relative_offset in indexed_offsets):
                return _Refusal(
                    f"time index entry ({timestamp}, {relative_offset}) does not follow ({previous_timestamp}, "
                    f"{previous_offset}) or is not at an offset index entry"
                )
            previous_timestamp, previous_offset = timestamp, relative_offset
        if index_entries and (not time_entries or time_entries[0][1] != index_entries[0][0]):
            return _Refusal("the time index does not start at the first offset index entry")
        first_max_timestamp: int | None = None
        try:
            if file_bytes > 0:
                first = self._read_header(0)
                if first.base_offset < self.base_offset:
                    return _Refusal(f"the first batch starts at offset {first.base_offset}, below the segment's base")
                first_max_timestamp = first.max_timestamp
            if index_entries:
                relative_offset, position = index_entries[0]
                if self._read_header(position).base_offset != self.base_offset + relative_offset:
                    return _Refusal(f"the first offset index entry ({relative_offset}, {position}) misses its batch")
        except CorruptBatchError as error:
            return _Refusal(error.message)

        self._index_offsets = [relative_offset for relative_offset, _ in index_entries]
        self._index_positions = [position for _, position in index_entries]
        self._time_index_timestamps = [timestamp for timestamp, _ in time_entries]
        self._time_index_offsets = [relative_offset for _, relative_offset in time_entries]
        # Up to and including the last indexed batch, the running maximum is
        # the last time entry: the entry at the last offset entry was either
        # written (then it is that maximum) or skipped because the maximum had
        # not grown past the previous time entry.
        self.max_timestamp = time_entries[-1][0] if time_entries else -1
        tail_start = index_entries[-1][1] if index_entries else 0
        try:
            for position, header in self._walk(tail_start, file_bytes):
                if header.base_offset < self.next_offset or header.last_offset - self.base_offset > MAX_RELATIVE_OFFSET:
                    return _Refusal(f"the batch at byte {position} is out of order or out of this segment's range")
                if index_entries and position == tail_start:
                    if header.base_offset != self.base_offset + self._index_offsets[-1]:
                        return _Refusal(
                            f"the last offset index entry ({self._index_offsets[-1]}, {position}) "
                            f"points at a batch starting at offset {header.base_offset}"
                        )
                    if header.max_timestamp > self.max_timestamp:
                        return _Refusal(f"the time index ends below the timestamp of the batch at byte {position}")
                    # What _index_batch leaves after indexing this batch.
                    self._bytes_since_index_entry = header.size_bytes
                    self.next_offset = header.next_offset
                    continue
                entries_before = len(self._index_offsets)
                self._index_batch(position, header)
                if len(self._index_offsets) != entries_before:
                    return _Refusal(f"the offset index lacks an entry for the batch at byte {position}")
        except CorruptBatchError as error:
            return _Refusal(error.message)
        if self.next_offset > trusted_end_offset:
            return _Refusal(
                f"the segment reaches offset {self.next_offset}, past the recovery point {trusted_end_offset}",
                reaches_past_trusted_end=True,
            )
        self.size_bytes = file_bytes
        self.flushed_bytes = file_bytes
        self._persisted_index_entries = self._index_file_entries = len(index_entries)
        self._persisted_time_index_entries = self._time_index_file_entries = len(time_entries)
        if first_max_timestamp is not None:
            self.rolling_started_ms = min(now_ms, first_max_timestamp)
        return None

    def _read_header(self, position: int) -> BatchHeader:
        header = parse_header(os.pread(self.fd, HEADER_BYTES, position))
        check_shape(header, position)
        return header

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
            # Durable before the caller lowers the recovery point: a cut that a
            # crash undid would bring the removed batches back (they pass their
            # CRCs) above a recovery point that no longer covers them.
            os.fsync(self.fd)
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
        # The files keep their removed entries until the next flush cuts them
        # (``dirty`` sees the difference); once the segment is flushed and
        # below the recovery point again, they match the lists exactly.
        if not kept:
            self.rolling_started_ms = None
        return self.next_offset

    # -- durability --------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return (
            self.size_bytes != self.flushed_bytes
            or not self._index_file_matches()
            or not self._time_index_file_matches()
        )

    def _index_file_matches(self) -> bool:
        return self._index_file_entries == self._persisted_index_entries == len(self._index_offsets)

    def _time_index_file_matches(self) -> bool:
        return self._time_index_file_entries == self._persisted_time_index_entries == len(self._time_index_offsets)

    def flush(self) -> None:
        """fsync the batches, then bring the index files to the lists (and fsync them).

        The caller moves the recovery point past this segment only after this
        returns, so a segment below the recovery point has index files that
        match its batches (see ``open``).
        """
        try:
            if self.size_bytes != self.flushed_bytes:
                os.fsync(self.fd)
                self.flushed_bytes = self.size_bytes
            if not self._index_file_matches():
                self._persist_entries(
                    self.index_path,
                    _INDEX_ENTRY,
                    list(zip(self._index_offsets, self._index_positions)),
                    self._persisted_index_entries,
                )
                self._persisted_index_entries = self._index_file_entries = len(self._index_offsets)
            if not self._time_index_file_matches():
                self._persist_entries(
                    self.time_index_path,
                    _TIME_INDEX_ENTRY,
                    list(zip(self._time_index_timestamps, self._time_index_offsets)),
                    self._persisted_time_index_entries,
                )
                self._persisted_time_index_entries = self._time_index_file_entries = len(self._time_index_offsets)
        except OSError as error:
            raise KafkaStorageError(f"cannot flush segment {self.log_path}: {error}") from error

    @staticmethod
    def _persist_entries(
        path: Path, entry: struct.Struct, entries: list[tuple[int, int]], persisted_entries: int
    ) -> None:
        """Cut the file to the entries that are still valid, then append the rest.

        With no valid entry left the file is written whole as a copy and
        renamed over the old one. Written in place, a crash could leave a
        prefix of the new entries that passes every sanity check, in a
        segment that was already below the recovery point (after a rebuild
        or a compaction): a time index that lost its last entries would give
        the segment a max timestamp that is too small. Appending to valid
        entries is safe: appended entries describe batches newer than the last
        flush, which keep the segment above the recovery point until this
        flush completes.
        """
        if persisted_entries == 0 and entries:
            temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_fully(fd, b"".join(entry.pack(*fields) for fields in entries), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
            sync_directory(path.parent)
            return
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
        is rewritten whole on the next flush.
        """
        expected_index = b"".join(_INDEX_ENTRY.pack(*e) for e in zip(self._index_offsets, self._index_positions))
        expected_time = b"".join(
            _TIME_INDEX_ENTRY.pack(*e) for e in zip(self._time_index_timestamps, self._time_index_offsets)
        )
        self._persisted_index_entries, self._index_file_entries = self._compare_index_file(
            self.index_path, expected_index, len(self._index_offsets)
        )
        self._persisted_time_index_entries, self._time_index_file_entries = self._compare_index_file(
            self.time_index_path, expected_time, len(self._time_index_offsets)
        )

    @staticmethod
    def _compare_index_file(path: Path, expected: bytes, entries: int) -> tuple[int, int | None]:
        """(entries persisted, entries in the file or None when its content is unknown)."""
        try:
            on_disk = path.read_bytes()
        except FileNotFoundError:
            on_disk = b""
        if on_disk == expected:
            return entries, entries
        logger.info("Rebuilding %s: the file does not match the segment's batches", path)
        return 0, None if on_disk else 0

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


def _read_if_present(path: Path) -> bytes:
    """The file's bytes; a missing index file reads as an index without entries."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _common_prefix(old: list[int], new: list[int], limit: int) -> int:
    count = 0
    for old_value, new_value in zip(old[:limit], new):
        if old_value != new_value:
            break
        count += 1
    return count

