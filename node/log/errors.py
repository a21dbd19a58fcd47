"""Operating errors raised by the partition log.

Each is an ``OperatingError`` with Kafka's code; the log raises them before
changing anything (or after undoing a partial write), so a refused operation
leaves the stored data as it was. Codec errors (``CorruptBatchError``,
``BatchTooLargeError``) live in ``proto.batch`` because clients raise them too.
"""

from __future__ import annotations

from coordinator.errors import ErrorCode, OperatingError


class OffsetOutOfRangeError(OperatingError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.OFFSET_OUT_OF_RANGE, message)


class KafkaStorageError(OperatingError):
    """The disk refused a write or a sync (full disk, I/O error)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KAFKA_STORAGE_ERROR, message)


class OutOfOrderSequenceError(OperatingError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, message)


class DuplicateSequenceError(OperatingError):
    """A retried batch arrived together with new batches in one append."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.DUPLICATE_SEQUENCE_NUMBER, message)


class InvalidProducerEpochError(OperatingError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_PRODUCER_EPOCH, message)


class FencedLeaderEpochError(OperatingError):
    """An append carries a leader epoch older than one the log has already seen."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.FENCED_LEADER_EPOCH, message)


class UnexpectedAppendOffsetError(OperatingError):
    """A follower append whose offsets go backwards from the log end offset.

    The replica fetcher reacts by truncating or re-fetching from its log end
    offset, the same reaction as to OFFSET_OUT_OF_RANGE, hence the code.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.OFFSET_OUT_OF_RANGE, message)
