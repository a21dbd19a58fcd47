"""The share coordinator's state store: one ``__share_group_state`` partition.

A ``ShareCoordinatorShard`` holds the durable state of every share partition
(share group, topic, partition) whose key hashes to one state partition: the
share-partition start offset, the state epoch, the leader epoch, the delivery
complete count and the persisted state batches (KIP-932, kip932-facts.md §6).

Rules
-----

1. **State changes only by replaying records.** ``read``, ``write``,
   ``initialize``, ``delete`` and ``snapshot`` compute the records to append
   from the current state and never mutate it. The shell appends them to the
   state partition's log and, once the append succeeded, calls ``replay`` for
   each one with its log offset. Recovery replays the same records through the
   same code (Kafka's CoordinatorResult pattern), so live state and recovered
   state cannot drift apart.
2. **One operation at a time per shard.** The shell must replay the records of
   one operation before it computes the next one. Update records commute (see
   rule 4), but a snapshot replaces a key's state wholesale: a snapshot
   computed before an earlier update was replayed would drop that update.
3. **Fencing.** A lower leader epoch than recorded is refused with
   FENCED_LEADER_EPOCH; a write with a lower state epoch is refused with
   FENCED_STATE_EPOCH. A higher leader epoch is persisted (in the write's own
   record, or in an epoch-only update record for a read), which fences the
   older leader. The state epoch starts only through ``initialize`` (the group
   coordinator's reset); a write that claims a newer state epoch than recorded
   is refused as INVALID_REQUEST. A refused operation returns no records and
   leaves the state unchanged.
4. **Per-offset maximum.** Acquisitions are persisted as AVAILABLE with the new
   delivery count, so per offset the persisted (delivery count, state id) pair
   only grows in lexicographic order. Kafka's combiner rule ("higher delivery
   count wins; on a tie the higher state id wins": ARCHIVED 4 > ACKNOWLEDGED 2
   > AVAILABLE 0) is therefore a per-offset max, which makes merging
   idempotent and commutative. ``merge_batches`` implements it.
5. **The start offset never moves backwards within a state epoch.** A write's
   start offset is combined with the recorded one by max; -1 means
   "unchanged". Batches (or parts of batches) below the start offset are
   pruned: those offsets are finished.
6. **Snapshots bound recovery.** The first write of a key is a ShareSnapshot
   (snapshot epoch 0). Later writes are ShareUpdate records carrying only the
   new batches until ``updates_since_snapshot`` reaches
   ``snapshot_update_records_per_snapshot`` (Kafka's
   ``share.coordinator.snapshot.update.records.per.snapshot``, default 500;
   0 = every write is a snapshot); that write is a ShareSnapshot with the
   merged state and snapshot epoch + 1.
7. **Pruning.** A live key needs the records from its latest snapshot onwards;
   a deleted key needs nothing. ``prunable_before()`` is the lowest log offset
   still needed; records below it may be deleted from the log. Above it,
   ``has_redundant_records()`` tells whether anything is not needed (older
   records of keys snapshotted since, records of deleted keys): only then can
   re-snapshotting the key that holds the prune point let pruning advance.

Theory of operation
-------------------

Each key's batches are kept as a sorted list of non-overlapping runs, where
neighbouring runs that touch always differ in (state, delivery count).
Applying a batch to that list touches only the runs that overlap or touch it:
two binary searches find them, the affected slice is rebuilt (per-offset max
on the overlap, the rest split out, equal neighbours coalesced) and spliced
back. Pruning is one binary search and one slice deletion. So replaying an
update that acknowledges a few records near the end of a long window costs
O(log n) plus the size of the change, which keeps recovery of 100,000 update
records well under a second.

A ShareUpdate replayed for a key with no state (its snapshot was pruned) is
expected: it belongs to a key that a later tombstone deletes, whose records
between ``prunable_before()`` and the tombstone were kept. Kafka replays it
by creating state from the update; so do we, and the tombstone removes it.
``orphan_update_records_replayed_total`` counts these so that a pruning bug
(which would make such state survive) is visible.

Encoding: records are versioned, little-endian ``struct`` layouts (stdlib
only). The log layer is expected to checksum records; decoding still
validates every field and raises CORRUPT_MESSAGE for bytes that do not form a
valid record, so that corruption is reported instead of replayed.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coordinator.errors import ErrorCode, OperatingError

# --- Persisted delivery states (kip932-facts.md §1.1). ACQUIRED (1) is never
# persisted: acquisitions are written as AVAILABLE with the new delivery count.
AVAILABLE = 0
ACKNOWLEDGED = 2
ARCHIVED = 4
PERSISTED_STATES: frozenset[int] = frozenset({AVAILABLE, ACKNOWLEDGED, ARCHIVED})

#: Kafka's sentinel for "start offset not initialized / unchanged".
UNINITIALIZED_START_OFFSET = -1
#: Kafka's sentinel for "delivery complete count unknown / unchanged" (KIP-1226).
UNKNOWN_DELIVERY_COMPLETE_COUNT = -1
#: The state epoch reported for a key that has no state.
DEFAULT_STATE_EPOCH = 0
#: A leader epoch of -1 in ``read`` means "read without claiming leadership".
NO_LEADER_EPOCH = -1

# Field ranges follow Kafka's wire types: offsets int64, epochs and counts
# int32, delivery count int16.
OFFSET_MAX = 2**63 - 1
EPOCH_MAX = 2**31 - 1
PARTITION_MAX = 2**31 - 1
DELIVERY_COUNT_MAX = 2**15 - 1
DELIVERY_COMPLETE_COUNT_MAX = 2**31 - 1
#: Kafka limits topic names to 249 characters; group ids get the same bound
#: here so that a key always fits a small, fixed-size length prefix.
NAME_BYTES_MAX = 249


@dataclass(frozen=True, slots=True)
class ShareKey:
    """A share partition: (share group, topic, partition)."""

    group_id: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class PersistedBatch:
    """Offsets first_offset..last_offset (inclusive) share a state and delivery count."""

    first_offset: int
    last_offset: int
    state: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class ShareSnapshot:
    """The complete state of one key; replaying it replaces whatever was there."""

    key: ShareKey
    snapshot_epoch: int
    state_epoch: int
    leader_epoch: int
    start_offset: int
    delivery_complete_count: int
    batches: tuple[PersistedBatch, ...]


@dataclass(frozen=True, slots=True)
class ShareUpdate:
    """A delta on top of the snapshot with the same snapshot epoch.

    ``start_offset`` -1 and ``delivery_complete_count`` -1 mean unchanged.
    """

    key: ShareKey
    snapshot_epoch: int
    leader_epoch: int
    start_offset: int
    delivery_complete_count: int
    batches: tuple[PersistedBatch, ...]


@dataclass(frozen=True, slots=True)
class ShareDelete:
    """Tombstone: the key's state is gone and none of its records are needed."""

    key: ShareKey


