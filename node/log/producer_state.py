"""Idempotent-producer state of one partition: the last batches of each producer id.

Kafka's ProducerStateManager, without transactions. For every producer id the
partition remembers the producer epoch and the metadata of its last
``BATCHES_PER_PRODUCER`` (5, Kafka's max.in.flight.requests for idempotence)
batches: sequence range, offset range, record count and max timestamp.

Rules, checked by the leader before it stamps offsets (Kafka's
ProducerAppendInfo.checkSequence and findDuplicateBatch):

* A batch whose epoch and sequence range match one of the remembered batches
  is a duplicate (a retry after a lost response): the log answers with the
  original offsets and appends nothing.
* A producer epoch older than the remembered one is fenced
  (INVALID_PRODUCER_EPOCH).
* A newer epoch must restart its sequence at 0.
* In the same epoch, the base sequence must follow the last one
  (``(last + 1) mod 2**31``); anything else is OUT_OF_ORDER_SEQUENCE_NUMBER.
* An unknown producer id may start at any sequence: its state may have been
  expired, evicted or removed with old segments.

Followers and the rebuild on open apply batches without checks, so every
replica converges on the same state. Entries expire after
``producer_id_expiration_ms`` without appends, and at most ``max_producer_ids``
are kept (least recently appended evicted first).

Checking is separate from recording: ``check_leader_append`` reads the state
and raises or reports a duplicate; the caller writes the batches and only then
calls ``record``. A refused or failed append leaves the state unchanged.

The state survives restarts through snapshot files (``producer_snapshot.py``):
``entries`` exports it in eviction order and ``load`` puts it back, after which
the log replays only the batches appended since the snapshot.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple

from node.log.errors import DuplicateSequenceError, InvalidProducerEpochError, OutOfOrderSequenceError
from proto.batch import NO_PRODUCER_ID, NO_SEQUENCE, BatchHeader

BATCHES_PER_PRODUCER = 5
_SEQUENCE_MODULUS = 2**31


class BatchMetadata(NamedTuple):
    first_sequence: int
    last_sequence: int
    first_offset: int
    last_offset: int
    record_count: int
    max_timestamp: int


@dataclass
class ProducerEntry:
    producer_id: int
    producer_epoch: int
    last_append_ms: int
    batches: deque[BatchMetadata] = field(default_factory=lambda: deque(maxlen=BATCHES_PER_PRODUCER))

    @property
    def last_sequence(self) -> int:
        return self.batches[-1].last_sequence if self.batches else NO_SEQUENCE

    @property
    def last_offset(self) -> int:
        return self.batches[-1].last_offset if self.batches else -1


class ProducerStateManager:
    def __init__(self, max_producer_ids: int, expiration_ms: int) -> None:
        assert max_producer_ids > 0 and expiration_ms > 0
        self.max_producer_ids = max_producer_ids
        self.expiration_ms = expiration_ms
        self._entries: OrderedDict[int, ProducerEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, producer_id: int) -> ProducerEntry | None:
        return self._entries.get(producer_id)

    def entries(self) -> list[ProducerEntry]:
        """Every entry, least recently appended first (the order in which max_producer_ids evicts)."""
        return list(self._entries.values())

    def load(self, entries: list[ProducerEntry]) -> None:
        """Replace the state with ``entries`` (least recently appended first), as a snapshot holds them."""
        self._entries.clear()
        for entry in entries:
            assert entry.producer_id not in self._entries, f"producer {entry.producer_id} loaded twice"
            self._entries[entry.producer_id] = entry
            # max_producer_ids may have shrunk since the snapshot was written.
            if len(self._entries) > self.max_producer_ids:
                self._entries.popitem(last=False)

    def check_leader_append(self, headers: list[BatchHeader]) -> BatchMetadata | None:
        """Validate producer batches in append order; return the original batch if this is a retry."""
        # (epoch, last sequence) per producer as if the earlier batches of this
        # same append had been recorded.
        pending: dict[int, tuple[int, int]] = {}
        duplicate: BatchMetadata | None = None
        for header in headers:
            producer_id = header.producer_id
            if producer_id == NO_PRODUCER_ID:
                continue
            entry = self._entries.get(producer_id)
            if producer_id not in pending and entry is not None:
                found = _find_duplicate(entry, header)
                if found is not None:
                    if len(headers) != 1:
                        raise DuplicateSequenceError(
                            f"producer {producer_id} resent the batch with sequences {header.base_sequence}.."
                            f"{header.last_sequence} together with other batches; resend it alone"
                        )
                    duplicate = found
                    continue
            if header.base_sequence == NO_SEQUENCE or header.base_sequence < 0:
                raise OutOfOrderSequenceError(
                    f"producer {producer_id} sent a batch without a base sequence; an idempotent producer "
                    f"numbers its batches from 0"
                )
            if producer_id in pending:
                known_epoch, last_sequence = pending[producer_id]
            elif entry is not None:
                known_epoch, last_sequence = entry.producer_epoch, entry.last_sequence
            else:
                known_epoch, last_sequence = None, NO_SEQUENCE
            if known_epoch is not None:
                if header.producer_epoch < known_epoch:
                    raise InvalidProducerEpochError(
                        f"producer {producer_id} epoch {header.producer_epoch} is older than the current epoch "
                        f"{known_epoch}; this producer instance has been fenced by a newer one"
                    )
                if header.producer_epoch > known_epoch:
                    if header.base_sequence != 0:
                        raise OutOfOrderSequenceError(
                            f"producer {producer_id} started epoch {header.producer_epoch} at sequence "
                            f"{header.base_sequence}; a new epoch starts at sequence 0"
                        )
                elif last_sequence != NO_SEQUENCE and header.base_sequence != (last_sequence + 1) % _SEQUENCE_MODULUS:
                    raise OutOfOrderSequenceError(
                        f"producer {producer_id} epoch {header.producer_epoch} sent sequence {header.base_sequence} "
                        f"but the partition expects {(last_sequence + 1) % _SEQUENCE_MODULUS}"
                    )
            pending[producer_id] = (header.producer_epoch, header.last_sequence)
        return duplicate

    def record(self, header: BatchHeader, now_ms: int) -> None:
        """Apply an appended batch (offsets already stamped) to the state."""
        producer_id = header.producer_id
        if producer_id == NO_PRODUCER_ID:
            return
        entry = self._entries.get(producer_id)
        if entry is None:
            entry = ProducerEntry(producer_id, header.producer_epoch, now_ms)
            self._entries[producer_id] = entry
            if len(self._entries) > self.max_producer_ids:
                self._entries.popitem(last=False)
        elif header.producer_epoch != entry.producer_epoch:
            entry.producer_epoch = header.producer_epoch
            entry.batches.clear()
        entry.batches.append(
            BatchMetadata(
                header.base_sequence,
                header.last_sequence,
                header.base_offset,
                header.last_offset,
                header.record_count,
                header.max_timestamp,
            )
        )
        entry.last_append_ms = max(entry.last_append_ms, now_ms)
        self._entries.move_to_end(producer_id)

    def expire(self, now_ms: int) -> int:
        """Forget producers idle for expiration_ms; return how many."""
        expired = [pid for pid, entry in self._entries.items() if now_ms - entry.last_append_ms >= self.expiration_ms]
        for producer_id in expired:
            del self._entries[producer_id]
        return len(expired)

    def has_batches_from(self, offset: int) -> bool:
        return any(entry.last_offset >= offset for entry in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()


def _find_duplicate(entry: ProducerEntry, header: BatchHeader) -> BatchMetadata | None:
    if header.producer_epoch != entry.producer_epoch:
        return None
    for batch in entry.batches:
        if batch.first_sequence == header.base_sequence and batch.last_sequence == header.last_sequence:
            return batch
    return None
