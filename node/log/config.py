"""LogConfig: the validated settings of one partition log.

Names and defaults are Kafka's topic configs with units last
(``segment.bytes`` -> ``segment_bytes``). Another module maps topic configs
onto this object; ``__post_init__`` rejects values the log cannot honour, so a
``PartitionLog`` never sees an unbounded or contradictory setting.

Flush default (a choice that differs from Kafka): Kafka leaves
``flush.messages`` and ``flush.ms`` at Long.MAX_VALUE and relies on replication
plus the page cache. shoal keeps ``flush_messages`` off (``None``) but flushes
at least every ``flush_ms = 1000`` ms. A second of unsynced data bounds both
the loss window should every replica lose power at once and the work recovery
does on open (it re-validates only what was written since the last flush), and
one fsync per partition per second costs little next to the appends.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.errors import ErrorCode, OperatingError

#: Positions in the offset index are int32 and a segment may overshoot
#: segment_bytes by one append, so both together must stay below 2**31.
MAX_SEGMENT_POSITION = 2**31 - 1

CLEANUP_POLICIES = frozenset({"delete", "compact", "compact,delete"})
TIMESTAMP_TYPES = frozenset({"CreateTime", "LogAppendTime"})


@dataclass(frozen=True, slots=True)
class LogConfig:
    #: segment.bytes: roll the active segment when an append would pass this size.
    segment_bytes: int = 1024 * 1024 * 1024
    #: segment.ms: roll the active segment when it is older than this.
    segment_ms: int = 7 * 24 * 3600 * 1000
    #: retention.ms: delete closed segments whose newest record is older; -1 keeps forever.
    retention_ms: int = 7 * 24 * 3600 * 1000
    #: retention.bytes: delete the oldest closed segments while the log is larger; -1 for no limit.
    retention_bytes: int = -1
    #: cleanup.policy: "delete", "compact" or "compact,delete".
    cleanup_policy: str = "delete"
    #: delete.retention.ms: how long compaction keeps a tombstone (a null value).
    delete_retention_ms: int = 24 * 3600 * 1000
    #: index.interval.bytes: bytes of batches between two offset-index entries.
    index_interval_bytes: int = 4096
    #: flush.messages: fsync after this many records; None to rely on flush_ms only.
    flush_messages: int | None = None
    #: flush.ms: fsync when the oldest unflushed append is this old; None to never flush by time.
    flush_ms: int | None = 1000
    #: max.message.bytes: the largest batch accepted from a producer.
    max_message_bytes: int = 1024 * 1024 + 12
    #: producer.id.expiration.ms: forget an idempotent producer idle for this long.
    producer_id_expiration_ms: int = 24 * 3600 * 1000
    #: The most producer ids tracked for idempotence; the least recently used is
    #: forgotten beyond it (it then restarts like a new producer). Kafka has no
    #: such cap; shoal bounds the memory a partition can spend.
    max_producer_ids: int = 10_000
    #: The most distinct keys one compaction pass holds in memory (Kafka's
    #: log.cleaner.dedupe.buffer.size, counted in keys); a pass that would
    #: exceed it cleans only the oldest segments whose keys fit.
    max_compaction_keys: int = 1_000_000
    #: message.timestamp.type: "CreateTime" keeps the producer's timestamps;
    #: "LogAppendTime" makes the leader stamp its append time into each batch.
    message_timestamp_type: str = "CreateTime"

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.segment_bytes:
            problems.append(f"segment_bytes must be positive, got {self.segment_bytes}")
        if not 0 < self.max_message_bytes:
            problems.append(f"max_message_bytes must be positive, got {self.max_message_bytes}")
        if self.segment_bytes + self.max_message_bytes > MAX_SEGMENT_POSITION:
            problems.append(
                f"segment_bytes + max_message_bytes must stay below {MAX_SEGMENT_POSITION} "
                f"(int32 index positions), got {self.segment_bytes} + {self.max_message_bytes}"
            )
        if self.segment_ms <= 0:
            problems.append(f"segment_ms must be positive, got {self.segment_ms}")
        if self.retention_ms < -1:
            problems.append(f"retention_ms must be -1 (forever) or >= 0, got {self.retention_ms}")
        if self.retention_bytes < -1:
            problems.append(f"retention_bytes must be -1 (no limit) or >= 0, got {self.retention_bytes}")
        if self.cleanup_policy not in CLEANUP_POLICIES:
            problems.append(f"cleanup_policy must be one of {sorted(CLEANUP_POLICIES)}, got {self.cleanup_policy!r}")
        if self.delete_retention_ms < 0:
            problems.append(f"delete_retention_ms must be >= 0, got {self.delete_retention_ms}")
        if self.index_interval_bytes < 0:
            problems.append(f"index_interval_bytes must be >= 0, got {self.index_interval_bytes}")
        if self.flush_messages is not None and self.flush_messages <= 0:
            problems.append(f"flush_messages must be positive or None, got {self.flush_messages}")
        if self.flush_ms is not None and self.flush_ms < 0:
            problems.append(f"flush_ms must be >= 0 or None, got {self.flush_ms}")
        if self.producer_id_expiration_ms <= 0:
            problems.append(f"producer_id_expiration_ms must be positive, got {self.producer_id_expiration_ms}")
        if self.max_producer_ids <= 0:
            problems.append(f"max_producer_ids must be positive, got {self.max_producer_ids}")
        if self.max_compaction_keys <= 0:
            problems.append(f"max_compaction_keys must be positive, got {self.max_compaction_keys}")
        if self.message_timestamp_type not in TIMESTAMP_TYPES:
            problems.append(
                f"message_timestamp_type must be one of {sorted(TIMESTAMP_TYPES)}, got {self.message_timestamp_type!r}"
            )
        if problems:
            raise OperatingError(ErrorCode.INVALID_CONFIG, "; ".join(problems))

    @property
    def deletes(self) -> bool:
        return "delete" in self.cleanup_policy

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == "LogAppendTime"

    @property
    def compacts(self) -> bool:
        return "compact" in self.cleanup_policy