ShareRecord = ShareSnapshot | ShareUpdate | ShareDelete


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What a share-partition leader loads. ``leader_epoch`` is the epoch after the read."""

    state_epoch: int
    start_offset: int
    delivery_complete_count: int
    batches: tuple[PersistedBatch, ...]
    leader_epoch: int


@dataclass(frozen=True, slots=True)
class ShareSummary:
    """One key's state without its batches (ReadShareGroupStateSummary plus bookkeeping)."""

    start_offset: int
    state_epoch: int
    leader_epoch: int
    delivery_complete_count: int
    snapshot_epoch: int
    snapshot_log_offset: int
    updates_since_snapshot: int
    batch_count: int


@dataclass(frozen=True, slots=True)
class ShareShardMetrics:
    """Counters for the shell to export (e.g. as ``shoal_share_state_*``)."""

    keys: int
    snapshot_records_replayed_total: int
    update_records_replayed_total: int
    tombstone_records_replayed_total: int
    orphan_update_records_replayed_total: int
    last_replayed_log_offset: int


@dataclass(frozen=True, slots=True)
class ShareStateSettings:
    """Bounds of one shard. Each limit is checked before any record is produced.

    * ``snapshot_update_records_per_snapshot``: Kafka's
      ``share.coordinator.snapshot.update.records.per.snapshot``. Lower means
      shorter recovery and more log volume (every snapshot carries the whole
      state of its key); 0 makes every write a snapshot.
    * ``state_batches_per_write_max``: batches accepted in one write request.
    * ``state_batches_per_key_max``: runs kept for one key after merging; it
      bounds memory and snapshot size. The share-partition leader's own
      in-flight limit (``group.share.partition.max.record.locks``) normally
      keeps a key far below it.
    * ``keys_max``: share partitions one state partition holds.
    """

    snapshot_update_records_per_snapshot: int = 500
    state_batches_per_write_max: int = 10_000
    state_batches_per_key_max: int = 20_000
    keys_max: int = 1_000_000

    def __post_init__(self) -> None:
        if not 0 <= self.snapshot_update_records_per_snapshot <= 1_000_000:
            raise OperatingError(
                ErrorCode.INVALID_CONFIG,
                "snapshot_update_records_per_snapshot must be between 0 and 1000000, "
                f"got {self.snapshot_update_records_per_snapshot}",
            )
        if not 1 <= self.state_batches_per_write_max <= self.state_batches_per_key_max:
            raise OperatingError(
                ErrorCode.INVALID_CONFIG,
                "state_batches_per_write_max must be between 1 and state_batches_per_key_max "
                f"({self.state_batches_per_key_max}), got {self.state_batches_per_write_max}",
            )
        if not 1 <= self.state_batches_per_key_max <= 10_000_000:
            raise OperatingError(
                ErrorCode.INVALID_CONFIG,
                "state_batches_per_key_max must be between 1 and 10000000, "
                f"got {self.state_batches_per_key_max}",
            )
        if not 1 <= self.keys_max <= 100_000_000:
            raise OperatingError(
                ErrorCode.INVALID_CONFIG,
                f"keys_max must be between 1 and 100000000, got {self.keys_max}",
            )


# ---------------------------------------------------------------------------
# Merging state batches
# ---------------------------------------------------------------------------


def _first_offset_of(batch: PersistedBatch) -> int:
    return batch.first_offset


def _last_offset_of(batch: PersistedBatch) -> int:
    return batch.last_offset


