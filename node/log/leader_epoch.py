"""The leader epoch cache: which leader epoch started at which offset.

Kafka's KIP-101 / KIP-279 mechanism. Each entry (epoch, start_offset) says
that the leader of ``epoch`` appended its first batch at ``start_offset``. A
follower that becomes a follower again asks the new leader for the end offset
of its own latest epoch and truncates anything it holds beyond that, so two
replicas never keep different records at the same offset.

Rules (from Kafka's LeaderEpochFileCache):

* Entries are strictly increasing in both epoch and start offset.
* ``assign(epoch, start_offset)`` is a no-op for the latest epoch at a later
  offset; otherwise it removes every entry that conflicts (epoch >= epoch or
  start offset >= start_offset) and appends the new one.
* ``end_offset_for(epoch)``: for the latest epoch, the log end offset; for an
  older epoch, the largest epoch <= the requested one and the start offset of
  the first epoch after it; for an epoch below the first entry, the requested
  epoch and the first start offset; for an epoch above the latest, or with an
  empty cache, (-1, -1).
* Truncating the log's end removes entries that start at or after the new end;
  advancing the log start offset drops entries wholly below it and moves the
  last such entry's start up to the new log start offset.

The file ``leader-epoch-checkpoint`` (Kafka's text format: version, count,
then ``epoch start_offset`` lines) is rewritten atomically after each change.
"""

from __future__ import annotations

import bisect
import logging
from pathlib import Path
from typing import NamedTuple

from node.log.checkpoint import write_atomically

logger = logging.getLogger(__name__)

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1
FILE_NAME = "leader-epoch-checkpoint"
#: Every leader change adds an entry, and retention trims old ones; a partition
#: with more than this many live epochs indicates a controller bug.
MAX_EPOCH_ENTRIES = 100_000


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


class LeaderEpochCache:
    def __init__(self, path: Path, entries: list[EpochEntry]) -> None:
        self.path = path
        self._entries = entries
        self._check()

    @classmethod
    def load(cls, directory: Path) -> LeaderEpochCache | None:
        """The cache from its checkpoint, or None when the file is missing or malformed."""
        path = directory / FILE_NAME
        try:
            lines = path.read_text("ascii").split("\n")
            if lines[0] != "0":
                raise ValueError(f"unknown version {lines[0]!r}")
            count = int(lines[1])
            entries = []
            for line in lines[2 : 2 + count]:
                epoch_text, offset_text = line.split(" ")
                entries.append(EpochEntry(int(epoch_text), int(offset_text)))
            if len(entries) != count:
                raise ValueError(f"declares {count} entries, holds {len(entries)}")
            cache = cls(path, entries)
            cache._check_order()
            return cache
        except FileNotFoundError:
            return None
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as error:
            logger.warning("ignoring malformed %s (%s); rebuilding it from the batch headers", path, error)
            return None

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that ``epoch`` starts at ``start_offset``; True when the cache changed."""
        assert epoch >= 0 and start_offset >= 0
        if self._entries:
            latest = self._entries[-1]
            if latest.epoch == epoch and start_offset >= latest.start_offset:
                return False
        while self._entries and (self._entries[-1].epoch >= epoch or self._entries[-1].start_offset >= start_offset):
            removed = self._entries.pop()
            logger.info("leader epoch %d at %d replaces conflicting entry %s", epoch, start_offset, removed)
        if len(self._entries) >= MAX_EPOCH_ENTRIES:
            raise AssertionError(f"{self.path}: more than {MAX_EPOCH_ENTRIES} leader epochs")
        self._entries.append(EpochEntry(epoch, start_offset))
        self.persist()
        return True

    def end_offset_for(self, requested_epoch: int, log_end_offset: int) -> tuple[int, int]:
        if requested_epoch == UNDEFINED_EPOCH or not self._entries:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if requested_epoch == self._entries[-1].epoch:
            return requested_epoch, log_end_offset
        epochs = [entry.epoch for entry in self._entries]
        higher = bisect.bisect_right(epochs, requested_epoch)
        if higher == len(self._entries):
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if higher == 0:
            return requested_epoch, self._entries[0].start_offset
        return self._entries[higher - 1].epoch, self._entries[higher].start_offset

    def truncate_from_end(self, end_offset: int) -> None:
        """Drop entries starting at or after ``end_offset`` (the log was cut there)."""
        kept = [entry for entry in self._entries if entry.start_offset < end_offset]
        if len(kept) != len(self._entries):
            self._entries = kept
            self.persist()

    def truncate_from_start(self, start_offset: int) -> None:
        """The log now starts at ``start_offset``: keep only the epoch that covers it and later ones."""
        floor = bisect.bisect_right([entry.start_offset for entry in self._entries], start_offset) - 1
        if floor < 0 or (floor == 0 and self._entries[0].start_offset == start_offset):
            return
        covering = self._entries[floor]
        self._entries = [EpochEntry(covering.epoch, start_offset)] + self._entries[floor + 1 :]
        self.persist()

    def clear(self) -> None:
        if self._entries:
            self._entries = []
            self.persist()

    def persist(self) -> None:
        lines = ["0", str(len(self._entries))] + [f"{entry.epoch} {entry.start_offset}" for entry in self._entries]
        write_atomically(self.path, "\n".join(lines) + "\n")

    def _check(self) -> None:
        assert len(self._entries) <= MAX_EPOCH_ENTRIES

    def _check_order(self) -> None:
        for previous, entry in zip(self._entries, self._entries[1:]):
            if not (previous.epoch < entry.epoch and previous.start_offset < entry.start_offset):
                raise ValueError(f"entries out of order: {previous} then {entry}")
        if any(entry.epoch < 0 or entry.start_offset < 0 for entry in self._entries):
            raise ValueError("negative epoch or offset")
