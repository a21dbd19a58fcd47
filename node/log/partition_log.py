"""PartitionLog: the replica of one topic partition on disk.

A directory of segments (see ``segment.py``), each named after its base
offset, producer-state snapshots (``{offset:020d}.snapshot``, see
``producer_snapshot.py``) and three checkpoints:

* ``leader-epoch-checkpoint``: epoch -> start offset (``leader_epoch.py``);
* ``log-start-offset-checkpoint``: the log start offset, which DeleteRecords
  and retention move forward and which may lie inside a segment;
* ``recovery-point-offset-checkpoint``: everything below it was fsynced, so
  recovery re-validates only the segments that may hold later offsets.

Rules:

* Record batches are opaque: the leader validates headers and CRCs, stamps
  ``base_offset`` and ``leader_epoch`` (the CRC does not cover them) and
  appends the bytes. Followers append the leader's bytes as they are.
* With ``message.timestamp.type=LogAppendTime`` the leader also stamps
  ``now_ms`` as each batch's ``max_timestamp`` with the LogAppendTime bit and
  recomputes those CRCs, so the time index, timestamp lookups and retention
  follow the append time. The config is read at each append: a change affects
  only batches appended afterwards (as in Kafka).
* A refused append leaves nothing on disk: validation and producer checks run
  before the write, and a failed write is cut back (KAFKA_STORAGE_ERROR).
* Offsets only grow within the log; compaction leaves holes, never renumbers.
* ``read`` returns whole batches, from the batch holding ``start_offset`` up
  to (excluding) the first batch that reaches ``max_offset``, at least one
  batch even when it exceeds ``max_bytes``.
* Retention and DeleteRecords move the log start offset forward and delete
  only whole segments; retention never deletes the active segment.
* A torn or corrupt tail is truncated when the log opens; it is never served.

Not thread-safe: the node serialises calls for one partition (one event loop
or one lock). Every method takes the time as ``now_ms`` instead of reading a
clock; ``next_flush_deadline_ms()`` tells the shell when to call
``maybe_flush``.

Theory of operation: the open procedure lists the segments, drops leftovers of
interrupted operations, loads the newest producer-state snapshot, then opens
each segment. A segment that ends at or below both the recovery point and the
snapshot's offset is opened from its index files after sanity checks and a
walk of the batches after its last index entry (``Segment.open``), when the
leader epoch checkpoint is readable; every other segment, and any whose index
files fail a check, has its batch headers walked once (with CRC checks from
the recovery point on), rebuilding the indexes and, when its checkpoint is
unreadable, the leader epoch cache, and replaying into the producer state only
the batches at or above the snapshot's offset. If recovery cut the log below
that offset, the snapshot is deleted and the state reloaded from an older one.
An append validates, checks producer sequences, stamps, rolls the active
segment if needed (snapshotting the producer state at the new base offset),
writes, then updates indexes, producer state and epochs. A read finds the
segment by bisecting base offsets and the position through the sparse index,
and returns bytes from one pread per segment. A truncation deletes the
snapshots above the new end and, if it removed batches the producer state
remembers, reloads the state from the newest remaining snapshot plus the
batches after it.

Why a segment below the recovery point has index files that match it:
``flush`` syncs each segment's batches, then writes and syncs its index
entries, and only then moves the recovery point past them. Afterwards the
segment's bytes and index files change only (1) by ``truncate_to``, which
lowers the recovery point durably to the new end, after syncing the cut, and
whose removed index entries the next flush cuts before the recovery point
moves past new batches again; (2) by compaction, which removes the index files
before the cleaned file is renamed into place and writes new ones whole
through a rename; (3) by a rebuild on open, also written whole through a
rename. A crash in the middle of any of these leaves index files that still
describe the batches exactly (a cut .log keeps a prefix of its batches, and the
entries inside it stay true), files that fail a sanity check (entries past the
end of the file, a lost suffix that the tail walk would have indexed), or a
segment that reaches past the recovery point and is walked. What the checks
cannot see is damage from outside shoal that leaves well-formed, wrong entries
in the middle of a file, as in Kafka, which trusts the same files.

Known costs: after a clean shutdown an open reads the index files and walks
at most ``index_interval_bytes`` plus one batch per segment, but an open
without a usable producer snapshot or leader epoch checkpoint still walks
every batch header; and each compaction pass decodes every closed segment (no
cleaner checkpoint yet), linear in the log's batches.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from coordinator.errors import ErrorCode, OperatingError
from node.log.checkpoint import TEMPORARY_SUFFIX, read_offset, sync_directory, write_offset
from node.log.config import MAX_SEGMENT_POSITION, LogConfig
from node.log.errors import (
    FencedLeaderEpochError,
    KafkaStorageError,
    OffsetOutOfRangeError,
    UnexpectedAppendOffsetError,
)
from node.log.leader_epoch import EpochEntry, LeaderEpochCache
from node.log.leader_epoch import FILE_NAME as LEADER_EPOCH_FILE_NAME
from node.log.producer_snapshot import ProducerSnapshots
from node.log.producer_state import ProducerStateManager
from node.log.segment import (
    CLEANED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    MAX_RELATIVE_OFFSET,
    TIME_INDEX_SUFFIX,
    Segment,
    segment_file_name,
    write_fully,
)
from proto.batch import (
    TIMESTAMP_TYPE_LOG_APPEND_TIME,
    BatchHeader,
    CorruptBatchError,
    decode_records,
    parse_header,
    rebuild_batch,
    stamp,
    validate_batches,
)

logger = logging.getLogger(__name__)

LOG_START_OFFSET_FILE_NAME = "log-start-offset-checkpoint"
RECOVERY_POINT_FILE_NAME = "recovery-point-offset-checkpoint"
_SEGMENT_FILE = re.compile(r"^(\d{20})\.log$")


@dataclass(frozen=True, slots=True)
class AppendInfo:
    first_offset: int
    last_offset: int
    record_count: int
    max_timestamp: int
    #: True when the batch was a producer's retry: nothing was appended and
    #: the offsets are those of the original append.
    duplicate: bool = False
    #: The append time stamped into the batches of a LogAppendTime topic, -1
    #: for CreateTime (Kafka's ProduceResponse.log_append_time_ms).
    log_append_time_ms: int = -1


class PartitionLog:
    def __init__(self, directory: Path, config: LogConfig, now_ms: int) -> None:
        self.directory = Path(directory)
        self.config = config
        self._closed = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise KafkaStorageError(f"cannot create log directory {self.directory}: {error}") from error
        self._producers = ProducerStateManager(config.max_producer_ids, config.producer_id_expiration_ms)
        self._unflushed_messages = 0
        self._oldest_unflushed_ms: int | None = None
        self._segments: list[Segment] = []
        self._open_segments(now_ms)

    # ------------------------------------------------------------------ open

    def _open_segments(self, now_ms: int) -> None:
        base_offsets = self._remove_leftovers_and_list()
        checkpointed_start = read_offset(self.directory / LOG_START_OFFSET_FILE_NAME)
        recovery_point = read_offset(self.directory / RECOVERY_POINT_FILE_NAME)
        log_start_offset = checkpointed_start if checkpointed_start is not None else 0
        # Segments wholly below the log start offset outlived a crash between
        # the checkpoint and their deletion.
        while len(base_offsets) > 1 and base_offsets[1] <= log_start_offset:
            self._delete_segment_files(base_offsets.pop(0))
        self._snapshots = ProducerSnapshots(self.directory)
        # A snapshot below the oldest segment would skip the batches between
        # its offset and that segment, which retention or DeleteRecords deleted.
        self._snapshots.delete_below(base_offsets[0] if base_offsets else log_start_offset)
        replay_from = self._load_latest_snapshot()
        cache = LeaderEpochCache.load(self.directory)
        # A segment wholly below the recovery point was synced with its index
        # files before the recovery point passed it (flush), and nothing
        # rewrote it since without lowering the recovery point or rewriting
        # the index files whole (truncate_to, compaction), so its index files
        # may be trusted. Its batch headers are still needed when the
        # producer state must replay them (at or above the snapshot offset)
        # or the leader epoch cache must be rebuilt from them.
        trusted_end_offset = (
            min(recovery_point, replay_from) if recovery_point is not None and cache is not None else None
        )
        rebuilt_epochs: list[EpochEntry] = []

        def on_batch(header: BatchHeader) -> None:
            if header.base_offset >= replay_from:
                self._producers.record(header, header.max_timestamp)
            if header.leader_epoch >= 0 and (not rebuilt_epochs or header.leader_epoch > rebuilt_epochs[-1].epoch):
                rebuilt_epochs.append(EpochEntry(header.leader_epoch, header.base_offset))

        for index, base_offset in enumerate(base_offsets):
            is_last = index == len(base_offsets) - 1
            next_base = None if is_last else base_offsets[index + 1]
            validate = recovery_point is None or is_last or next_base > recovery_point
            segment = Segment.open(
                self.directory,
                base_offset,
                self.config.index_interval_bytes,
                validate=validate,
                now_ms=now_ms,
                on_batch=on_batch,
                # A segment that starts at or past the trusted end cannot end
                # below it; trying would only add a walk of its tail.
                trusted_end_offset=(
                    trusted_end_offset if trusted_end_offset is not None and base_offset < trusted_end_offset else None
                ),
            )
            self._segments.append(segment)
            if segment.torn and not is_last:
                # The log ends at the first torn batch: later segments were
                # written after it and cannot be trusted to follow it.
                for later in base_offsets[index + 1 :]:
                    logger.warning(
                        "Recovery of %s: deleting segment %d, which follows a torn segment", self.directory, later
                    )
                    self._delete_segment_files(later)
                break
        if not self._segments:
            self._segments.append(Segment.create(self.directory, log_start_offset, self.config.index_interval_bytes))
        self._check_segment_order()

        log_end_offset = self.log_end_offset
        if replay_from > log_end_offset:
            # Recovery cut a torn tail below the snapshot: it describes batches
            # that are gone. Unflushed bytes are lost with a crash, while the
            # snapshot of a roll was synced at once.
            self._reload_producer_state()
        self._log_start_offset = max(min(log_start_offset, log_end_offset), self._segments[0].base_offset)
        if self._log_start_offset > log_end_offset:
            self._log_start_offset = log_end_offset
        if cache is None:
            cache = LeaderEpochCache(self.directory / LEADER_EPOCH_FILE_NAME, rebuilt_epochs)
            cache.persist()
        self._epochs = cache
        self._epochs.truncate_from_end(log_end_offset)
        self._epochs.truncate_from_start(self._log_start_offset)
        self._recovery_point = recovery_point if recovery_point is not None else 0
        # Make what recovery validated durable and record the new recovery
        # point, so the next open does not validate the same bytes again.
        self._persist_log_start_offset()
        self.flush()

    def _check_segment_order(self) -> None:
        for segment, following in zip(self._segments, self._segments[1:]):
            if segment.next_offset > following.base_offset:
                raise KafkaStorageError(
                    f"segment {segment.log_path} reaches offset {segment.next_offset}, past the next segment's "
                    f"base offset {following.base_offset}; the partition needs to be restored from a replica"
                )

    def _remove_leftovers_and_list(self) -> list[int]:
        base_offsets = []
        log_names = set()
        for path in self.directory.iterdir():
            name = path.name
            if name.endswith(CLEANED_SUFFIX) or name.endswith(TEMPORARY_SUFFIX):
                # An interrupted compaction or checkpoint write: the original
                # file is still in place, the partial copy is discarded.
                logger.info("removing leftover %s of an interrupted operation", path)
                path.unlink()
                continue
            match = _SEGMENT_FILE.match(name)
            if match:
                base_offsets.append(int(match.group(1)))
                log_names.add(match.group(1))
        for path in self.directory.iterdir():
            for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
                if path.name.endswith(suffix) and path.name[: -len(suffix)] not in log_names:
                    logger.info("removing %s, an index without its segment", path)
                    path.unlink()
        return sorted(base_offsets)

    def _delete_segment_files(self, base_offset: int) -> None:
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
            try:
                (self.directory / segment_file_name(base_offset, suffix)).unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ properties

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def size_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return [segment.base_offset for segment in self._segments]

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def leader_epoch_entries(self) -> list[EpochEntry]:
        return self._epochs.entries

    @property
    def latest_epoch(self) -> int:
        return self._epochs.latest_epoch

    @property
    def producer_state(self) -> ProducerStateManager:
        return self._producers

    # --------------------------------------------------------------- appends

    def append_as_leader(self, batches: bytes, leader_epoch: int, now_ms: int) -> AppendInfo:
        """Validate a producer's batches, assign offsets from the log end offset, append them."""
        self._check_open()
        headers = validate_batches(batches, self.config.max_message_bytes, dense=True)
        if leader_epoch < self._epochs.latest_epoch:
            raise FencedLeaderEpochError(
                f"append with leader epoch {leader_epoch} but this replica has seen epoch "
                f"{self._epochs.latest_epoch}; the caller is no longer the leader"
            )
        log_append_time_ms = now_ms if self.config.log_append_time else None
        duplicate = self._producers.check_leader_append(headers)
        if duplicate is not None:
            # Kafka answers a retry with the original batch's timestamp as its
            # append time; on a LogAppendTime topic that is the append time.
            return AppendInfo(
                duplicate.first_offset,
                duplicate.last_offset,
                duplicate.record_count,
                duplicate.max_timestamp,
                True,
                duplicate.max_timestamp if log_append_time_ms is not None else -1,
            )
        first_offset = self.log_end_offset
        stamped = stamp(batches, first_offset, leader_epoch, log_append_time_ms=log_append_time_ms)
        placed = _place(stamped, headers, first_offset, leader_epoch, log_append_time_ms is not None)
        self._append(stamped, placed, now_ms)
        if leader_epoch > self._epochs.latest_epoch:
            self._epochs.assign(leader_epoch, first_offset)
        info = self._after_append(placed, now_ms)
        if log_append_time_ms is None:
            return info
        return AppendInfo(
            info.first_offset, info.last_offset, info.record_count, info.max_timestamp, False, log_append_time_ms
        )

    def append_as_follower(self, batches: bytes, now_ms: int) -> AppendInfo:
        """Append batches copied from the leader; their offsets are already assigned."""
        self._check_open()
        # A follower copies what the leader accepted, even if max.message.bytes
        # shrank since; the position limit of a segment is the only bound.
        headers = validate_batches(batches, MAX_SEGMENT_POSITION - self.config.segment_bytes, dense=False)
        expected = self.log_end_offset
        position = 0
        placed = []
        for header in headers:
            if header.base_offset < expected:
                raise UnexpectedAppendOffsetError(
                    f"replicated batch starts at offset {header.base_offset}, below the expected offset {expected}; "
                    f"fetch again from the log end offset {self.log_end_offset}"
                )
            placed.append((position, header))
            position += header.size_bytes
            expected = header.next_offset
        self._append(batches, placed, now_ms)
        for _, header in placed:
            if header.leader_epoch > self._epochs.latest_epoch:
                self._epochs.assign(header.leader_epoch, header.base_offset)
        return self._after_append(placed, now_ms)

    def _append(self, data: bytes, placed: list[tuple[int, BatchHeader]], now_ms: int) -> None:
        first_offset = placed[0][1].base_offset
        last_offset = placed[-1][1].last_offset
        active = self._segments[-1]
        time_expired = (
            active.rolling_started_ms is not None and now_ms - active.rolling_started_ms >= self.config.segment_ms
        )
        full = active.size_bytes + len(data) > self.config.segment_bytes
        offsets_overflow = last_offset - active.base_offset > MAX_RELATIVE_OFFSET
        if (active.size_bytes > 0 and (time_expired or full)) or offsets_overflow:
            self._roll(first_offset)
            active = self._segments[-1]
        active.append(data, placed)
        if active.rolling_started_ms is None:
            active.rolling_started_ms = now_ms

    def _after_append(self, placed: list[tuple[int, BatchHeader]], now_ms: int) -> AppendInfo:
        record_count = 0
        max_timestamp = -1
        for _, header in placed:
            self._producers.record(header, now_ms)
            record_count += header.record_count
            max_timestamp = max(max_timestamp, header.max_timestamp)
        self._unflushed_messages += record_count
        if self._oldest_unflushed_ms is None:
            self._oldest_unflushed_ms = now_ms
        self.maybe_flush(now_ms)
        return AppendInfo(placed[0][1].base_offset, placed[-1][1].last_offset, record_count, max_timestamp, False)

    def _roll(self, base_offset: int) -> None:
        active = self._segments[-1]
        assert base_offset >= active.next_offset
        # Kafka's rule: every new segment starts with a snapshot at its base
        # offset, so that an open replays at most the active segment. Taken
        # first, a failed write refuses the roll and changes nothing.
        self._take_snapshot(base_offset)
        if active.size_bytes == 0:
            # An empty active segment is replaced rather than kept as a
            # zero-length file in the middle of the log.
            active.delete()
            self._segments.pop()
        self._segments.append(Segment.create(self.directory, base_offset, self.config.index_interval_bytes))

    def roll(self, now_ms: int) -> None:
        """Close the active segment now (if it holds data) and start a new one at the log end offset."""
        self._check_open()
        if self._segments[-1].size_bytes > 0:
            self._roll(self.log_end_offset)

    # ------------------------------------------------------------------ reads

    def read(self, start_offset: int, max_bytes: int, max_offset: int) -> bytes:
        """Whole batches from the one holding ``start_offset``, ending before ``max_offset``."""
        self._check_open()
        if not self._log_start_offset <= start_offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {start_offset} is outside the log [{self._log_start_offset}, {self.log_end_offset}]; "
                f"reset to the log start or end offset"
            )
        if max_bytes < 0:
            raise OperatingError(ErrorCode.INVALID_FETCH_SIZE, f"max_bytes must be >= 0, got {max_bytes}")
        max_offset = min(max_offset, self.log_end_offset)
        if start_offset >= max_offset:
            return b""
        index = max(0, bisect.bisect_right(self._base_offsets(), start_offset) - 1)
        parts: list[bytes] = []
        total = 0
        for segment in self._segments[index:]:
            if segment.base_offset >= max_offset:
                break
            data, exhausted = segment.read(start_offset, max_bytes - total, max_offset, at_least_one=not parts)
            if data:
                parts.append(data)
                total += len(data)
            if not exhausted or total >= max_bytes:
                break
        return b"".join(parts)

    def _base_offsets(self) -> list[int]:
        return [segment.base_offset for segment in self._segments]

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """The first offset whose record timestamp is >= ``timestamp_ms`` (None if there is none)."""
        found = self.record_for_timestamp(timestamp_ms)
        return found[0] if found is not None else None

    def record_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record whose timestamp is >= ``timestamp_ms``, or None.

        The timestamp is the record's own (Kafka's ListOffsets answers with it),
        the batch's append time on a LogAppendTime batch.
        """
        self._check_open()
        for segment in self._segments:
            if segment.max_timestamp < timestamp_ms:
                continue
            for position, header in segment.walk_from(segment.start_position_for_timestamp(timestamp_ms)):
                if header.max_timestamp < timestamp_ms or header.last_offset < self._log_start_offset:
                    continue
                for record in decode_records(segment.read_bytes(position, header.size_bytes)):
                    if record.timestamp_ms >= timestamp_ms and record.offset >= self._log_start_offset:
                        return record.offset, record.timestamp_ms
        return None

    # ------------------------------------------------------------ truncation

    def truncate_to(self, offset: int) -> None:
        """Remove every batch that holds an offset >= ``offset`` (follower divergence).

        The log end offset becomes the end of the last batch kept, which is at
        most ``offset`` (a batch is never split).
        """
        self._check_open()
        if offset >= self.log_end_offset:
            return
        if offset <= self._log_start_offset:
            self.truncate_fully_and_start_at(offset)
            return
        while len(self._segments) > 1 and self._segments[-1].base_offset >= offset:
            self._segments.pop().delete()
        new_end = self._segments[-1].truncate_to_offset(offset)
        self._log_start_offset = min(self._log_start_offset, new_end)
        self._after_truncation(new_end)
        logger.info("%s truncated to offset %d (requested %d)", self.directory, new_end, offset)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete everything and restart the empty log at ``offset`` (a follower far behind the leader)."""
        self._check_open()
        assert offset >= 0
        # Snapshots first: after a crash in between, old segments without
        # snapshots are rebuilt in full, never the other way round.
        self._snapshots.delete_all()
        for segment in self._segments:
            segment.delete()
        self._segments = [Segment.create(self.directory, offset, self.config.index_interval_bytes)]
        self._log_start_offset = offset
        self._producers.clear()
        self._epochs.clear()
        self._recovery_point = offset
        self._persist_log_start_offset()
        self._write_recovery_point()

    def _after_truncation(self, new_end: int) -> None:
        self._epochs.truncate_from_end(new_end)
        self._recovery_point = min(self._recovery_point, new_end)
        self._write_recovery_point()
        self._persist_log_start_offset()
        # Even when no remembered batch was cut, a snapshot above the new end
        # must go: the log will grow past its offset with batches it never saw.
        self._snapshots.delete_above(new_end)
        if self._producers.has_batches_from(new_end):
            self._reload_producer_state()

    # -------------------------------------------------------- producer state

    def _take_snapshot(self, offset: int) -> None:
        """Write the producer state as of ``offset``; every batch below it must have been recorded."""
        self._snapshots.write(offset, self._producers.entries())

    def _load_latest_snapshot(self) -> int:
        """Load the newest usable snapshot (or nothing); return the offset from which batches must be replayed."""
        latest = self._snapshots.read_latest()
        if latest is None:
            self._producers.clear()
            return 0
        offset, entries = latest
        self._producers.load(entries)
        return offset

    def _reload_producer_state(self) -> None:
        """The newest snapshot at or below the log end offset, plus the batches after it."""
        self._snapshots.delete_above(self.log_end_offset)
        replay_from = self._load_latest_snapshot()
        first = max(0, bisect.bisect_right(self._base_offsets(), replay_from) - 1)
        for segment in self._segments[first:]:
            found = segment.find_batch(replay_from)
            if found is None:
                continue
            for _, header in segment.walk_from(found[0]):
                if header.base_offset >= replay_from:
                    self._producers.record(header, header.max_timestamp)

    def delete_records_before(self, offset: int) -> int:
        """DeleteRecords: advance the log start offset to ``offset``; return the new log start offset.

        The caller bounds ``offset`` by the high watermark. Whole segments
        below the new start are deleted.
        """
        self._check_open()
        if not 0 <= offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"cannot delete records before offset {offset}: the log ends at {self.log_end_offset}"
            )
        if offset <= self._log_start_offset:
            return self._log_start_offset
        self._log_start_offset = offset
        self._persist_log_start_offset()
        active = self._segments[-1]
        if active.size_bytes > 0 and active.next_offset <= offset:
            self._roll(self.log_end_offset)
        self._delete_segments_below_log_start()
        self._epochs.truncate_from_start(offset)
        return self._log_start_offset

    def _delete_segments_below_log_start(self) -> int:
        deleted = 0
        while len(self._segments) > 1 and self._segments[1].base_offset <= self._log_start_offset:
            self._segments.pop(0).delete()
            deleted += 1
        self._snapshots.delete_below(self._segments[0].base_offset)
        return deleted

    def enforce_retention(self, now_ms: int, max_offset: int | None = None) -> int:
        """Delete the oldest closed segments past retention.ms or retention.bytes; return how many.

        A segment is past retention.ms when its newest timestamp is older than
        ``now_ms - retention_ms``. ``max_offset`` (the high watermark) keeps
        segments holding unreplicated offsets. Also expires idle producer ids.
        """
        self._check_open()
        self._producers.expire(now_ms)
        if not self.config.deletes:
            return 0
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        remaining_bytes = self.size_bytes
        deleted = 0
        while len(self._segments) > 1:
            oldest = self._segments[0]
            upper_offset = self._segments[1].base_offset
            if max_offset is not None and upper_offset > max_offset:
                break
            too_old = retention_ms >= 0 and now_ms - oldest.max_timestamp > retention_ms
            too_big = retention_bytes >= 0 and remaining_bytes - oldest.size_bytes >= retention_bytes
            if not (too_old or too_big):
                break
            remaining_bytes -= oldest.size_bytes
            self._segments.pop(0).delete()
            deleted += 1
        if deleted:
            self._log_start_offset = max(self._log_start_offset, self._segments[0].base_offset)
            self._persist_log_start_offset()
            self._epochs.truncate_from_start(self._log_start_offset)
            self._snapshots.delete_below(self._segments[0].base_offset)
            logger.info(
                "%s: retention deleted %d segments; log start offset is now %d",
                self.directory,
                deleted,
                self._log_start_offset,
            )
        return deleted

    # ------------------------------------------------------------ compaction

    def compact(self, now_ms: int) -> int:
        """cleanup.policy=compact: keep the newest record per key in closed segments; return records removed.

        Records keep their offsets (the log gets holes). A tombstone (null
        value) that is the newest for its key stays for delete.retention.ms,
        measured from its record timestamp, so that consumers see the delete.
        Records without a key are kept. Each rewritten segment goes through
        ``<name>.log.cleaned`` and an atomic rename.
        """
        self._check_open()
        if not self.config.compacts:
            return 0
        latest_offsets: dict[bytes, int] = {}
        cleanable: list[Segment] = []
        for segment in self._segments[:-1]:
            segment_offsets: dict[bytes, int] = {}
            for header, data in segment.iter_batches():
                records = _decode_or_none(data, segment)
                for record in records or ():
                    if record.key is not None:
                        segment_offsets[record.key] = record.offset
            new_keys = sum(1 for key in segment_offsets if key not in latest_offsets)
            if len(latest_offsets) + new_keys > self.config.max_compaction_keys:
                break
            latest_offsets.update(segment_offsets)
            cleanable.append(segment)
        removed_total = 0
        for segment in cleanable:
            removed_total += self._clean_segment(segment, latest_offsets, now_ms)
        return removed_total

    def _clean_segment(self, segment: Segment, latest_offsets: dict[bytes, int], now_ms: int) -> int:
        parts: list[bytes] = []
        removed = 0
        for header, data in segment.iter_batches():
            records = _decode_or_none(data, segment)
            if records is None:
                parts.append(data)
                continue
            kept = [
                record
                for record in records
                if record.key is None
                or (
                    latest_offsets.get(record.key) == record.offset
                    and (record.value is not None or now_ms - record.timestamp_ms < self.config.delete_retention_ms)
                )
            ]
            removed += len(records) - len(kept)
            if len(kept) == len(records):
                parts.append(data)
            elif kept:
                parts.append(rebuild_batch(header, kept))
        if removed == 0:
            return 0
        self._replace_segment(segment, b"".join(parts))
        return removed

    def _replace_segment(self, segment: Segment, cleaned: bytes) -> None:
        """Swap a segment's file for its cleaned copy: write, sync, rename (atomic), reopen."""
        index = self._segments.index(segment)
        cleaned_path = segment.log_path.with_name(segment.log_path.name + CLEANED_SUFFIX)
        try:
            fd = os.open(cleaned_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_fully(fd, cleaned, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            cleaned_path.unlink(missing_ok=True)
            raise KafkaStorageError(f"cannot write cleaned segment {cleaned_path}: {error}") from error
        # The old indexes describe the old file; removed (durably) first, they
        # are rebuilt from the new file if a crash follows the rename, and
        # never trusted with it.
        for path in (segment.index_path, segment.time_index_path):
            path.unlink(missing_ok=True)
        sync_directory(self.directory)
        os.replace(cleaned_path, segment.log_path)
        sync_directory(self.directory)
        segment.close()
        replacement = Segment.open(
            self.directory,
            segment.base_offset,
            self.config.index_interval_bytes,
            validate=False,
            now_ms=segment.rolling_started_ms or 0,
            on_batch=lambda header: None,
        )
        if replacement.size_bytes == 0 and index > 0:
            # Every record of this closed segment was superseded: its offsets
            # are a hole now, and the file can go.
            replacement.delete()
            del self._segments[index]
        else:
            replacement.flush()
            self._segments[index] = replacement

    # ---------------------------------------------------------- leader epochs

    def assign_epoch(self, epoch: int, start_offset: int) -> None:
        self._check_open()
        self._epochs.assign(epoch, start_offset)

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """(largest epoch <= ``epoch``, the start offset of the epoch after it or the log end offset)."""
        return self._epochs.end_offset_for(epoch, self.log_end_offset)

    # ------------------------------------------------------------ durability

    def maybe_flush(self, now_ms: int) -> bool:
        """Flush when flush.messages records or flush.ms of age have accumulated; True if it flushed."""
        if self._unflushed_messages == 0:
            return False
        flush_messages = self.config.flush_messages
        deadline_ms = self.next_flush_deadline_ms()
        if (flush_messages is not None and self._unflushed_messages >= flush_messages) or (
            deadline_ms is not None and now_ms >= deadline_ms
        ):
            self.flush()
            return True
        return False

    def next_flush_deadline_ms(self) -> int | None:
        """When maybe_flush should next run for flush.ms, or None when nothing waits."""
        if self._oldest_unflushed_ms is None or self.config.flush_ms is None:
            return None
        return self._oldest_unflushed_ms + self.config.flush_ms

    def flush(self) -> None:
        """fsync every segment written since the last flush and advance the recovery point."""
        self._check_open()
        for segment in self._segments:
            if segment.dirty:
                self._cut_stray_bytes(segment)
                segment.flush()
        log_end_offset = self.log_end_offset
        if log_end_offset != self._recovery_point or not (self.directory / RECOVERY_POINT_FILE_NAME).exists():
            self._recovery_point = log_end_offset
            self._write_recovery_point()
        self._unflushed_messages = 0
        self._oldest_unflushed_ms = None

    @staticmethod
    def _cut_stray_bytes(segment: Segment) -> None:
        # A failed write whose undo also failed may have left bytes past the
        # segment's end; they must go before the recovery point covers them.
        try:
            if os.fstat(segment.fd).st_size > segment.size_bytes:
                os.ftruncate(segment.fd, segment.size_bytes)
        except OSError as error:
            raise KafkaStorageError(f"cannot cut stray bytes from {segment.log_path}: {error}") from error

    def _write_recovery_point(self) -> None:
        try:
            write_offset(self.directory / RECOVERY_POINT_FILE_NAME, self._recovery_point)
        except OSError as error:
            raise KafkaStorageError(f"cannot write the recovery point of {self.directory}: {error}") from error

    def _persist_log_start_offset(self) -> None:
        try:
            write_offset(self.directory / LOG_START_OFFSET_FILE_NAME, self._log_start_offset)
        except OSError as error:
            raise KafkaStorageError(f"cannot write the log start offset of {self.directory}: {error}") from error

    def close(self) -> None:
        """Flush, snapshot the producer state at the log end offset, release the files.

        The log object is unusable afterwards.
        """
        if self._closed:
            return
        try:
            self.flush()
            # A clean shutdown leaves nothing to replay on the next open.
            self._take_snapshot(self.log_end_offset)
        finally:
            for segment in self._segments:
                segment.close()
            self._closed = True

    def _check_open(self) -> None:
        assert not self._closed, f"{self.directory}: the log is closed"


def _place(
    stamped: bytes, headers: list[BatchHeader], first_offset: int, leader_epoch: int, log_append_time: bool
) -> list[tuple[int, BatchHeader]]:
    """(position in the buffer, header as stamped) for a leader append."""
    placed = []
    position = 0
    next_offset = first_offset
    for header in headers:
        if log_append_time or header.attributes & TIMESTAMP_TYPE_LOG_APPEND_TIME:
            # stamp() rewrote this batch's timestamp type (and max_timestamp
            # and CRC): read the header back as stored, for the time index.
            placed.append((position, parse_header(stamped, position)))
        else:
            placed.append((position, header._replace(base_offset=next_offset, leader_epoch=leader_epoch)))
        position += header.size_bytes
        next_offset += header.last_offset_delta + 1
    return placed


def _decode_or_none(data: bytes, segment: Segment) -> list | None:
    try:
        return decode_records(data, verify_crc=False)
    except CorruptBatchError as error:
        # The batch passed its CRC when appended, so its producer encoded
        # records this codec cannot read; compaction leaves it untouched.
        logger.warning("compaction keeps an undecodable batch of %s as it is: %s", segment.log_path, error.message)
        return None