def _apply_batch(runs: list[PersistedBatch], batch: PersistedBatch) -> None:
    """Fold one batch into ``runs`` in place by per-offset max.

    ``runs`` is sorted, non-overlapping and coalesced, and stays so. Only the
    runs that overlap or touch the batch are rebuilt.
    """
    first = batch.first_offset
    last = batch.last_offset
    state = batch.state
    delivery_count = batch.delivery_count
    # Fast path: a batch past the end of the window (a new acquisition).
    if not runs or runs[-1].last_offset < first:
        if runs:
            tail = runs[-1]
            if (
                tail.last_offset + 1 == first
                and tail.state == state
                and tail.delivery_count == delivery_count
            ):
                runs[-1] = PersistedBatch(tail.first_offset, last, state, delivery_count)
                return
        runs.append(batch)
        return
    # The slice [low, high) holds every run that overlaps [first, last] or ends
    # at first - 1 / starts at last + 1 (touching runs may coalesce with it).
    low = bisect_left(runs, first - 1, key=_last_offset_of)
    high = bisect_right(runs, last + 1, key=_first_offset_of)
    if low == high:
        runs.insert(low, batch)
        return
    # Cut the region into segments (first, last, state, delivery count), in
    # offset order and without holes: the batch fills the gaps between runs.
    segments: list[tuple[int, int, int, int]] = []
    append = segments.append
    cursor = first  # The lowest offset of the batch not yet covered.
    for run in runs[low:high]:
        run_first = run.first_offset
        run_last = run.last_offset
        if cursor < run_first and cursor <= last:
            gap_last = run_first - 1 if run_first - 1 < last else last
            append((cursor, gap_last, state, delivery_count))
            cursor = gap_last + 1
        if run_first < first:
            # Only the first run of the region can start before the batch.
            append((run_first, run_last if run_last < first else first - 1, run.state, run.delivery_count))
        overlap_first = run_first if run_first > first else first
        overlap_last = run_last if run_last < last else last
        if overlap_first <= overlap_last:
            # The overlap keeps the larger (delivery count, state id).
            if run.delivery_count > delivery_count or (
                run.delivery_count == delivery_count and run.state >= state
            ):
                append((overlap_first, overlap_last, run.state, run.delivery_count))
            else:
                append((overlap_first, overlap_last, state, delivery_count))
            cursor = overlap_last + 1
        if run_last > last:
            # Only the last run of the region can end after the batch.
            append((run_first if run_first > last else last + 1, run_last, run.state, run.delivery_count))
    if cursor <= last:
        append((cursor, last, state, delivery_count))
    # Coalesce touching segments with equal (state, delivery count).
    pieces: list[PersistedBatch] = []
    piece_first, piece_last, piece_state, piece_count = segments[0]
    for segment_first, segment_last, segment_state, segment_count in segments[1:]:
        if (
            segment_state == piece_state
            and segment_count == piece_count
            and piece_last + 1 == segment_first
        ):
            piece_last = segment_last
        else:
            pieces.append(PersistedBatch(piece_first, piece_last, piece_state, piece_count))
            piece_first, piece_last = segment_first, segment_last
            piece_state, piece_count = segment_state, segment_count
    pieces.append(PersistedBatch(piece_first, piece_last, piece_state, piece_count))
    runs[low:high] = pieces


def _prune(runs: list[PersistedBatch], start_offset: int) -> None:
    """Drop offsets below ``start_offset`` in place, trimming a straddling run."""
    if start_offset <= 0 or not runs:
        return
    keep_from = bisect_left(runs, start_offset, key=_last_offset_of)
    if keep_from:
        del runs[:keep_from]
    if runs and runs[0].first_offset < start_offset:
        head = runs[0]
        runs[0] = PersistedBatch(start_offset, head.last_offset, head.state, head.delivery_count)


def _normalized(batches: Iterable[PersistedBatch]) -> list[PersistedBatch]:
    """Sorted, non-overlapping, coalesced runs holding the per-offset max of ``batches``."""
    runs: list[PersistedBatch] = []
    for batch in sorted(batches, key=_first_offset_of):
        _apply_batch(runs, batch)
    return runs


def merge_batches(
    existing: Iterable[PersistedBatch], new: Iterable[PersistedBatch], start_offset: int
) -> list[PersistedBatch]:
    """Combine two sets of state batches the way the share coordinator does.

    The result is sorted, non-overlapping and coalesced (touching runs differ in
    state or delivery count); per offset it holds the max (delivery count,
    state id) over both inputs; offsets below ``start_offset`` are dropped
    (-1 = no start offset, nothing dropped). Inputs may overlap and be in any
    order. The operation is idempotent and commutative.
    """
    existing_list = list(existing)
    new_list = list(new)
    for batch in existing_list + new_list:
        assert _batch_problem(batch) is None, _batch_problem(batch)
    runs = _normalized(existing_list)
    for batch in sorted(new_list, key=_first_offset_of):
        _apply_batch(runs, batch)
    _prune(runs, start_offset)
    return runs


def _batch_problem(batch: PersistedBatch) -> str | None:
    """Why ``batch`` is malformed, or None."""
    if not isinstance(batch, PersistedBatch):
        return f"expected a PersistedBatch, got {type(batch).__name__}"
    if not 0 <= batch.first_offset <= batch.last_offset <= OFFSET_MAX:
        return (
            f"batch offsets {batch.first_offset}..{batch.last_offset} must satisfy "
            f"0 <= first_offset <= last_offset <= {OFFSET_MAX}"
        )
    if batch.state not in PERSISTED_STATES:
        return (
            f"batch {batch.first_offset}..{batch.last_offset} has state {batch.state}; "
            "only AVAILABLE (0), ACKNOWLEDGED (2) and ARCHIVED (4) are persisted"
        )
    if not 0 <= batch.delivery_count <= DELIVERY_COUNT_MAX:
        return (
            f"batch {batch.first_offset}..{batch.last_offset} has delivery count "
            f"{batch.delivery_count}; it must be between 0 and {DELIVERY_COUNT_MAX}"
        )
    return None


# ---------------------------------------------------------------------------
# Binary encoding
# ---------------------------------------------------------------------------

