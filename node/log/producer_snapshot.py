"""Producer-state snapshots: the idempotent-producer state as of an offset, in a file.

Kafka's producer snapshot files (``ProducerStateManager.takeSnapshot``), without
transactions. A snapshot named ``{N:020d}.snapshot`` beside the segments holds
every ``ProducerEntry`` as of offset N: each batch below N is reflected in it,
none at or above N. N is always a batch boundary of the log: the base offset of
a new segment (a roll) or the log end offset (a clean close). Opening a log
loads the newest usable snapshot and replays only the batches from N on,
instead of every batch of the log.

File format, version 1, ASCII::

    shoal-producer-snapshot 1 <CRC32C of the body as 8 hex digits>\\n
    <body: one JSON object>

    {"offset": N,
     "producers": [{"producer_id": 42, "producer_epoch": 0, "last_append_ms": 1700000000000,
                    "batches": [[first_sequence, last_sequence, first_offset, last_offset,
                                 record_count, max_timestamp], ...]},
                   ...]}

``producers`` lists the entries least recently appended first, the order in
which ``max_producer_ids`` evicts them; ``batches`` lists a producer's
remembered batches oldest first (``BatchMetadata`` field order). The offset in
the body must match the file name. ``last_append_ms`` is the time the entry was
last appended to, so that producer-id expiry runs the same after a restart as
it would have without one.

Rules:

* A snapshot is a cache: the log alone can rebuild the state. A file that fails
  its CRC, has an unknown version or does not parse is logged at WARNING with
  its path and deleted, and the next older one is tried; with none left the
  state is rebuilt from every batch of the log. Log data is never touched.
* A snapshot is written like a checkpoint (``<name>.tmp``, fsync, rename,
  directory fsync), so a crash leaves the old set of files or the new one.
* A snapshot above the log end offset describes batches that the log no
  longer holds (a torn tail cut on open, a follower's truncation). It is
  deleted, and the deletion is synced before the log can grow past N again:
  otherwise a crash could bring back a file that describes other batches than
  the ones now below N.
* Snapshots below the oldest segment's base offset are deleted with the
  segments that retention or DeleteRecords removed, and at most
  ``SNAPSHOTS_KEPT`` are kept.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import crc32c

from node.log.checkpoint import sync_directory, write_atomically
from node.log.errors import KafkaStorageError
from node.log.producer_state import BATCHES_PER_PRODUCER, BatchMetadata, ProducerEntry

logger = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".snapshot"
FORMAT_VERSION = 1
_MAGIC = "shoal-producer-snapshot"
_SNAPSHOT_FILE = re.compile(r"^(\d{20})\.snapshot$")

#: The most snapshot files one partition keeps. Each roll adds one and a clean
#: close another; the newest serves a restart, the older ones serve a
#: follower's truncation below it (a truncation below every snapshot falls
#: back to a full rebuild). More files cost disk (up to max_producer_ids
#: entries each), not time.
SNAPSHOTS_KEPT = 3


class CorruptSnapshotError(ValueError):
    """A snapshot file that cannot be used; the log falls back to an older one or a full rebuild."""


def snapshot_file_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


def encode_snapshot(offset: int, entries: Iterable[ProducerEntry]) -> str:
    body = json.dumps(
        {
            "offset": offset,
            "producers": [
                {
                    "producer_id": entry.producer_id,
                    "producer_epoch": entry.producer_epoch,
                    "last_append_ms": entry.last_append_ms,
                    "batches": [list(batch) for batch in entry.batches],
                }
                for entry in entries
            ],
        },
        separators=(",", ":"),
    )
    return f"{_MAGIC} {FORMAT_VERSION} {crc32c.crc32c(body.encode('ascii')):08x}\n{body}"


def decode_snapshot(data: bytes, offset: int) -> list[ProducerEntry]:
    """The entries of a snapshot file named after ``offset``; raises CorruptSnapshotError."""
    header, newline, body = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 3 or fields[0] != _MAGIC.encode("ascii"):
        raise CorruptSnapshotError("the file does not start with a producer snapshot header")
    if fields[1] != str(FORMAT_VERSION).encode("ascii"):
        raise CorruptSnapshotError(f"unknown snapshot version {fields[1]!r}")
    try:
        expected_crc = int(fields[2], 16)
    except ValueError as error:
        raise CorruptSnapshotError(f"unreadable CRC {fields[2]!r}") from error
    if crc32c.crc32c(body) != expected_crc:
        raise CorruptSnapshotError("the body fails its CRC32C check")
    try:
        document = json.loads(body)
        body_offset = _integer(document["offset"])
        entries = [_decode_entry(producer) for producer in document["producers"]]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptSnapshotError(f"the body does not parse: {error!r}") from error
    if body_offset != offset:
        raise CorruptSnapshotError(f"the body is for offset {body_offset}, the file name for offset {offset}")
    if len({entry.producer_id for entry in entries}) != len(entries):
        raise CorruptSnapshotError("a producer id appears twice")
    return entries


def _decode_entry(producer: dict) -> ProducerEntry:
    batches: deque[BatchMetadata] = deque(maxlen=BATCHES_PER_PRODUCER)
    for fields in producer["batches"]:
        if len(fields) != len(BatchMetadata._fields):
            raise TypeError(f"a batch has {len(fields)} fields, expected {len(BatchMetadata._fields)}")
        batches.append(BatchMetadata(*map(_integer, fields)))
    return ProducerEntry(
        _integer(producer["producer_id"]),
        _integer(producer["producer_epoch"]),
        _integer(producer["last_append_ms"]),
        batches,
    )


def _integer(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


class ProducerSnapshots:
    """The snapshot files of one partition directory, tracked as a sorted list of offsets.

    The imperative shell around ``encode_snapshot`` / ``decode_snapshot``:
    every file operation of the snapshots goes through here.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        offsets = []
        for path in directory.iterdir():
            match = _SNAPSHOT_FILE.match(path.name)
            if match:
                offsets.append(int(match.group(1)))
        self._offsets = sorted(offsets)

    def path(self, offset: int) -> Path:
        return self.directory / snapshot_file_name(offset)

    def write(self, offset: int, entries: Iterable[ProducerEntry]) -> None:
        """Write (or replace) the snapshot at ``offset``, then drop the oldest beyond SNAPSHOTS_KEPT."""
        path = self.path(offset)
        try:
            write_atomically(path, encode_snapshot(offset, entries))
        except OSError as error:
            raise KafkaStorageError(f"cannot write producer snapshot {path}: {error}") from error
        if offset not in self._offsets:
            bisect.insort(self._offsets, offset)
        while len(self._offsets) > SNAPSHOTS_KEPT:
            self._delete(self._offsets[0])

    def read_latest(self) -> tuple[int, list[ProducerEntry]] | None:
        """The newest usable snapshot as (offset, entries); unusable newer ones are deleted on the way."""
        while self._offsets:
            offset = self._offsets[-1]
            path = self.path(offset)
            try:
                return offset, decode_snapshot(path.read_bytes(), offset)
            except (CorruptSnapshotError, OSError) as error:
                logger.warning(
                    "Ignoring producer snapshot %s: %s. Deleting it; the producer state is loaded from an older "
                    "snapshot or rebuilt from the log",
                    path,
                    error,
                )
                self._delete(offset)
        return None

    def delete_above(self, offset: int) -> None:
        """Delete the snapshots above ``offset`` (the new log end offset), durably."""
        above = [snapshot for snapshot in self._offsets if snapshot > offset]
        for snapshot in above:
            self._delete(snapshot)
        if above:
            try:
                sync_directory(self.directory)
            except OSError as error:
                raise KafkaStorageError(f"cannot sync {self.directory} after deleting snapshots: {error}") from error

    def delete_below(self, offset: int) -> None:
        """Delete the snapshots below ``offset`` (the oldest segment's base offset)."""
        while self._offsets and self._offsets[0] < offset:
            self._delete(self._offsets[0])

    def delete_all(self) -> None:
        self.delete_above(-1)

    def _delete(self, offset: int) -> None:
        path = self.path(offset)
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise KafkaStorageError(f"cannot delete producer snapshot {path}: {error}") from error
        self._offsets.remove(offset)