#: Bumped when a layout changes; decoders refuse versions they do not know.
RECORD_FORMAT_VERSION = 1
_SNAPSHOT_TYPE = 0
_UPDATE_TYPE = 1
_DELETE_TYPE = 2

# Record: header | key | body.
#   header   = format version u8, record type u8, key length u16
#   key      = record_key_bytes(key)
#   snapshot = snapshot epoch i32, state epoch i32, leader epoch i32,
#              start offset i64, delivery complete count i32, batch count u32,
#              batches
#   update   = snapshot epoch i32, leader epoch i32, start offset i64,
#              delivery complete count i32, batch count u32, batches
#   delete   = (empty)
#   batch    = first offset i64, last offset i64, state u8, delivery count u16
# Key: format version u8, group id length u8, group id (UTF-8), topic length
#   u8, topic (UTF-8), partition i32. The key bytes do not depend on the
#   record type, so a tombstone shares the key of the records it deletes.
_HEADER = struct.Struct("<BBH")
_KEY_LENGTH = struct.Struct("<B")
_PARTITION = struct.Struct("<i")
_SNAPSHOT_BODY = struct.Struct("<iiiqiI")
_UPDATE_BODY = struct.Struct("<iiqiI")
_BATCH = struct.Struct("<qqBH")

#: Decoded keys by their bytes: recovery sees the same few keys again and
#: again, so caching skips UTF-8 decoding and object creation. Bounded: the
#: cache is emptied when it reaches this size.
_DECODED_KEYS_MAX = 65_536
_decoded_keys: dict[bytes, ShareKey] = {}


def record_key_bytes(key: ShareKey) -> bytes:
    """The log record key for ``key``: equal for every record type of that key."""
    group_bytes = key.group_id.encode("utf-8")
    topic_bytes = key.topic.encode("utf-8")
    assert 0 < len(group_bytes) <= NAME_BYTES_MAX, "group id length is validated before encoding"
    assert 0 < len(topic_bytes) <= NAME_BYTES_MAX, "topic length is validated before encoding"
    return b"".join(
        (
            bytes((RECORD_FORMAT_VERSION, len(group_bytes))),
            group_bytes,
            bytes((len(topic_bytes),)),
            topic_bytes,
            _PARTITION.pack(key.partition),
        )
    )


def _encode_batches(batches: tuple[PersistedBatch, ...]) -> bytes:
    pack = _BATCH.pack
    return b"".join(
        [pack(b.first_offset, b.last_offset, b.state, b.delivery_count) for b in batches]
    )


def encode_record(record: ShareRecord) -> bytes:
    """Encode a record for the ``__share_group_state`` log."""
    key_bytes = record_key_bytes(record.key)
    if isinstance(record, ShareSnapshot):
        header = _HEADER.pack(RECORD_FORMAT_VERSION, _SNAPSHOT_TYPE, len(key_bytes))
        body = _SNAPSHOT_BODY.pack(
            record.snapshot_epoch,
            record.state_epoch,
            record.leader_epoch,
            record.start_offset,
            record.delivery_complete_count,
            len(record.batches),
        )
        return header + key_bytes + body + _encode_batches(record.batches)
    if isinstance(record, ShareUpdate):
        header = _HEADER.pack(RECORD_FORMAT_VERSION, _UPDATE_TYPE, len(key_bytes))
        body = _UPDATE_BODY.pack(
            record.snapshot_epoch,
            record.leader_epoch,
            record.start_offset,
            record.delivery_complete_count,
            len(record.batches),
        )
        return header + key_bytes + body + _encode_batches(record.batches)
    assert isinstance(record, ShareDelete), f"not a share state record: {record!r}"
    return _HEADER.pack(RECORD_FORMAT_VERSION, _DELETE_TYPE, len(key_bytes)) + key_bytes


def _corrupt(message: str) -> OperatingError:
    return OperatingError(ErrorCode.CORRUPT_MESSAGE, f"share state record is corrupt: {message}")


def _decode_key(key_bytes: bytes) -> ShareKey:
    key = _decoded_keys.get(key_bytes)
    if key is not None:
        return key
    if len(key_bytes) < 2 + 1 + 4 or key_bytes[0] != RECORD_FORMAT_VERSION:
        raise _corrupt(f"malformed key {key_bytes!r}")
    group_length = key_bytes[1]
    topic_length_at = 2 + group_length
    if topic_length_at >= len(key_bytes):
        raise _corrupt(f"malformed key {key_bytes!r}")
    topic_length = key_bytes[topic_length_at]
    partition_at = topic_length_at + 1 + topic_length
    if partition_at + _PARTITION.size != len(key_bytes) or not group_length or not topic_length:
        raise _corrupt(f"malformed key {key_bytes!r}")
    try:
        group_id = key_bytes[2:topic_length_at].decode("utf-8")
        topic = key_bytes[topic_length_at + 1 : partition_at].decode("utf-8")
    except UnicodeDecodeError as error:
        raise _corrupt(f"key is not UTF-8: {error}") from None
    (partition,) = _PARTITION.unpack_from(key_bytes, partition_at)
    if partition < 0:
        raise _corrupt(f"negative partition {partition} in key")
    key = ShareKey(group_id, topic, partition)
    if len(_decoded_keys) >= _DECODED_KEYS_MAX:
        _decoded_keys.clear()
    _decoded_keys[key_bytes] = key
    return key


def _decode_batches(data: bytes, offset: int, count: int) -> tuple[PersistedBatch, ...]:
    if len(data) - offset != count * _BATCH.size:
        raise _corrupt(
            f"{len(data) - offset} bytes of batches cannot hold the declared {count} batches"
        )
    batches = []
    previous_last = -2
    for first, last, state, delivery_count in _BATCH.iter_unpack(memoryview(data)[offset:]):
        # Written batches are sorted, non-overlapping and coalesced; anything
        # else did not come from encode_record.
        if first <= previous_last or last < first or state not in PERSISTED_STATES:
            raise _corrupt(f"invalid batch {first}..{last} state {state}")
        if delivery_count > DELIVERY_COUNT_MAX:
            raise _corrupt(f"delivery count {delivery_count} out of range")
        previous_last = last
        batches.append(PersistedBatch(first, last, state, delivery_count))
    return tuple(batches)


def decode_record(data: bytes) -> ShareRecord:
    """Decode bytes written by ``encode_record``; CORRUPT_MESSAGE if they are not a record."""
    if len(data) < _HEADER.size:
        raise _corrupt(f"{len(data)} bytes is shorter than a record header")
    version, record_type, key_length = _HEADER.unpack_from(data)
    if version != RECORD_FORMAT_VERSION:
        raise OperatingError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"share state record format version {version} is not supported "
            f"(this node reads version {RECORD_FORMAT_VERSION}); upgrade the node",
        )
    body_at = _HEADER.size + key_length
    if body_at > len(data):
        raise _corrupt(f"key length {key_length} runs past the end of the record")
    key = _decode_key(bytes(data[_HEADER.size : body_at]))
    if record_type == _UPDATE_TYPE:
        if len(data) < body_at + _UPDATE_BODY.size:
            raise _corrupt("update record is truncated")
        snapshot_epoch, leader_epoch, start_offset, complete_count, count = (
            _UPDATE_BODY.unpack_from(data, body_at)
        )
        batches = _decode_batches(data, body_at + _UPDATE_BODY.size, count)
        return ShareUpdate(key, snapshot_epoch, leader_epoch, start_offset, complete_count, batches)
    if record_type == _SNAPSHOT_TYPE:
        if len(data) < body_at + _SNAPSHOT_BODY.size:
            raise _corrupt("snapshot record is truncated")
        snapshot_epoch, state_epoch, leader_epoch, start_offset, complete_count, count = (
            _SNAPSHOT_BODY.unpack_from(data, body_at)
        )
        batches = _decode_batches(data, body_at + _SNAPSHOT_BODY.size, count)
        return ShareSnapshot(
            key, snapshot_epoch, state_epoch, leader_epoch, start_offset, complete_count, batches
        )
    if record_type == _DELETE_TYPE:
        if len(data) != body_at:
            raise _corrupt("tombstone carries trailing bytes")
        return ShareDelete(key)
    raise _corrupt(f"unknown record type {record_type}")


# ---------------------------------------------------------------------------
# The shard
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _KeyState:
    """Mutable state of one key; changed only by ``ShareCoordinatorShard.replay``."""

    snapshot_epoch: int
    state_epoch: int
    leader_epoch: int
    start_offset: int
    delivery_complete_count: int
    runs: list[PersistedBatch]
    snapshot_log_offset: int
    updates_since_snapshot: int = 0


@dataclass(slots=True)
class _Counters:
    snapshot_records_replayed_total: int = 0
    update_records_replayed_total: int = 0
    tombstone_records_replayed_total: int = 0
    orphan_update_records_replayed_total: int = 0
    last_replayed_log_offset: int = -1


def _invalid(message: str) -> OperatingError:
    return OperatingError(ErrorCode.INVALID_REQUEST, message)


def _validate_key(key: ShareKey) -> None:
    if not isinstance(key, ShareKey):
        raise _invalid(f"expected a ShareKey, got {type(key).__name__}")
    if not key.group_id:
        raise _invalid("group id must not be empty")
    if len(key.group_id.encode("utf-8")) > NAME_BYTES_MAX:
        raise _invalid(f"group id is longer than {NAME_BYTES_MAX} bytes: {key.group_id[:40]!r}...")
    if not key.topic:
        raise _invalid("topic must not be empty")
    if len(key.topic.encode("utf-8")) > NAME_BYTES_MAX:
        raise _invalid(f"topic is longer than {NAME_BYTES_MAX} bytes: {key.topic[:40]!r}...")
    if not 0 <= key.partition <= PARTITION_MAX:
        raise _invalid(f"partition must be between 0 and {PARTITION_MAX}, got {key.partition}")


def _validate_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _invalid(f"{name} must be between {low} and {high}, got {value}")


def _fenced_leader_epoch(key: ShareKey, leader_epoch: int, recorded: int) -> OperatingError:
    return OperatingError(
        ErrorCode.FENCED_LEADER_EPOCH,
        f"leader epoch {leader_epoch} for {key.group_id}/{key.topic}-{key.partition} is older "
        f"than the recorded {recorded}; a newer leader owns this share partition",
    )


class ShareCoordinatorShard:
    """The share state of one ``__share_group_state`` partition. See the module docstring."""

    def __init__(self, settings: ShareStateSettings | None = None) -> None:
        self._settings = settings if settings is not None else ShareStateSettings()
        self._states: dict[ShareKey, _KeyState] = {}
        self._counters = _Counters()

    @property
    def settings(self) -> ShareStateSettings:
        return self._settings

    # --- Replay: the only way state changes -------------------------------

    def replay(self, record: ShareRecord, log_offset: int) -> None:
        """Apply a record read from, or just appended to, the state log at ``log_offset``."""
        counters = self._counters
        assert log_offset > counters.last_replayed_log_offset, (
            f"records must be replayed in log order: {log_offset} after "
            f"{counters.last_replayed_log_offset}"
        )
        counters.last_replayed_log_offset = log_offset
        if type(record) is ShareUpdate:
            counters.update_records_replayed_total += 1
            state = self._states.get(record.key)
            if state is None:
                counters.orphan_update_records_replayed_total += 1
                runs = list(record.batches)
                _prune(runs, record.start_offset)
                self._states[record.key] = _KeyState(
                    snapshot_epoch=record.snapshot_epoch,
                    state_epoch=DEFAULT_STATE_EPOCH,
                    leader_epoch=record.leader_epoch,
                    start_offset=record.start_offset,
                    delivery_complete_count=record.delivery_complete_count,
                    runs=runs,
                    snapshot_log_offset=log_offset,
                )
                return
            if record.leader_epoch > state.leader_epoch:
                state.leader_epoch = record.leader_epoch
            if record.start_offset > state.start_offset:
                state.start_offset = record.start_offset
            if record.delivery_complete_count != UNKNOWN_DELIVERY_COMPLETE_COUNT:
                state.delivery_complete_count = record.delivery_complete_count
            runs = state.runs
            for batch in record.batches:
                _apply_batch(runs, batch)
            _prune(runs, state.start_offset)
            state.updates_since_snapshot += 1
        elif type(record) is ShareSnapshot:
            counters.snapshot_records_replayed_total += 1
            self._states[record.key] = _KeyState(
                snapshot_epoch=record.snapshot_epoch,
                state_epoch=record.state_epoch,
                leader_epoch=record.leader_epoch,
                start_offset=record.start_offset,
                delivery_complete_count=record.delivery_complete_count,
                runs=list(record.batches),
                snapshot_log_offset=log_offset,
            )
        else:
            assert type(record) is ShareDelete, f"not a share state record: {record!r}"
            counters.tombstone_records_replayed_total += 1
            self._states.pop(record.key, None)

    # --- Operations: compute records, never mutate -----------------------

    def read(self, key: ShareKey, leader_epoch: int) -> tuple[ReadResult, list[ShareRecord]]:
        """Load a share partition's state for its leader (ReadShareGroupState).

        A leader epoch newer than recorded is persisted by the returned record,
        which fences older leaders; ``NO_LEADER_EPOCH`` (-1) reads without
        claiming leadership and returns no record.
        """
        _validate_key(key)
        _validate_range("leader epoch", leader_epoch, NO_LEADER_EPOCH, EPOCH_MAX)
        state = self._states.get(key)
        if state is None:
            result = ReadResult(
                state_epoch=DEFAULT_STATE_EPOCH,
                start_offset=UNINITIALIZED_START_OFFSET,
                delivery_complete_count=UNKNOWN_DELIVERY_COMPLETE_COUNT,
                batches=(),
                leader_epoch=leader_epoch,
            )
            if leader_epoch == NO_LEADER_EPOCH:
                return result, []
            self._check_room_for_new_key(key)
            # Persist the leader epoch even for a key without state, so that
            # an older leader cannot create the key after this leader loaded
            # it as uninitialized.
            return result, [
                ShareSnapshot(
                    key=key,
                    snapshot_epoch=0,
                    state_epoch=DEFAULT_STATE_EPOCH,
                    leader_epoch=leader_epoch,
                    start_offset=UNINITIALIZED_START_OFFSET,
                    delivery_complete_count=UNKNOWN_DELIVERY_COMPLETE_COUNT,
                    batches=(),
                )
            ]
        if leader_epoch != NO_LEADER_EPOCH and leader_epoch < state.leader_epoch:
            raise _fenced_leader_epoch(key, leader_epoch, state.leader_epoch)
        result = ReadResult(
            state_epoch=state.state_epoch,
            start_offset=state.start_offset,
            delivery_complete_count=state.delivery_complete_count,
            batches=tuple(state.runs),
            leader_epoch=max(leader_epoch, state.leader_epoch),
        )
        if leader_epoch <= state.leader_epoch:
            return result, []
        return result, [
            ShareUpdate(
                key=key,
                snapshot_epoch=state.snapshot_epoch,
                leader_epoch=leader_epoch,
                start_offset=UNINITIALIZED_START_OFFSET,
                delivery_complete_count=UNKNOWN_DELIVERY_COMPLETE_COUNT,
                batches=(),
            )
        ]

    def write(
        self,
        key: ShareKey,
        state_epoch: int,
        leader_epoch: int,
        start_offset: int,
        delivery_complete_count: int,
        batches: Sequence[PersistedBatch],
    ) -> list[ShareRecord]:
        """Persist a share-partition leader's changes (WriteShareGroupState)."""
        _validate_key(key)
        _validate_range("state epoch", state_epoch, 0, EPOCH_MAX)
        _validate_range("leader epoch", leader_epoch, 0, EPOCH_MAX)
        _validate_range("start offset", start_offset, UNINITIALIZED_START_OFFSET, OFFSET_MAX)
        _validate_range(
            "delivery complete count",
            delivery_complete_count,
            UNKNOWN_DELIVERY_COMPLETE_COUNT,
            DELIVERY_COMPLETE_COUNT_MAX,
        )
        if len(batches) > self._settings.state_batches_per_write_max:
            raise OperatingError(
                ErrorCode.RECORD_LIST_TOO_LARGE,
                f"a write carries {len(batches)} state batches; at most "
                f"{self._settings.state_batches_per_write_max} are accepted, split the write",
            )
        for batch in batches:
            problem = _batch_problem(batch)
            if problem is not None:
                raise _invalid(problem)

        state = self._states.get(key)
        if state is None:
            self._check_room_for_new_key(key)
            runs = _normalized(batches)
            _prune(runs, start_offset)
            self._check_batch_count(key, len(runs))
            # Kafka: the first write for a key is a snapshot with snapshot epoch 0.
            return [
                ShareSnapshot(
                    key=key,
                    snapshot_epoch=0,
                    state_epoch=state_epoch,
                    leader_epoch=leader_epoch,
                    start_offset=start_offset,
                    delivery_complete_count=delivery_complete_count,
                    batches=tuple(runs),
                )
            ]

        if leader_epoch < state.leader_epoch:
            raise _fenced_leader_epoch(key, leader_epoch, state.leader_epoch)
        if state_epoch < state.state_epoch:
            raise OperatingError(
                ErrorCode.FENCED_STATE_EPOCH,
                f"state epoch {state_epoch} for {key.group_id}/{key.topic}-{key.partition} is "
                f"older than the recorded {state.state_epoch}; the share partition was reset, "
                "re-read its state",
            )
        if state_epoch > state.state_epoch:
            raise _invalid(
                f"state epoch {state_epoch} for {key.group_id}/{key.topic}-{key.partition} is "
                f"newer than the recorded {state.state_epoch}; only initialize starts a new "
                "state epoch, re-read the state"
            )

        # Within one state epoch the start offset only moves forwards.
        effective_start_offset = max(state.start_offset, start_offset)
        merged = list(state.runs)
        for batch in sorted(batches, key=_first_offset_of):
            _apply_batch(merged, batch)
        _prune(merged, effective_start_offset)
        self._check_batch_count(key, len(merged))

        if state.updates_since_snapshot >= self._settings.snapshot_update_records_per_snapshot:
            return [
                ShareSnapshot(
                    key=key,
                    snapshot_epoch=state.snapshot_epoch + 1,
                    state_epoch=state.state_epoch,
                    leader_epoch=leader_epoch,
                    start_offset=effective_start_offset,
                    delivery_complete_count=(
                        state.delivery_complete_count
                        if delivery_complete_count == UNKNOWN_DELIVERY_COMPLETE_COUNT
                        else delivery_complete_count
                    ),
                    batches=tuple(merged),
                )
            ]
        update_runs = _normalized(batches)
        _prune(update_runs, effective_start_offset)
        return [
            ShareUpdate(
                key=key,
                snapshot_epoch=state.snapshot_epoch,
                leader_epoch=leader_epoch,
                start_offset=(
                    UNINITIALIZED_START_OFFSET
                    if effective_start_offset == state.start_offset
                    else effective_start_offset
                ),
                delivery_complete_count=delivery_complete_count,
                batches=tuple(update_runs),
            )
        ]

    def initialize(self, key: ShareKey, state_epoch: int, start_offset: int) -> list[ShareRecord]:
        """Start a new state epoch with no batches (InitializeShareGroupState).

        The group coordinator calls this when it first assigns a share
        partition and when an admin resets or deletes its offsets. The state
        epoch must be newer than recorded so that leaders of the old epoch are
        fenced; a key that was never initialized nor written (start offset -1,
        no batches) also accepts the recorded epoch itself, because a leader's
        read may have created it with the default epoch.
        """
        _validate_key(key)
        _validate_range("state epoch", state_epoch, 0, EPOCH_MAX)
        _validate_range("start offset", start_offset, UNINITIALIZED_START_OFFSET, OFFSET_MAX)
        state = self._states.get(key)
        if state is None:
            self._check_room_for_new_key(key)
            return [
                ShareSnapshot(
                    key=key,
                    snapshot_epoch=0,
                    state_epoch=state_epoch,
                    leader_epoch=NO_LEADER_EPOCH,
                    start_offset=start_offset,
                    delivery_complete_count=UNKNOWN_DELIVERY_COMPLETE_COUNT,
                    batches=(),
                )
            ]
        never_initialized = state.start_offset == UNINITIALIZED_START_OFFSET and not state.runs
        if state_epoch < state.state_epoch or (
            state_epoch == state.state_epoch and not never_initialized
        ):
            raise OperatingError(
                ErrorCode.FENCED_STATE_EPOCH,
                f"initialize of {key.group_id}/{key.topic}-{key.partition} with state epoch "
                f"{state_epoch} must use an epoch newer than the recorded {state.state_epoch}",
            )
        # The recorded leader epoch is kept: the current leader stays current,
        # and it is fenced by the new state epoch until it re-reads the state.
        return [
            ShareSnapshot(
                key=key,
                snapshot_epoch=state.snapshot_epoch + 1,
                state_epoch=state_epoch,
                leader_epoch=state.leader_epoch,
                start_offset=start_offset,
                delivery_complete_count=UNKNOWN_DELIVERY_COMPLETE_COUNT,
                batches=(),
            )
        ]

    def delete(self, key: ShareKey) -> list[ShareRecord]:
        """Remove a share partition's state (DeleteShareGroupState); nothing to do if unknown."""
        _validate_key(key)
        if key not in self._states:
            return []
        return [ShareDelete(key)]

    def snapshot(self, key: ShareKey) -> list[ShareRecord]:
        """A fresh snapshot of ``key``'s current state (none for an unknown key).

        The shell uses it for cold share partitions: re-snapshotting a key whose
        latest snapshot is old lets ``prunable_before()`` move past it.
        """
        _validate_key(key)
        state = self._states.get(key)
        if state is None:
            return []
        return [
            ShareSnapshot(
                key=key,
                snapshot_epoch=state.snapshot_epoch + 1,
                state_epoch=state.state_epoch,
                leader_epoch=state.leader_epoch,
                start_offset=state.start_offset,
                delivery_complete_count=state.delivery_complete_count,
                batches=tuple(state.runs),
            )
        ]

    # --- Queries ----------------------------------------------------------

    def read_summary(self, key: ShareKey) -> ShareSummary:
        """Start offset, epochs and counts of ``key`` (ReadShareGroupStateSummary)."""
        _validate_key(key)
        state = self._states.get(key)
        if state is None:
            return ShareSummary(
                start_offset=UNINITIALIZED_START_OFFSET,
                state_epoch=DEFAULT_STATE_EPOCH,
                leader_epoch=NO_LEADER_EPOCH,
                delivery_complete_count=UNKNOWN_DELIVERY_COMPLETE_COUNT,
                snapshot_epoch=-1,
                snapshot_log_offset=-1,
                updates_since_snapshot=0,
                batch_count=0,
            )
        return ShareSummary(
            start_offset=state.start_offset,
            state_epoch=state.state_epoch,
            leader_epoch=state.leader_epoch,
            delivery_complete_count=state.delivery_complete_count,
            snapshot_epoch=state.snapshot_epoch,
            snapshot_log_offset=state.snapshot_log_offset,
            updates_since_snapshot=state.updates_since_snapshot,
            batch_count=len(state.runs),
        )

    def keys(self) -> list[ShareKey]:
        """Every key with state, in no particular order."""
        return list(self._states)

    def prunable_before(self) -> int:
        """The lowest log offset still needed: records below it may be deleted.

        O(number of keys); meant for a periodic pruning timer. With no live key
        every replayed record is prunable.
        """
        if not self._states:
            return self._counters.last_replayed_log_offset + 1
        return min(state.snapshot_log_offset for state in self._states.values())

    def has_redundant_records(self) -> bool:
        """Whether the log from ``prunable_before()`` on holds records recovery does not need.

        Recovery needs each live key's latest snapshot and the updates after
        it. The log's offsets are dense (this shard is the partition's only
        writer), so anything beyond that count is redundant. Without redundant
        records a fresh snapshot lets no pruning advance: it only adds a record,
        and doing it for idle keys on every maintenance tick would write forever
        (Kafka's cold-partition snapshot does not perpetually snapshot either).
        """
        needed = sum(1 + state.updates_since_snapshot for state in self._states.values())
        return self._counters.last_replayed_log_offset + 1 - self.prunable_before() > needed

    def keys_with_snapshot_before(self, log_offset: int, limit: int) -> list[ShareKey]:
        """Up to ``limit`` keys whose latest snapshot lies below ``log_offset``, oldest first.

        The shell re-snapshots them (``snapshot``) to let pruning advance.
        """
        _validate_range("limit", limit, 0, self._settings.keys_max)
        old = [
            (state.snapshot_log_offset, key)
            for key, state in self._states.items()
            if state.snapshot_log_offset < log_offset
        ]
        old.sort(key=lambda item: item[0])
        return [key for _, key in old[:limit]]

    def metrics(self) -> ShareShardMetrics:
        counters = self._counters
        return ShareShardMetrics(
            keys=len(self._states),
            snapshot_records_replayed_total=counters.snapshot_records_replayed_total,
            update_records_replayed_total=counters.update_records_replayed_total,
            tombstone_records_replayed_total=counters.tombstone_records_replayed_total,
            orphan_update_records_replayed_total=counters.orphan_update_records_replayed_total,
            last_replayed_log_offset=counters.last_replayed_log_offset,
        )

    # --- Limits -----------------------------------------------------------

    def _check_room_for_new_key(self, key: ShareKey) -> None:
        if len(self._states) >= self._settings.keys_max:
            raise OperatingError(
                ErrorCode.POLICY_VIOLATION,
                f"cannot add {key.group_id}/{key.topic}-{key.partition}: this share state "
                f"partition already holds keys_max={self._settings.keys_max} share partitions; "
                "delete unused share groups or raise the limit",
            )

    def _check_batch_count(self, key: ShareKey, batch_count: int) -> None:
        if batch_count > self._settings.state_batches_per_key_max:
            raise OperatingError(
                ErrorCode.RECORD_LIST_TOO_LARGE,
                f"{key.group_id}/{key.topic}-{key.partition} would hold {batch_count} state "
                f"batches; at most state_batches_per_key_max="
                f"{self._settings.state_batches_per_key_max} are kept. Acknowledge records or "
                "advance the start offset before acquiring more",
            )


__all__ = [
    "ACKNOWLEDGED",
    "ARCHIVED",
    "AVAILABLE",
    "DEFAULT_STATE_EPOCH",
    "NO_LEADER_EPOCH",
    "PERSISTED_STATES",
    "RECORD_FORMAT_VERSION",
    "UNINITIALIZED_START_OFFSET",
    "UNKNOWN_DELIVERY_COMPLETE_COUNT",
    "PersistedBatch",
    "ReadResult",
    "ShareCoordinatorShard",
    "ShareDelete",
    "ShareKey",
    "ShareRecord",
    "ShareShardMetrics",
    "ShareSnapshot",
    "ShareStateSettings",
    "ShareSummary",
    "ShareUpdate",
    "decode_record",
    "encode_record",
    "merge_batches",
    "record_key_bytes",
]
